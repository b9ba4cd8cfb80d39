"""experiments/protocol_results.py: one evaluation per run across workflow folders, duplicates
(an older spec without its defaults written out) recognised and compared by their numbers."""

import importlib.util
import json
import os
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "protocol_results", Path(__file__).resolve().parents[1] / "experiments" / "protocol_results.py")
protocol = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protocol)

NEW_TRAIN = {"batch_size": 32, "epochs": 6, "grad_accum": 1, "lr": 0.01, "max_grad_norm": 1.0, "mixed_precision": "no",
             "seed": 0, "train_lm_head": False, "train_norms": False, "train_samples": 1500, "warmup_ratio": 0.03,
             "weight_decay": 0.0}
OLD_TRAIN = {"batch_size": 32, "epochs": 6, "lr": 0.01, "seed": 0, "train_samples": 1500, "weight_decay": 0.0}


def write_eval(work: Path, eval_id: str, train: dict, value: float, mtime: float, depth: int = 2) -> Path:
    run = {"depth": depth, "kind": "run", "mask": None, "method": "full", "model": eval_id[:3] * 4, "params": None,
           "parent": None, "rho": None, "seed": None, "task": "world-coco", "train": train}
    doc = {"eval": {"benchmarks": ["world-coco"], "kind": "eval", "model": eval_id[:3] * 4,
                    "params": {"limit": None, "max_new_tokens": 16}, "run": eval_id},
           "run": run, "results": {"world-coco": {"metric": "cider", "value": value, "seconds": mtime}}}
    path = work / "results" / "evals" / eval_id / "eval.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    os.utime(path, (mtime, mtime))
    return path


def test_one_evaluation_per_run(tmp_path):
    old = write_eval(tmp_path / "a", "aaaaaaaaaaaa", OLD_TRAIN, 369.2, 1000.0)
    new = write_eval(tmp_path / "b", "bbbbbbbbbbbb", NEW_TRAIN, 369.2, 2000.0)
    other = write_eval(tmp_path / "b", "cccccccccccc", NEW_TRAIN, 300.0, 3000.0, depth=6)
    kept, notes = protocol.collect([tmp_path / "a", tmp_path / "b"])
    assert kept == sorted([new, other]) and notes == [f"identical: {old} (kept {new})"]
    # the same run with another number is reported, not merged silently
    doc = json.loads(old.read_text())
    doc["results"]["world-coco"]["value"] = 1.0
    old.write_text(json.dumps(doc))
    os.utime(old, (1000.0, 1000.0))
    kept, notes = protocol.collect([tmp_path / "a", tmp_path / "b"])
    assert kept == sorted([new, other]) and notes == [f"DIFFERENT: {old} (kept {new})"]

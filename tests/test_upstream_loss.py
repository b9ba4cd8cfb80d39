"""experiments/upstream_loss.py: which evaluations it measures (the NLL itself: tests/test_evaluate.py)."""

import importlib.util
import json
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))  # the script imports protocol_results beside it
_spec = importlib.util.spec_from_file_location("upstream_loss", EXPERIMENTS / "upstream_loss.py")
upstream_loss = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(upstream_loss)


def write(root: Path, eval_id: str, model: str, method: str | None) -> Path:
    run = None if method is None else {"method": method, "depth": 2}
    path = root / eval_id / "eval.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"eval": {"model": model, "run": None if method is None else eval_id}, "run": run}))
    return path


def test_runs_of_the_asked_methods_and_each_base_model_once(tmp_path):
    full = write(tmp_path, "e1", "m1", "full")  # a run of model m1 listed before m1's base evaluation
    base = write(tmp_path, "e2", "m1", None)
    write(tmp_path, "e3", "m1", None)  # m1's base again (another eval spec): measured once
    dowser = write(tmp_path, "e4", "m1", "dowser")
    other_base = write(tmp_path, "e5", "m2", None)
    picked = [p for p, _ in upstream_loss.to_measure([full, base, tmp_path / "e3/eval.json", dowser, other_base],
                                                     ["full"])]
    assert picked == [full, base, other_base]
    assert [p for p, _ in upstream_loss.to_measure([dowser, full], ["full", "dowser"])] == [dowser, full]

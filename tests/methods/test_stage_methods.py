"""Every new method through its real stage on an untrained world model: spider and lora train in
`dowser.finetune`, dare / tailor / grafting edit the Full-FT run in `dowser.posthoc`; the result
differs from the base only inside the trainable modules."""

import json

import pytest
import torch

from dowser.finetune import finetune, load_finetuned
from dowser.models import load_model, trainable_modules
from dowser.posthoc import run_posthoc

TASK, DEPTH = "world-imagenet-r", 2
TRAIN = {"lr": 0.01, "epochs": 1, "batch_size": 8, "train_samples": 16, "seed": 0, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tasks import generate_split, write_split
    from dowser.world.tokenizer import build_processor

    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(downstream_train_size=16)
    processor = build_processor(cfg)
    build_model(cfg, processor).save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    write_split(generate_split(cfg, TASK, "train"), root / "data" / TASK / "train.parquet")
    return root


def spec(method, **extra):
    return {"kind": "run", "model": "m", "method": method, "task": TASK, "depth": DEPTH, "train": TRAIN,
            "mask": None, "rho": None, "seed": None, **extra}


def changed_outside_trainable(world, run_dir):
    base, _ = load_model(world / "model")
    tuned, _ = load_finetuned(world / "model", run_dir)
    trainable = {m.name + ".weight" for m in trainable_modules(base, DEPTH)}
    tuned_state = tuned.state_dict()
    inside = sum(int((tuned_state[k] != v).sum()) for k, v in base.state_dict().items() if k in trainable)
    outside = [k for k, v in base.state_dict().items() if k not in trainable and not torch.equal(tuned_state[k], v)]
    return inside, outside


def update_ratio_brute_force(world, run_dir):
    base, _ = load_model(world / "model")
    tuned, _ = load_finetuned(world / "model", run_dir)
    names = [m.name + ".weight" for m in trainable_modules(base, DEPTH)]
    b, t = base.state_dict(), tuned.state_dict()
    num = sum(float((t[k].double() - b[k].double()).pow(2).sum()) for k in names)
    return (num / sum(float(b[k].double().pow(2).sum()) for k in names)) ** 0.5


def test_training_methods_and_posthoc_from_the_full_run(world):
    full_dir = world / "runs" / "full"
    finetune(spec("full"), world / "model", world / "data", full_dir, progress=False)
    for method, params in (("spider", None), ("lora", {"r": 4, "alpha": 8})):
        out = world / "runs" / method
        finetune(spec(method, params=params), world / "model", world / "data", out, progress=False)
        inside, outside = changed_outside_trainable(world, out)
        assert inside > 0 and outside == [], method
    parent = full_dir / "delta.safetensors"
    posthoc = {"dare": None, "tailor": {"nsamples": 8, "blocksize": 64}, "grafting": {"epochs": 2, "grad_accum": 1}}
    for method, params in posthoc.items():
        out = world / "runs" / method
        result = run_posthoc(spec(method, rho=0.1, parent="full", params=params), world / "model", world / "data",
                             out, parent)
        assert 0 < result["changed"] < result["total"], method
        inside, outside = changed_outside_trainable(world, out)
        assert inside == result["changed"] and outside == [], method
        assert json.loads((out / "spec.json").read_text())
        # run.json's ||dW|| / ||W0|| is the brute-force one of the edited weights
        ratio = json.loads((out / "run.json").read_text())["update_norm_ratio"]
        assert ratio == pytest.approx(update_ratio_brute_force(world, out), rel=1e-6), method


def test_posthoc_refuses_a_parent_of_another_task(world, tmp_path):
    parent = world / "runs" / "full" / "delta.safetensors"
    if not parent.exists():
        pytest.skip("needs the full run of the previous test")
    with pytest.raises(ValueError, match="task"):
        run_posthoc(spec("dare", rho=0.1, task="world-coco"), world / "model", world / "data", tmp_path, parent)


def test_posthoc_moves_a_corrupt_parent_aside(world, tmp_path):
    """A cut-short Full-FT delta: one line naming it and the command that retrains it, and the file
    moved aside so the next workflow run retrains the parent instead of failing again."""
    parent = tmp_path / "full" / "delta.safetensors"
    parent.parent.mkdir()
    parent.write_bytes(b"\x08" + b"\0" * 7 + b"{")  # a header length, then a header cut short
    with pytest.raises(ValueError) as e:
        run_posthoc(spec("dare", rho=0.1, parent="full"), world / "model", world / "data", tmp_path / "dare", parent)
    assert str(e.value).startswith(f"{parent}: corrupt or unreadable checkpoint (")
    assert str(e.value).endswith(f"retrain it with `snakemake {parent}` (with your --configfile/--profile)")
    assert not parent.exists() and parent.with_name("delta.safetensors.corrupt").exists()
    assert not (tmp_path / "dare").exists()


def test_spider_resumes_to_the_same_weights(world, tmp_path):
    from safetensors.torch import load_file

    whole, split = tmp_path / "whole", tmp_path / "split"
    finetune(spec("spider"), world / "model", world / "data", whole, progress=False)
    assert finetune(spec("spider"), world / "model", world / "data", split, progress=False, stop_after=1)
    finetune(spec("spider"), world / "model", world / "data", split, progress=False)
    a, b = load_file(str(whole / "delta.safetensors")), load_file(str(split / "delta.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mask_stage_builds_magnitude_and_wanda_masks(world, tmp_path):
    from dowser.cli import main
    from dowser.mask import load_masks
    from dowser.probe import synthesize_probes

    model, processor = load_model(world / "model")
    synthesize_probes(model, processor, n=3, seed_len=4, new_tokens=6).to_parquet(tmp_path / "probes.parquet")
    for method in ("magnitude", "wanda"):
        mask_spec = {"kind": "mask", "model": "m", "method": method, "rho": 0.1, "scope": "module",
                     "selection": "bottom", "score": None, "seed": None, "probe": "p" if method == "wanda" else None,
                     "params": None}
        out = tmp_path / method / "mask.h5"
        out.parent.mkdir()
        args = ["mask", "--spec", json.dumps(mask_spec), "--model", str(world / "model"), "--out", str(out)]
        assert main(args + (["--probes", str(tmp_path / "probes.parquet")] if method == "wanda" else [])) == 0
        masks = load_masks(out)
        for m in trainable_modules(model, 6):
            assert masks[m.name].shape == m.shape
            assert int(masks[m.name].sum()) == (round(0.1 * m.shape[1]) * m.shape[0] if method == "wanda"
                                                else round(0.1 * m.shape[0] * m.shape[1]))

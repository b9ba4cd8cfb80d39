"""The fine-tune stage on the world model: resume = uninterrupted, frozen bits, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dowser.finetune import finetune, load_finetuned
from dowser.mask import build_masks, random_scores, save_masks
from dowser.models import load_model, scored_modules, trainable_modules


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from dowser.world.config import WorldConfig
    from dowser.world.model import build_model
    from dowser.world.tasks import generate_task_data
    from dowser.world.tokenizer import build_processor

    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(upstream_train_size=8, downstream_train_size=24, validation_size=4, test_size=4)
    generate_task_data(cfg, root / "data")
    processor = build_processor(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, processor)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    shapes = {m.name: m.shape for m in scored_modules(model)}
    save_masks(build_masks(random_scores(shapes, 0), 0.1), root / "mask.h5", 0.1)
    return root


def spec(method="dowser", depth=2, **train):
    return {"model": "m", "method": method, "task": "world-imagenet-r", "depth": depth, "mask": None,
            "train": {"lr": 1e-2, "batch_size": 8, "train_samples": 24, "epochs": 2, "weight_decay": 0.1,
                      "checkpoint_every": 2, **train}}


def run(world, out, method="dowser", **kw):
    mask = world / "mask.h5" if method != "full" else None
    return finetune(spec(method), world / "model", world / "data", out, mask, progress=False, **kw)


def test_killed_run_resumes_to_the_same_weights(world, tmp_path):
    run(world, tmp_path / "a")
    assert run(world, tmp_path / "b", stop_after=4) == {"stopped_at": 4}
    assert (tmp_path / "b/checkpoint/state.pt").exists() and not (tmp_path / "b/delta.safetensors").exists()
    run(world, tmp_path / "b")
    a, b = load_file(tmp_path / "a/delta.safetensors"), load_file(tmp_path / "b/delta.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b/checkpoint").exists()
    log = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))


@pytest.mark.parametrize("method", ["full", "dowser", "random"])
def test_frozen_entries_bit_identical_through_the_loop(world, tmp_path, method):
    run(world, tmp_path, method)
    base, _ = load_model(world / "model")
    tuned, _ = load_finetuned(world / "model", tmp_path)
    from dowser.mask import load_masks

    masks = load_masks(world / "mask.h5")
    train = {m.name for m in trainable_modules(base, 2)}
    changed = 0
    for (name, p0), (_, p1) in zip(base.named_parameters(), tuned.named_parameters()):
        module = name.rsplit(".", 1)[0]
        if module in train and name.endswith("weight"):
            frozen = torch.zeros_like(p0, dtype=torch.bool) if method == "full" else ~torch.from_numpy(masks[module])
            assert torch.equal(p0[frozen], p1[frozen]), name
            changed += int((p0 != p1).sum())
        else:
            assert torch.equal(p0, p1), name
    table = json.loads((tmp_path / "trainable.json").read_text())
    assert changed > 0 and table["total_trainable"] >= changed
    if method != "full":
        assert table["total_trainable"] == sum(int(masks[m].sum()) for m in train)


def test_delta_is_sparse_for_masked_methods(world, tmp_path):
    run(world, tmp_path)
    delta = load_file(tmp_path / "delta.safetensors")
    values = [v for k, v in delta.items() if k.endswith(".values")]
    assert values and sum(v.numel() for v in values) == json.loads((tmp_path / "trainable.json").read_text())["total_trainable"]


def test_bad_inputs(world, tmp_path):
    with pytest.raises(ValueError, match="finetune.train.lrate: unknown key"):
        finetune(spec(lrate=1), world / "model", world / "data", tmp_path, world / "mask.h5", progress=False)
    with pytest.raises(ValueError, match="depth L=7 is larger than"):
        finetune({**spec(), "depth": 7}, world / "model", world / "data", tmp_path, world / "mask.h5", progress=False)
    with pytest.raises(ValueError, match="has no training split"):
        finetune({**spec(), "task": "world-gqa"}, world / "model", world / "data", tmp_path, world / "mask.h5",
                 progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/delta.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or unreadable checkpoint"):
        load_finetuned(world / "model", tmp_path / "bad")

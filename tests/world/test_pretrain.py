import json

import pytest
import torch

from dowser.world import build_base
from dowser.world.config import WorldConfig
from dowser.world.tasks import generate_task_data

TINY = WorldConfig(
    upstream_train_size=32, downstream_train_size=8, validation_size=4, test_size=8,
    pretrain_steps=40, pretrain_batch=8, pretrain_warmup=5, curriculum_steps=5,
    pretrain_lr=3e-3, vision_warmup_steps=20, vision_warmup_batch=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    generate_task_data(TINY, data)
    out = tmp_path_factory.mktemp("model")
    build_base(TINY, data, out, pretrain=True)
    return data, out


def test_short_pretraining_lowers_loss_and_saves(run):
    _, out = run
    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    losses = [c["loss"] for c in metrics["loss_curve"]]
    assert losses[-1] < 0.6 * losses[0]
    assert set(metrics["accuracy"]) == set(metrics["chance"])
    spec = json.loads((out / "world_spec.json").read_text())
    assert spec["config"] == TINY.to_dict()
    assert (out / "model.safetensors").exists()


def test_saved_model_loads_and_generates(run):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from dowser.world.tokenizer import format_prompt

    _, out = run
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    img = torch.zeros(TINY.image_size, TINY.image_size, 3, dtype=torch.uint8).numpy()
    inputs = processor(images=img, text=format_prompt(processor, "how many objects are there ?"),
                       return_tensors="pt")  # fmt: skip
    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] <= inputs["input_ids"].shape[1] + 3


def test_pretraining_is_deterministic(run, tmp_path):
    data, out = run
    build_base(TINY, data, tmp_path, pretrain=True)
    a = json.loads((out / "pretrain_metrics.json").read_text())
    b = json.loads((tmp_path / "pretrain_metrics.json").read_text())
    assert a["loss_curve"][-1]["loss"] == b["loss_curve"][-1]["loss"]
    assert a["accuracy"] == b["accuracy"]
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()


def test_build_base_refuses_a_stale_shipped_model(tmp_path):
    with pytest.raises(ValueError, match="no shipped world model matches"):
        build_base(WorldConfig(seed=12345), tmp_path, tmp_path / "m", pretrain=False)

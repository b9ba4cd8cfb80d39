"""finetune.train.train_lm_head: the authors' LLaVA train_dowser.py trains lm_head fully (dense,
fp32 master, every method); the default (docs/method.md §3) keeps it frozen."""

import copy
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dowser.models import load_model, trainable_modules
from dowser.spec import build_grid
from worldrun import make_world, run_spec, train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("method", ["dowser", "lora"])
def test_lm_head_trains_and_the_rest_stays_frozen(world, tmp_path, method):
    from dowser.finetune import load_finetuned
    from dowser.mask import load_masks
    from dowser.sparse import head_params, load_delta_state

    params = {"r": 4, "alpha": 8, "dropout": 0.0} if method == "lora" else None
    train(world, tmp_path / "head", spec=run_spec(method, params=params, train_lm_head=True))
    base, _ = load_model(world / "model")
    (head_name, head0), = head_params(base)
    assert head_name == "lm_head.weight"
    delta = load_file(tmp_path / "head/delta.safetensors")
    assert delta[head_name].dtype == torch.float32 and delta[head_name].shape == head0.shape  # the fp32 master
    tuned, _ = load_finetuned(world / "model", tmp_path / "head")
    t = dict(tuned.named_parameters())
    assert torch.equal(t[head_name], delta[head_name].to(head0.dtype)) and not torch.equal(t[head_name], head0)
    # everything outside the last L blocks' scored linears and lm_head is bit-identical
    trainable = {m.name for m in trainable_modules(base, 2)}
    masks = load_masks(world / "mask.h5")
    for name, p0 in base.named_parameters():
        module = name.rsplit(".", 1)[0]
        if name == head_name:
            continue
        if module in trainable and name.endswith("weight"):
            if method == "dowser":  # frozen entries of a masked module do not move
                frozen = ~torch.from_numpy(masks[module])
                assert torch.equal(p0[frozen], t[name][frozen]), name
            continue
        assert torch.equal(p0, t[name]), name
    # delta round trip onto a fresh base model: the lm_head comes back bit for bit
    fresh, _ = load_model(world / "model")
    load_delta_state(fresh, delta)
    assert torch.equal(dict(fresh.named_parameters())[head_name], t[head_name])
    # trainable.json: the plain run's count + lm_head, in its own group
    train(world, tmp_path / "plain", spec=run_spec(method, params=params))
    head = json.loads((tmp_path / "head/trainable.json").read_text())
    plain = json.loads((tmp_path / "plain/trainable.json").read_text())
    assert head["total_trainable"] - plain["total_trainable"] == head0.numel()
    assert {"group": "lm_head", "trainable": head0.numel(), "total": head0.numel()} in head["groups"]
    assert {"group": "lm_head", "trainable": 0, "total": head0.numel()} in plain["groups"]
    assert head_name not in load_file(tmp_path / "plain/delta.safetensors")
    assert torch.equal(dict(load_finetuned(world / "model", tmp_path / "plain")[0].named_parameters())[head_name], head0)
    # update_norm_ratio pools the scored modules and lm_head, brute force from the two models
    b = dict(base.named_parameters())
    names = [m + ".weight" for m in trainable] + [head_name]
    num = sum(float((t[n].detach().double() - b[n].detach().double()).pow(2).sum()) for n in names)
    den = sum(float(b[n].detach().double().pow(2).sum()) for n in names)
    ratio = json.loads((tmp_path / "head/run.json").read_text())["update_norm_ratio"]
    assert ratio == pytest.approx((num / den) ** 0.5, rel=1e-5) and ratio > 0


def test_tied_lm_head_is_refused(world):
    from dowser.sparse import delta_state, head_params

    model, _ = load_model(world / "model")
    model.get_output_embeddings().weight = model.get_input_embeddings().weight
    with pytest.raises(ValueError, match=r"^finetune.train.train_lm_head: the model's lm_head weight is tied to its "
                                         r"input embeddings \(tie_word_embeddings\)"):
        head_params(model)
    with pytest.raises(ValueError, match="tied"):
        delta_state(model, 2, lm_head=True)
    assert "lm_head.weight" not in delta_state(model, 2)


def test_tied_model_run_fails_before_writing(world, tmp_path, monkeypatch):
    import dowser.finetune as ft

    real = ft.load_artifact

    def tied(*a, **kw):
        model, processor = real(*a, **kw)
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
        return model, processor

    monkeypatch.setattr(ft, "load_artifact", tied)
    with pytest.raises(ValueError, match="train_lm_head: .* tied"):
        train(world, tmp_path, spec=run_spec("dowser", train_lm_head=True))
    assert not (tmp_path / "trainable.json").exists() and not (tmp_path / "delta.safetensors").exists()


def run_ids(config: dict) -> set[str]:
    return set(build_grid(config).runs)


def test_spec_id_changes_with_train_lm_head_only_when_set():
    config = yaml.safe_load(open("config.yaml"))

    def with_train(**kw):
        c = copy.deepcopy(config)
        c["finetune"]["train"] = {**c["finetune"]["train"], **kw}
        return c

    base = run_ids(config)
    assert run_ids(with_train(train_lm_head=False)) == base  # spelled as the default: the same runs
    on = run_ids(with_train(train_lm_head=True))
    assert len(on) == len(base) and not on & base
    run = next(iter(build_grid(config).runs.values()))
    assert run.train["train_lm_head"] is False  # filled in before hashing
    from dowser.config import validate_config

    validate_config(with_train(train_lm_head=True), "workflow/schemas/config.schema.yaml")
    with pytest.raises(ValueError, match="train_lm_head"):
        validate_config(with_train(train_lm_head="yes"), "workflow/schemas/config.schema.yaml")


def test_shipped_configs_set_it_as_the_authors_scripts():
    llava = yaml.safe_load(open("configs/llava-1.5-7b.yaml"))["finetune"]["train"]
    nvila = yaml.safe_load(open("configs/nvila-lite-2b.yaml"))["finetune"]["train"]
    assert llava["train_lm_head"] is True and nvila["train_lm_head"] is False


def test_posthoc_keeps_the_parents_lm_head(world, tmp_path):
    """dare edits the Full-FT run's modules; the lm_head the parent trained stays in its delta."""
    from dowser.posthoc import run_posthoc

    parent = run_spec("full", train_lm_head=True)
    train(world, tmp_path / "full", spec=parent)
    spec = {**parent, "method": "dare", "rho": 0.1, "parent": "full"}
    run_posthoc(spec, world / "model", world / "data", tmp_path / "dare", tmp_path / "full/delta.safetensors")
    a, b = load_file(tmp_path / "full/delta.safetensors"), load_file(tmp_path / "dare/delta.safetensors")
    assert torch.equal(a["lm_head.weight"], b["lm_head.weight"])
    assert a.keys() == b.keys()

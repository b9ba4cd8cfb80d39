"""The fine-tune stage on the world model: exact resume for every method, no pickle, determinism,
the loss over the global batch, provenance checks, train_norms, update-norm ratio, frozen bits."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dowser.finetune import finetune, load_finetuned
from dowser.models import load_model, trainable_modules
from worldrun import make_world, run_spec, train

LORA = {"r": 4, "alpha": 8, "dropout": 0.3}  # dropout: resume must restore the RNG


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


def deltas_equal(a, b):
    a, b = load_file(a / "delta.safetensors"), load_file(b / "delta.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["full", "dowser", "spider", "lora"])
def test_killed_run_resumes_to_the_same_weights(world, tmp_path, method):
    spec = run_spec(method, params=LORA if method == "lora" else None)
    train(world, tmp_path / "a", spec=spec)
    assert train(world, tmp_path / "b", spec=spec, stop_after=4) == {"stopped_at": 4}
    ckpt = tmp_path / "b/checkpoint"
    # safetensors + JSON only: nothing a loader would unpickle (issue 9)
    assert sorted(p.name for p in ckpt.iterdir()) == ["rng.0.safetensors", "state.0.safetensors", "state.json"]
    assert not (tmp_path / "b/delta.safetensors").exists()
    train(world, tmp_path / "b", spec=spec)
    assert deltas_equal(tmp_path / "a", tmp_path / "b")
    assert not ckpt.exists()
    log = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert log == [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]


def test_same_spec_same_threads_bit_identical(world, tmp_path):
    for out in ("a", "b"):
        train(world, tmp_path / out, "full", checkpoint_every=2)
    assert deltas_equal(tmp_path / "a", tmp_path / "b")
    assert json.loads((tmp_path / "a/run.json").read_text())["torch_threads"] == torch.get_num_threads()
    assert json.loads((tmp_path / "a/provenance.json").read_text())["torch_threads"] == torch.get_num_threads()


def test_loss_averages_over_the_tokens_of_the_global_batch(world, tmp_path):
    """2 accumulated micro-batches of 4 = one batch of 8 (the same samples: same order), and the
    schedule steps once per optimizer step."""
    one = run_spec("full", batch_size=8, warmup_ratio=0.5)
    two = run_spec("full", batch_size=4, grad_accum=2, warmup_ratio=0.5)
    train(world, tmp_path / "one", spec=one)
    train(world, tmp_path / "two", spec=two)
    logs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert [r["lr"] for r in logs[0]] == [r["lr"] for r in logs[1]]
    assert [r["lr"] for r in logs[0]] == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2, 0.75e-2, 0.25e-2])
    assert [r["tokens"] for r in logs[0]] == [r["tokens"] for r in logs[1]]
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-5)
    a, b = load_file(tmp_path / "one/delta.safetensors"), load_file(tmp_path / "two/delta.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=5e-5)  # steps move entries ~1e-2


@pytest.mark.parametrize("method", ["full", "dowser"])
def test_frozen_entries_bit_identical_through_the_loop(world, tmp_path, method):
    train(world, tmp_path, method)
    base, _ = load_model(world / "model")
    tuned, _ = load_finetuned(world / "model", tmp_path)
    from dowser.mask import load_masks

    masks = load_masks(world / "mask.h5")
    trainable = {m.name for m in trainable_modules(base, 2)}
    changed = 0
    for (name, p0), (_, p1) in zip(base.named_parameters(), tuned.named_parameters()):
        module = name.rsplit(".", 1)[0]
        if module in trainable and name.endswith("weight"):
            frozen = torch.zeros_like(p0, dtype=torch.bool) if method == "full" else ~torch.from_numpy(masks[module])
            assert torch.equal(p0[frozen], p1[frozen]), name
            changed += int((p0 != p1).sum())
        else:
            assert torch.equal(p0, p1), name
    table = json.loads((tmp_path / "trainable.json").read_text())
    assert changed > 0 and table["total_trainable"] >= changed
    if method != "full":
        assert table["total_trainable"] == sum(int(masks[m].sum()) for m in trainable)
    # ||dW|| / ||W0|| over the trainable modules, brute force from the two models
    b, t = dict(base.named_parameters()), dict(tuned.named_parameters())
    num = sum(float((t[m + ".weight"].detach().double() - b[m + ".weight"].double()).pow(2).sum()) for m in trainable)
    den = sum(float(b[m + ".weight"].double().pow(2).sum()) for m in trainable)
    ratio = json.loads((tmp_path / "run.json").read_text())["update_norm_ratio"]
    assert ratio == pytest.approx((num / den) ** 0.5, rel=1e-5) and ratio > 0


def test_train_norms_trains_the_last_blocks_vectors(world, tmp_path):
    train(world, tmp_path, spec=run_spec("dowser", train_norms=True))
    base, _ = load_model(world / "model")
    tuned, _ = load_finetuned(world / "model", tmp_path)
    from dowser.sparse import block_vectors

    vectors = dict(block_vectors(base, 2))
    assert vectors and all(p.dim() == 1 for p in vectors.values())
    t = dict(tuned.named_parameters())
    assert all(not torch.equal(p, t[n]) for n, p in vectors.items())  # every norm moved
    moved_elsewhere = [n for n, p in base.named_parameters() if p.dim() == 1 and n not in vectors
                       and not torch.equal(p, t[n])]
    assert moved_elsewhere == []
    table = json.loads((tmp_path / "trainable.json").read_text())
    train(world, tmp_path / "plain", "dowser")
    plain = json.loads((tmp_path / "plain/trainable.json").read_text())
    assert table["total_trainable"] - plain["total_trainable"] == sum(p.numel() for p in vectors.values())


def test_delta_is_sparse_for_masked_methods(world, tmp_path):
    train(world, tmp_path)
    delta = load_file(tmp_path / "delta.safetensors")
    values = [v for k, v in delta.items() if k.endswith(".values")]
    assert values and sum(v.numel() for v in values) == json.loads((tmp_path / "trainable.json").read_text())["total_trainable"]


def test_bad_inputs(world, tmp_path):
    spec = run_spec("dowser")
    args = (world / "model", world / "data", tmp_path)
    with pytest.raises(ValueError, match="finetune.train.lrate: unknown key"):
        finetune(run_spec("dowser", lrate=1), *args, world / "mask.h5", progress=False)
    with pytest.raises(ValueError, match="depth L=7 is larger than"):
        finetune({**spec, "depth": 7}, *args, world / "mask.h5", progress=False)
    with pytest.raises(ValueError, match="has no training split"):
        finetune({**spec, "task": "world-gqa"}, *args, world / "mask.h5", progress=False)
    # provenance: a mask file built under another spec than the run names (issue 9)
    with pytest.raises(ValueError, match=r"mask built from spec [0-9a-f]{12}, the run names mask 000000000000"):
        finetune({**spec, "mask": "000000000000"}, *args, world / "mask.h5", progress=False)
    with pytest.raises(ValueError, match="sharding 'zero' is not one of"):
        finetune(spec, *args, world / "mask.h5", progress=False, sharding="zero")
    assert not (tmp_path / "delta.safetensors").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/delta.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or unreadable checkpoint"):
        load_finetuned(world / "model", tmp_path / "bad")


def test_gradient_checkpointing_gives_the_same_weights(world, tmp_path):
    train(world, tmp_path / "plain", "dowser")
    train(world, tmp_path / "ckpt", "dowser", gradient_checkpointing=True)
    a, b = load_file(tmp_path / "plain/delta.safetensors"), load_file(tmp_path / "ckpt/delta.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["dowser", "lora"])
def test_cached_frozen_prefix_trains_what_the_whole_forward_trains(world, tmp_path, method):
    spec = run_spec(method, params={"r": 4, "alpha": 8, "dropout": 0.0} if method == "lora" else None)
    train(world, tmp_path / "cached", spec=spec)
    train(world, tmp_path / "whole", spec=spec, cache_prefix=False)
    assert json.loads((tmp_path / "cached/run.json").read_text())["prefix_cached"]
    assert not json.loads((tmp_path / "whole/run.json").read_text())["prefix_cached"]
    logs = [[json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("cached", "whole")]
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-5)
    a, b = load_file(tmp_path / "cached/delta.safetensors"), load_file(tmp_path / "whole/delta.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=5e-5)  # steps move entries by ~1e-2


def test_refused_run_leaves_no_files(world, tmp_path):
    """The data check fails before anything is written: no trainable.json, no folder."""
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError):
        finetune(run_spec("dowser"), world / "model", tmp_path / "no-data", out, world / "mask.h5", progress=False)
    assert not out.exists()


def test_checkpoint_files_honour_umask(world, tmp_path):
    import os
    import stat

    old = os.umask(0o002)
    try:
        train(world, tmp_path, "dowser", stop_after=2)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "checkpoint").iterdir()}
    assert modes == {"rng.0.safetensors": 0o664, "state.json": 0o664, "state.0.safetensors": 0o664}  # not 0600
    assert stat.S_IMODE((tmp_path / "checkpoint").stat().st_mode) == 0o775


def test_corrupt_checkpoint_is_moved_aside_and_the_run_starts_over(world, tmp_path, capsys):
    train(world, tmp_path / "whole", "dowser")
    train(world, tmp_path / "b", "dowser", stop_after=2)
    ckpt = tmp_path / "b/checkpoint"
    (ckpt / "state.0.safetensors").write_bytes((ckpt / "state.0.safetensors").read_bytes()[:100])  # cut short
    capsys.readouterr()
    train(world, tmp_path / "b", "dowser")  # no traceback: from step 0, the last good state
    err = capsys.readouterr().err
    assert f"dowser: warning: {ckpt}: unreadable checkpoint (" in err
    assert f"moved aside to {ckpt}.corrupt; training from step 0" in err
    assert (tmp_path / "b/checkpoint.corrupt/state.json").exists() and not ckpt.exists()
    assert deltas_equal(tmp_path / "whole", tmp_path / "b")


def test_corrupt_delta_is_moved_aside_with_the_fix(world, tmp_path):
    from dowser.finetune import read_delta

    path = tmp_path / "delta.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError) as e:
        read_delta(path)
    assert str(e.value).startswith(f"{path}: corrupt or unreadable checkpoint (")
    assert str(e.value).endswith(f"moved aside to delta.safetensors.corrupt; retrain it with `snakemake {path}` "
                                 "(with your --configfile/--profile)")
    assert not path.exists() and (tmp_path / "delta.safetensors.corrupt").read_bytes() == b"garbage"
    with pytest.raises(FileNotFoundError, match="delta.safetensors: no such file"):  # the rerun: not corrupt again
        read_delta(path)


def test_delta_of_another_run_is_refused(world, tmp_path):
    """A delta copied by hand into another run's folder, or --run pointing at another run."""
    import shutil

    from dowser.spec import RunSpec

    spec = RunSpec.from_dict(run_spec("dowser")).to_dict()
    other = RunSpec.from_dict({**spec, "depth": 1}).to_dict()
    train(world, tmp_path / "a", spec=spec)
    load_finetuned(world / "model", tmp_path / "a", expect_run=RunSpec.from_dict(spec).id)  # its own run: fine
    with pytest.raises(ValueError) as e:
        load_finetuned(world / "model", tmp_path / "a", expect_run=RunSpec.from_dict(other).id)
    assert str(e.value) == (f"{tmp_path}/a/delta.safetensors: delta of run {RunSpec.from_dict(spec).id} (the spec in "
                            f"its metadata), not {RunSpec.from_dict(other).id} (the run this stage's spec names)")
    (tmp_path / "b").mkdir()
    (tmp_path / "b/spec.json").write_text(json.dumps(other))
    shutil.copy(tmp_path / "a/delta.safetensors", tmp_path / "b/delta.safetensors")  # hand-copied
    with pytest.raises(ValueError, match=f"delta of run {RunSpec.from_dict(spec).id} .*, not "
                                         f"{RunSpec.from_dict(other).id}"):
        load_finetuned(world / "model", tmp_path / "b", expect_run=RunSpec.from_dict(other).id)

def test_trained_norms_of_a_bf16_model_return_bf16():
    """fp32 master norm weights would make each trained norm's output fp32 (and every linear reading
    it save its own bf16 cast); `keep_output_dtype` returns the input's dtype: the fp32 product rounded once."""
    from tinymodels import tiny_llama

    from dowser.finetune import keep_output_dtype
    from dowser.sparse import dense_extras, fp32_masters

    model = tiny_llama(torch.bfloat16, layers=2)
    extras = dense_extras(model, 1, vectors=True)
    fp32_masters([p for _, p in extras])
    norm = model.model.layers[1].input_layernorm
    other = model.model.layers[0].input_layernorm  # not trained: bf16 weight already
    x = torch.randn(2, 3, 16).to(torch.bfloat16)
    assert norm.weight.dtype == torch.float32 and norm(x).dtype == torch.float32
    expected = norm(x).to(torch.bfloat16)
    keep_output_dtype(model, extras)
    assert norm(x).dtype == torch.bfloat16 and torch.equal(norm(x), expected)
    assert other(x).dtype == torch.bfloat16

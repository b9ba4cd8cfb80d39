"""score.preset official against an independent re-derivation of the authors' algorithm;
mask.rule official against brute force; preset values in the spec ids."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tinymodels import tiny_llama, tiny_world_llava
from dowser.mask import build_masks
from dowser.models import scored_modules
from dowser.probe import synthesize_probes_official
from dowser.score import draw_seed, rademacher, score_model, score_model_official

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llava_and_probes():
    model, processor = tiny_world_llava(torch.float64)
    # 6 probes: batches of 4 and 2, so the batch-size weighting of their Welford mean matters
    probes = synthesize_probes_official(model, processor, n=6, seed=3, params={"max_len": 14})
    return model, processor, probes


def authors_algorithm(model, probes, draws, seed):
    """The official main() loop written out: per batch, per draw, one forward; S on the last
    position; psi, a as means over batch and tokens of |dS/dy|, |x| (dS/dy by autograd.grad
    w.r.t. an added zero at every module output); weighted Welford mean of psi ⊗ |W| ⊗ a."""
    named = dict(model.named_modules())
    names = [m.name for m in scored_modules(model)]
    mean = {n: None for n in names}
    count = 0.0
    for b in sorted(set(probes["batch"])):
        rows = probes[probes["batch"] == b]
        ids = torch.tensor(np.stack(rows["token_ids"].to_list()))  # one length per batch: no padding
        B = ids.shape[0]
        for m in range(draws):
            eps, xs, handles = {}, {}, []
            for n in names:
                eps[n] = torch.zeros(B, ids.shape[1], named[n].out_features, dtype=torch.float64, requires_grad=True)

                def hook(mod, inp, out, n=n):
                    xs[n] = inp[0].detach()
                    return out + eps[n]

                handles.append(named[n].register_forward_hook(hook))
            try:
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1, :]
            finally:
                for h in handles:
                    h.remove()
            V = logits.shape[-1]
            xi = torch.stack([rademacher((1, V), draw_seed(seed, int(k), m))[0] for k in rows["probe_index"]])
            S = (xi.double() * logits).sum() / float(B)
            grads = torch.autograd.grad(S, [eps[n] for n in names])
            total = count + B
            for n, g in zip(names, grads):
                psi = g.abs().mean(dim=(0, 1))
                a = xs[n].abs().mean(dim=(0, 1))
                mat = psi[:, None] * named[n].weight.detach().abs() * a[None, :]
                if mean[n] is None:
                    mean[n] = mat.clone()
                else:
                    mean[n] += (mat - mean[n]) * (B / total)
            count = total
    return mean


def test_official_scores_equal_the_authors_algorithm(llava_and_probes):
    model, _, probes = llava_and_probes
    assert sorted(probes.groupby("batch").size().tolist()) == [2, 4]
    ours = score_model_official(model, probes, draws=3, seed=11)
    theirs = authors_algorithm(model, probes, draws=3, seed=11)
    assert set(ours) == set(theirs) and len(ours) == 14  # 2 blocks x q k v o gate up down
    for name in theirs:
        ref = theirs[name].numpy()
        assert ref.max() > 0
        np.testing.assert_allclose(ours[name].numpy(), ref, rtol=1e-6, atol=1e-6 * ref.max())
    # another seed draws other xi: a different score (the comparison above can fail)
    other = score_model_official(model, probes, draws=3, seed=12)
    assert any(not np.allclose(other[n].numpy(), ours[n].numpy(), rtol=1e-3) for n in ours)


def test_official_scoring_accumulates_no_weight_gradient_and_scores_are_bit_identical(llava_and_probes,
                                                                                       monkeypatch):
    """Trainable parameters are frozen during the scoring backward (no .grad for any weight), and the
    scores equal bit for bit those of the backward that did accumulate weight gradients."""
    import contextlib

    import dowser.score as score

    model, _, probes = llava_and_probes
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    try:
        ours = score_model_official(model, probes, draws=2, seed=5)
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
        monkeypatch.setattr(score, "frozen_parameters", lambda m: contextlib.nullcontext())
        before = score_model_official(model, probes, draws=2, seed=5)
        assert sum(p.grad is not None for p in model.parameters()) > 14  # the old path did accumulate
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
            p.grad = None
    assert set(ours) == set(before)
    for name in ours:
        assert torch.equal(ours[name], before[name]), name


def test_official_differs_from_the_default_estimator(llava_and_probes):
    model, _, probes = llava_and_probes
    ours = score_model_official(model, probes, draws=2, seed=1)
    default = score_model(model, probes, draws=2, seed=1)
    name = scored_modules(model)[0].name
    assert not np.allclose(ours[name].numpy(), default[name].numpy(), rtol=1e-2)


def test_official_batches_without_a_batch_column_are_consecutive_groups():
    import pandas as pd

    model = tiny_llama(torch.float64)
    seqs = [[3, 5, 7, 9], [6, 8, 10, 12], [13, 14, 15, 16], [20, 21, 3, 4], [4, 5, 6, 7]]
    df = pd.DataFrame({"probe_index": range(5), "token_ids": seqs})
    with_col = score_model_official(model, df.assign(batch=[0, 0, 0, 0, 1]), draws=2)
    without = score_model_official(model, df, draws=2, batch_size=4)
    regrouped = score_model_official(model, df.assign(batch=[0, 0, 1, 1, 2]), draws=2)
    for n in with_col:
        np.testing.assert_allclose(with_col[n].numpy(), without[n].numpy(), rtol=1e-12)
    assert any(not np.allclose(with_col[n].numpy(), regrouped[n].numpy()) for n in with_col)


# ----------------------------------------------------------------------- mask.rule official


def official_rule_brute_force(score: np.ndarray, rho: float) -> np.ndarray:
    """train_dowser.py's _build_low_mask_from_importance on the bf16-saved score, in torch."""
    imp = torch.from_numpy(score).to(torch.bfloat16).float()
    flat = imp.reshape(-1)
    if (flat.max() - flat.min()) < 1e-12:
        return np.ones(score.shape, dtype=bool)
    k = int(max(0, min(flat.numel(), round(flat.numel() * rho))))
    if k == 0:
        return np.zeros(score.shape, dtype=bool)
    return (imp <= torch.kthvalue(flat, k).values).numpy()


def test_official_mask_rule_matches_brute_force_and_ties_add_entries():
    rng = np.random.default_rng(0)
    # a lognormal score (like the real one) whose bf16 rounding creates ties
    scores = {"a": rng.lognormal(-8, 1.0, (64, 48)), "b": rng.lognormal(-6, 0.3, (40, 50)),
              "const": np.full((8, 8), 3e-4)}
    for rho in (0.1, 0.25, 0.5):
        got = build_masks(scores, rho, rule="official")
        exact = build_masks(scores, rho)
        for name, s in scores.items():
            expect = official_rule_brute_force(s, rho)
            np.testing.assert_array_equal(got[name], expect)
            assert exact[name].sum() == round(rho * s.size)
        assert got["const"].all()  # constant score: everything trains (their eps rule)
    # with ties at the k-th value the official rule trains more than round(rho * n) entries
    m = build_masks(scores, 0.5, rule="official")["b"]
    assert m.sum() > round(0.5 * scores["b"].size)
    # the same rule for the most important entries (selection top): -score <= k-th of -score
    top = build_masks({"a": scores["a"]}, 0.1, selection="top", rule="official")["a"]
    np.testing.assert_array_equal(top, official_rule_brute_force(-scores["a"], 0.1))
    with pytest.raises(ValueError, match="^mask.rule: 'loose' is not one of exact, official$"):
        build_masks(scores, 0.1, rule="loose")


# ----------------------------------------------------------------------------------- specs


def _config():
    """The default config with the presets the real-model configs set (tests/test_configs.py
    checks those configs themselves)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["probe"]["preset"] = cfg["score"]["preset"] = "official"
    cfg["mask"]["rule"] = "official"
    return cfg


@pytest.mark.parametrize("name", ["llava-1.5-7b.yaml", "nvila-lite-2b.yaml"])
def test_real_model_configs_use_the_official_settings(name):
    cfg = yaml.safe_load((ROOT / "configs" / name).read_text())
    assert cfg["probe"]["preset"] == cfg["score"]["preset"] == cfg["mask"]["rule"] == "official"
    assert cfg["probe"]["n"] == 64 and cfg["score"]["draws"] == 8 and cfg["mask"]["rho"] == [0.1]
    assert cfg["finetune"]["depths"] == [20]
    train = cfg["finetune"]["train"]
    assert train["batch_size"] * train["grad_accum"] == 8 * 2 * 8
    assert (train["lr"], train["epochs"], train["weight_decay"], train["warmup_ratio"]) == (2e-5, 5, 0.0, 0.03)
    assert train["mixed_precision"] == "bf16" and train["train_norms"] is True


def test_presets_flow_into_spec_ids():
    from dowser.presets import OFFICIAL_PROBE, OFFICIAL_SCORE
    from dowser.spec import build_grid

    official = build_grid(_config())
    assert official.probe.preset == "official" and official.probe.params == OFFICIAL_PROBE
    assert official.probe.temperature == 0.9 and official.probe.image == "none"
    assert official.score.preset == "official" and official.score.params == OFFICIAL_SCORE
    assert {m.rule for m in official.masks.values() if m.method == "dowser"} == {"official"}
    assert {m.rule for m in official.masks.values() if m.method == "random"} == {"exact"}

    cfg = _config()
    cfg["probe"]["preset"] = cfg["score"]["preset"] = "default"
    cfg["mask"]["rule"] = "exact"
    default = build_grid(cfg)
    assert default.probe.id != official.probe.id and default.score.id != official.score.id
    assert set(default.masks) != set(official.masks)
    # defaults are filled before hashing: writing `preset: default` out changes no id
    implicit = copy.deepcopy(cfg)
    for section, key in (("probe", "preset"), ("score", "preset"), ("mask", "rule")):
        del implicit[section][key]
    again = build_grid(implicit)
    assert again.probe.id == default.probe.id and again.score.id == default.score.id
    assert set(again.masks) == set(default.masks)
    cfg["score"]["preset"] = "exact"
    with pytest.raises(ValueError, match="^score.preset: 'exact' is not one of default, official$"):
        build_grid(cfg)


# ------------------------------------------------------------ the stages (dowser probe/score/merge)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import json

    model, processor = tiny_world_llava(torch.float32)
    path = tmp_path_factory.mktemp("m") / "model"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "spec.json").write_text(json.dumps({"dtype": "float32"}))
    return path


def _score_spec(**kw):
    import json

    from dowser.presets import score_fields

    spec = {"kind": "score", "model": "m", "probe": "p", "source": "probes", "task": None, "samples": None,
            **score_fields({"estimator": "l1", "draws": 2, "aggregate": "outer", "output": "logits",
                            "shards": 2, "seed": 4, **kw})}
    return json.dumps(spec)


def test_stages_official_probe_score_merge(model_dir, tmp_path):
    """Official probes through `dowser probe`, two shards (split between batches), merge =
    the API on the same model."""
    import json

    import pandas as pd

    from dowser.cli import main
    from dowser.models import load_artifact
    from dowser.presets import probe_fields
    from dowser.score import load_scores

    probe = json.dumps({"kind": "probe", "model": "m", **probe_fields({"preset": "official", "n": 6, "seed": 0})})
    assert main(["probe", "--spec", probe, "--model", str(model_dir), "--out", str(tmp_path / "probes")]) == 0
    probes = pd.read_parquet(tmp_path / "probes/probes.parquet")
    assert probes.groupby("batch").size().tolist() == [4, 2]
    for _, rows in probes.groupby("batch"):  # BOS + text, 64 in all with the padded prompt (or every row ended)
        lengths = {len(t) for t in rows["token_ids"]}
        assert lengths == {65 - max(len(s) for s in rows["seed_token_ids"])} or (
            len(lengths) == 1 and all(2 in t for t in rows["token_ids"]))  # 2: the world's </s>
    spec = _score_spec(preset="official")
    shards = [tmp_path / f"shard-{k}-of-2.h5" for k in range(2)]
    for k, out in enumerate(shards):
        assert main(["score", "--spec", spec, "--model", str(model_dir), "--probes",
                     str(tmp_path / "probes/probes.parquet"), "--shard", str(k), "--out", str(out)]) == 0
    assert main(["merge", "--spec", spec, "--shards", *map(str, shards), "--out", str(tmp_path / "scores.h5")]) == 0
    model, _ = load_artifact(model_dir, device="cpu")
    merged = load_scores(tmp_path / "scores.h5")
    api = score_model_official(model, probes, draws=2, seed=4)
    assert set(merged) == set(api)
    for name in api:
        np.testing.assert_allclose(merged[name], api[name].numpy(), rtol=1e-4, atol=1e-6 * float(api[name].max()))


def _image_bytes(seed):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_score_stage_draws_from_upstream_world_tasks(model_dir, tmp_path):
    """The oracle: scores from an upstream task's own training rows (world tasks generate
    every split); a real upstream benchmark has no training split and is refused in one line."""
    import json

    import pandas as pd

    from dowser.cli import main
    from dowser.data import read_rows, scoring_inputs
    from dowser.models import load_artifact
    from dowser.score import ScoreConfig, accumulate_scores, finalize, load_scores
    from dowser.tasks import scoring_split

    data = tmp_path / "data"
    (data / "world-textvqa").mkdir(parents=True)
    rows = pd.DataFrame({"id": ["a", "b", "c"], "image": [{"bytes": _image_bytes(i), "path": None} for i in range(3)],
                         "question": ["what is written ?", "what word ?", "read the sign ?"],
                         "answer": ["cat", "red dog", "blue"], "task": "world-textvqa"})
    rows.to_parquet(data / "world-textvqa/train.parquet")
    assert scoring_split("world-textvqa", data) == data / "world-textvqa/train.parquet"
    with pytest.raises(ValueError, match=r"^benchmark 'world-okvqa' \(upstream\) has no training split to draw "
                                         r"scoring samples from \(expected .*world-okvqa/train.parquet\)$"):
        scoring_split("world-okvqa", data)
    with pytest.raises(ValueError, match=r"^benchmark 'textvqa' \(upstream\) has no training split to draw "
                                         r"scoring samples from$"):
        scoring_split("textvqa", data)

    model, processor = load_artifact(model_dir, device="cpu")
    ids, pixels = scoring_inputs(processor, read_rows(data / "world-textvqa/train.parquet"))
    named = dict(model.named_modules())
    weights = {m.name: named[m.name].weight for m in scored_modules(model)}
    for preset in ("default", "official"):
        spec = json.loads(_score_spec(preset=preset, shards=1))
        spec.update(probe=None, source="task", task="world-textvqa", samples=3)
        spec = json.dumps(spec)
        out = tmp_path / f"{preset}.h5"
        assert main(["score", "--spec", spec, "--model", str(model_dir), "--data", str(data), "--shard", "0",
                     "--out", str(out)]) == 0
        assert main(["merge", "--spec", spec, "--shards", str(out), "--out", str(tmp_path / f"{preset}-m.h5")]) == 0
        merged = load_scores(tmp_path / f"{preset}-m.h5")
        if preset == "default":
            stats = accumulate_scores(model, ids, [0, 1, 2], ScoreConfig(draws=2, seed=4), pixel_values=pixels,
                                      pad_id=processor.tokenizer.pad_token_id)
        else:  # one padded batch of 3 samples: psi, a over real tokens, xi at each row's last token
            from dowser.score import accumulate_official

            stats = accumulate_official(model, ids, [0, 1, 2], [0, 0, 0], draws=2, seed=4,
                                        pad_id=processor.tokenizer.pad_token_id, pixel_values=pixels)
        expect = finalize(stats, weights, 3)
        for name in expect:
            np.testing.assert_allclose(merged[name], expect[name].numpy(), rtol=1e-4,
                                       atol=1e-6 * float(expect[name].max()))

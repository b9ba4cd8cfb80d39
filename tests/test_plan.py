"""dowser.plan: every number of a tiny grid, computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dowser import plan as P

ROOT = Path(__file__).resolve().parents[1]
# blocks 2, d 8, f 16, 2 heads sharing 1 KV head (d_kv 4), vocab 10
SHAPE = dict(blocks=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10, vision_params=100,
             projector_params=20, vision_tokens=5, image_tokens=4)
PER_BLOCK = 2 * 8 * 8 + 2 * 8 * 4 + 3 * 8 * 16  # q, o + k, v + gate, up, down = 576
N = 2 * PER_BLOCK  # 1152 scored weights
TOTAL = N + 10 * 8 + 10 * 8 + 100 + 20  # + embedding, lm_head, vision, projector = 1432
FLOPS_PER_HOUR = 989e12 * 0.5 * 3600  # h100-80gb at utilisation 0.5


def tiny_config(tmp_path) -> dict:
    overlay = {
        "model": {"source": "hub", "name": "someone/tiny", "dtype": "bfloat16", "shape": SHAPE},
        "data": {"root": "data"},
        "probe": {"n": 2, "seed_len": 1, "new_tokens": 3},
        "score": {"draws": 2, "shards": 2},
        "mask": {"rho": [0.5]},
        "finetune": {"methods": ["full", "dowser", "random"], "random_seeds": [0, 1], "depths": [1, 2],
                     "tasks": ["coco-caption"], "train": {"train_samples": 10, "epochs": 2, "batch_size": 2}},
        "evaluate": {"upstream": ["okvqa"], "downstream": ["coco-caption"], "limit": 3, "max_new_tokens": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return P.load_config([str(path)], str(ROOT / "config.yaml"))


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    rows = [{"model": "small", "scored_params": 10, "overhead_vs_bare": 9.0},
            {"model": "big", "scored_params": 1000, "overhead_vs_bare": 1.5}]
    (folder / "score_overhead.json").write_text(json.dumps({"results": rows}))
    return folder


def test_shape_counts():
    sh = P.Shape(**SHAPE)
    assert (sh.d_kv, sh.per_block, sh.total) == (4, PER_BLOCK, TOTAL)
    assert P.Shape(**SHAPE, params_b=2.5).total == 2_500_000_000


def test_tiny_grid_by_hand(tmp_path, results):
    p = P.plan(tiny_config(tmp_path), gpu="h100-80gb", mfu=0.5, text_tokens=4, results=results)
    jobs = {rule: j["jobs"] for rule, j in p["jobs"].items()}
    # masks: dowser 1 + random 2 seeds; runs: (full, dowser, random x2) x 2 depths; evals: runs + base
    assert jobs == {"model": 1, "probe": 1, "score_shard": 2, "merge_scores": 1, "mask": 3, "finetune": 8,
                    "evaluate": 9, "report": 1}
    # training sequence: 4 image + 4 text tokens; attention A = 2 s d = 128 per block and token
    forward = 8 * (2 * (N + 80) + 128 * 2) + (2 * 100 * 5 + 2 * 20 * 4)  # 22920
    backward = {1: 8 * (2 * 80 + 4 * PER_BLOCK + 2 * 128), 2: 8 * (2 * 80 + 4 * 2 * PER_BLOCK + 2 * 128 * 2)}
    samples = 10 * 2
    for depth in (1, 2):
        assert P.train_flops(P.Shape(**SHAPE), depth, 8) == forward + backward[depth]
        assert p["depths"][depth]["gpu_hours"] == pytest.approx(samples * (forward + backward[depth]) / FLOPS_PER_HOUR)
    ft = 4 * samples * (2 * forward + backward[1] + backward[2])  # 4 trained runs per depth
    assert p["jobs"]["finetune"]["gpu_hours"] == pytest.approx(ft / FLOPS_PER_HOUR)
    # scoring: probe of 1 + 3 tokens, text only; 1 forward + R=2 input-gradient backwards, x 1.5
    # (score_overhead.json's largest model), 2 probes over 2 shards
    probe_fwd = 4 * (2 * (N + 80) + 64 * 2)
    probe_bwd = 4 * (2 * (N + 80) + 2 * 64 * 2)
    assert p["measured"]["score_ratio"] == 1.5
    assert p["jobs"]["score_shard"]["gpu_hours"] == pytest.approx(2 * (probe_fwd + 2 * probe_bwd) * 1.5 / 2 / FLOPS_PER_HOUR)
    # fine-tune memory at L = 2, micro-batch 2 x 8 tokens, bf16 weights
    weights = 2 * TOTAL
    acts = 2 * 8 * 2 * (6 * 8 + 2 * 4 + 4 * 16) * 2 + 2 * 8 * 10 * 10  # blocks + logits
    row = p["depths"][2]
    # dense: bf16 -> fp32 masters in place (+2 B) + fp32 gradient + two fp32 moments
    assert row["dense"] == {"weights": weights, "state": 14 * N, "activations": acts, "total": weights + 14 * N + acts}
    assert row["masked@0.5"]["state"] == 24 * round(0.5 * N)
    assert p["jobs"]["finetune"]["peak_memory"] == weights + 14 * N + acts
    # gradient checkpointing: block inputs (2 B x d per token and block) + one block's full set
    ckpt = P.plan(tiny_config(tmp_path), gpu="h100-80gb", mfu=0.5, text_tokens=4, results=results, checkpointing=True)
    assert ckpt["depths"][2]["dense"]["activations"] == 2 * 8 * (2 * 8 * 2 + 2 * (6 * 8 + 2 * 4 + 4 * 16)) + 2 * 8 * 10 * 10
    recompute = 8 * 2 * (2 * PER_BLOCK + 128)  # one more forward of the 2 trained blocks
    assert ckpt["depths"][2]["gpu_hours"] == pytest.approx(samples * (forward + backward[2] + recompute) / FLOPS_PER_HOUR)
    art = p["artifacts"]
    assert art["score shard (outer, fp32)"] == (2, 4 * N)
    assert art["merged scores (fp32)"] == (1, 4 * N)
    assert art["mask (1 bit per scored weight)"] == (3, N // 8)
    # deltas (count, total bytes): masked 12 B per trainable entry, dense bf16 weights
    assert art["delta, masked (int64 index + fp32 value)"] == (6, 3 * 12 * (288 + 576))
    assert art["delta, dense (fp32 weights, as trained)"] == (2, 4 * (576 + 1152))
    # 3 items x 2 benchmarks per evaluation, 100 + 8 x max_new_tokens bytes per item
    assert art["evaluation (predictions.jsonl)"] == (9, 3 * 2 * (100 + 8 * 2))
    # each mask is read by both depths' runs
    assert sorted(p["mask_uses"].values()) == [2, 2, 2]


def test_official_scoring_runs_a_forward_per_draw(tmp_path, results):
    config = tiny_config(tmp_path)
    config["score"]["preset"] = "official"
    sh = P.Shape(**SHAPE)
    assert P.score_flops(sh, 4, 2, 1.5, shared_forward=False) == 2 * (4 * (2 * (N + 80) + 64 * 2) + 4 * (2 * (N + 80) + 2 * 64 * 2))


def test_markdown_and_section_rewrite(tmp_path, results):
    p = P.plan(tiny_config(tmp_path), gpu="h100-80gb", mfu=0.5, text_tokens=4, results=results)
    body = P.markdown(p, "dowser plan --configfile tiny.yaml")
    assert "| finetune | 8 |" in body and "| mask (1 bit per scored weight) | 3 | 144 B | 432 B |" in body
    assert "Reuse: 3 masks serve 8 runs; each mask is built once and read by 2 runs" in body
    doc = tmp_path / "cluster.md"
    doc.write_text("# Intro\n\ntext\n")
    P.write_section(doc, "first\n")
    P.write_section(doc, "second\n")
    P.write_section(doc, "other\n", section="paper")
    text = doc.read_text()
    assert text.startswith("# Intro\n\ntext\n") and "first" not in text
    assert text.count("second\n") == 1 and text.index("second") < text.index("other")


def test_errors_are_one_line(tmp_path, results, capsys):
    config = tiny_config(tmp_path)
    config["model"]["shape"] = {"blocks": 2, "hiden": 8}
    with pytest.raises(ValueError, match=r"^model.shape.hiden: unknown key"):
        P.plan(config, results=results)
    config["model"]["shape"] = {"blocks": 2}
    with pytest.raises(ValueError, match=r"^model.shape: no shape known for model 'someone/tiny'; give model.shape "
                                         r"with at least hidden, intermediate, heads, vocab$"):
        P.plan(config, results=results)
    assert P.main(["--configfile", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err == f"dowser plan: error: config file not found: {tmp_path / 'missing.yaml'}\n"
    with pytest.raises(FileNotFoundError, match="no scoring measurement"):
        P.plan(tiny_config(tmp_path), results=tmp_path)


def test_known_shape_matches_transformers():
    """KNOWN_SHAPES' LLaVA-1.5-7B counts = the parameters transformers builds from its config."""
    import torch
    import transformers as T

    sh = P.KNOWN_SHAPES["llava-hf/llava-1.5-7b-hf"]
    cfg = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                         num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768),
        text_config=T.LlamaConfig(hidden_size=sh.hidden, intermediate_size=sh.intermediate, num_hidden_layers=sh.blocks,
                                  num_attention_heads=sh.heads, vocab_size=sh.vocab),
        image_token_index=32000,
    )
    with torch.device("meta"):
        model = T.LlavaForConditionalGeneration(cfg)
    count = lambda part: sum(p.numel() for n, p in model.named_parameters() if part in n)  # noqa: E731
    assert count("vision_tower") == sh.vision_params and count("multi_modal_projector") == sh.projector_params
    from dowser.models import scored_modules

    assert sum(a * b for a, b in (m.shape for m in scored_modules(model))) == sh.blocks * sh.per_block
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n and "language_model" in n)
    assert sum(p.numel() for p in model.parameters()) == sh.total + norms  # norms: 0.004% left out
    assert (336 // 14) ** 2 == sh.image_tokens == sh.vision_tokens - 1


def test_cli_plan_writes_the_docs_section(tmp_path, results, capsys):
    from dowser.cli import main

    tiny_config(tmp_path)  # writes tiny.yaml
    doc = tmp_path / "cluster.md"
    doc.write_text("# On a cluster\n")
    args = ["plan", "--configfile", str(tmp_path / "tiny.yaml"), "--defaults", str(ROOT / "config.yaml"),
            "--results", str(results), "--gpu", "h100-80gb", "--mfu", "0.5", "--text-tokens", "4", "--write", str(doc)]
    assert main(args) == 0
    out = capsys.readouterr().out
    text = doc.read_text()
    assert out in text and text.startswith("# On a cluster\n")
    assert f"Generated by `dowser plan --configfile {tmp_path / 'tiny.yaml'} --gpu h100-80gb`." in out
    assert main(args[:-2] + ["--gradient-checkpointing"]) == 0
    assert "--gpu h100-80gb --gradient-checkpointing`." in capsys.readouterr().out
    assert main(args) == 0 and doc.read_text() == text  # rewriting the section is idempotent


@pytest.mark.parametrize("section, extra", [
    ("grid", []),
    ("paper", ["--depths", "4", "8", "12", "16", "20", "24", "28", "32",
               "--tasks", "coco-caption", "imagenet-r", "flickr30k", "iconqa"]),
])
def test_docs_tables_are_current(monkeypatch, capsys, section, extra):
    """docs/cluster.md's generated sections are what `dowser plan` prints for the shipped config today."""
    monkeypatch.chdir(ROOT)
    assert P.main(["--configfile", "configs/llava-1.5-7b.yaml", *extra]) == 0
    printed = capsys.readouterr().out
    text = (ROOT / "docs" / "cluster.md").read_text()
    begin, end = P.BEGIN.format(section=section), P.END.format(section=section)
    assert text.split(begin, 1)[1].split(end, 1)[0] == "\n" + printed, (
        f"docs/cluster.md is stale: run dowser plan --configfile configs/llava-1.5-7b.yaml {' '.join(extra)} "
        f"--write docs/cluster.md --section {section}")


def test_every_gpu_job_of_the_7b_config_fits_its_gpus_at_90_percent_of_80_gb(capsys):
    """From benchmarks/results/memory_7b.json (peaks measured at LLaVA-1.5-7B's shapes): probe, scoring,
    evaluation and every fine-tune run of configs/llava-1.5-7b.yaml fit the GPUs resources.smk requests
    (finetune_fit) at <= 90% of 80 GiB; the same for a 40 GB card is reported."""
    cfg = P.load_config([str(ROOT / "configs" / "llava-1.5-7b.yaml")], str(ROOT / "config.yaml"))
    results = ROOT / "benchmarks" / "results"
    doc = json.loads((results / "memory_7b.json").read_text())["current"]
    fit = P.memory_fit(cfg, results, 80)
    runs = [f"finetune ({m}, L=20)" for m in cfg["finetune"]["methods"]]
    assert set(fit) == {"probe", "score_shard", "evaluate (generate)", "evaluate (label scoring)", *runs}
    budget = 0.9 * 80 * 2**30
    for rule, row in fit.items():
        assert row["fits"] and 0 < row["peak"] <= budget, (rule, row)
    assert fit["score_shard"]["peak"] == doc["score"]["peak"]
    for method in cfg["finetune"]["methods"]:
        row = fit[f"finetune ({method}, L=20)"]
        key = f"{method}/L20/micro16/{'checkpointing' if row['gradient_checkpointing'] else 'no-checkpointing'}/{row['gpus']}"
        assert row["peak"] == doc["finetune"][key]["peak"]
        # the cheaper choices do not fit: fewer GPUs, or the same count without checkpointing
        cheaper = [f"{method}/L20/micro16/{gc}/{n}" for n in (1, 2, 4, 8) if n < row["gpus"]
                   for gc in ("no-checkpointing", "checkpointing")]
        if row["gradient_checkpointing"]:
            cheaper.append(f"{method}/L20/micro16/no-checkpointing/{row['gpus']}")
        assert all(doc["finetune"][k]["peak"] > budget for k in cheaper if k in doc["finetune"])
    small = P.memory_fit(cfg, results, 40)
    with capsys.disabled():
        print("\n40 GB card:", {k: (v["gpus"], v["gradient_checkpointing"], round((v["peak"] or 0) / 2**30, 1), v["fits"])
                                for k, v in small.items()})
    assert not small["score_shard"]["fits"]  # 26 GB of fp32 score sums + 14 GB of weights


def test_finetune_fit_refuses_an_unmeasured_micro_batch_in_one_line(tmp_path):
    cfg = P.load_config([str(ROOT / "configs" / "llava-1.5-7b.yaml")], str(ROOT / "config.yaml"))
    cfg["finetune"]["train"]["batch_size"] = 3
    with pytest.raises(ValueError, match=r"^finetune: no memory measurement covers micro-batch 3 at L=20 "):
        P.finetune_fit(cfg, ROOT / "benchmarks" / "results", 80)


def test_evaluate_row_is_evaltime_model(tmp_path, results):
    """Evaluation GPU-hours: dowser.evaltime per benchmark (okvqa at max_new_tokens 2, coco-caption its own 64),
    `evaluate.limit` items each; 'before' adds the dynamic cache's copies (neither has a label task)."""
    from dowser import evaltime as E

    config = tiny_config(tmp_path)
    p = P.plan(config, gpu="h100-80gb", mfu=0.5, text_tokens=4, results=results)
    sh = P.Shape(**SHAPE)
    secs = [E.eval_seconds(sh, 3, new, "h100-80gb", 0.5, **kw)["total"] for new in (2, 64)
            for kw in ({}, {"static_cache": False})]
    ev = p["jobs"]["evaluate"]
    assert ev["items_per_job"] == 6 and ev["jobs"] == 9
    assert ev["gpu_hours"] == pytest.approx(9 * (secs[0] + secs[2]) / 3600)
    assert ev["hours_before"] == pytest.approx((secs[1] + secs[3]) / 3600)
    assert ev["runtime_min"] == E.eval_job_minutes(config, ["okvqa", "coco-caption"], 3, "h100-80gb", 0.5)
    assert "| evaluate | 9 |" in P.markdown(p, "dowser plan") and "6 items: ≤ 3 per benchmark" in P.markdown(p, "x")

"""dowser.findings: each claim's verdict from synthetic tables, and the generated page."""

import pandas as pd
import pytest

from dowser.findings import (claim_continual, claim_deep, claim_depth, claim_random, claim_stability, continual_tables, depth_table,
                             md_table, nll_table, write_results_md)
from tests.test_report import frame, row


def rho_grid(dowser_up, random_up=(50.0, 51.0, 49.0), rhos=(0.1, 0.5, 0.9)):
    """Dowser (3 probe seeds, +-1 around dowser_up[rho]) and Random (3 seeds) at every rho."""
    rows = [row("full", 10.0, 200.0)]
    for rho in rhos:
        rows += [row("dowser", dowser_up[rho] + d, 150.0, rho=rho, seed=s) for s, d in enumerate((-1.0, 0.0, 1.0))]
        rows += [row("random", u, 150.0, rho=rho, seed=s) for s, u in enumerate(random_up)]
    return frame(rows)


def test_claim_random_verdicts():
    grows = rho_grid({0.1: 60.0, 0.5: 70.0, 0.9: 80.0})
    assert claim_random(grows).verdict == "reproduced"
    v = claim_random(rho_grid({0.1: 80.0, 0.5: 70.0, 0.9: 60.0}))  # significant but shrinking gap
    assert v.verdict == "mixed" and "in 3 of 3 cells" in v.evidence and "in 0 of 1" in v.evidence
    v = claim_random(rho_grid({0.1: 30.0, 0.5: 20.0, 0.9: 10.0}))  # Random ahead everywhere
    assert v.verdict == "not reproduced" and "Random ahead in 3" in v.evidence
    v = claim_random(rho_grid({0.1: 20.0, 0.5: 50.5, 0.9: 49.0}))  # gap grows, nothing significant
    assert v.verdict == "not reproduced" and "in 0 of 3 cells" in v.evidence
    part = rho_grid({0.1: 48.0, 0.5: 49.0, 0.9: 80.0})  # significant in 1 of 3 cells
    assert claim_random(part).verdict == "mixed"
    one = rho_grid({0.5: 70.0}, rhos=(0.5,))
    assert claim_random(one).verdict == "mixed" and "growth not measured" in claim_random(one).evidence
    assert claim_random(frame([row("full", 1.0, 2.0)])).verdict == "not yet measured"


def test_claim_depth_verdicts():
    falls = frame([row("full", up, 200.0, L=L) for L, up in ((1, 60.0), (2, 30.0), (6, 5.0))])
    assert claim_depth(falls).verdict == "reproduced"
    rises = frame([row("full", up, 200.0, L=L) for L, up in ((1, 5.0), (6, 30.0))])
    assert claim_depth(rises).verdict == "not reproduced"
    both = pd.concat([falls, frame([row("full", up, 200.0, L=L, task="t2") for L, up in ((1, 5.0), (6, 30.0))])])
    assert claim_depth(both).verdict == "mixed"
    assert claim_depth(frame([row("full", 5.0, 200.0)])).verdict == "not yet measured"
    floor = frame([row("full", up, 200.0, L=L) for L, up in ((1, 0.5), (6, 0.0))])  # nothing left to lose
    v = claim_depth(floor)
    assert v.verdict == "not yet measured" and "at the floor" in v.evidence
    v = claim_depth(pd.concat([falls, frame([dict(r, lr=0.1) for r in floor.to_dict("records")])]))
    assert v.verdict == "reproduced" and "falls in 1 of 1" in v.evidence and "at the floor" in v.evidence


def nll_rows(points, lr=0.01, seeds=(0,)):
    """upstream_loss.parquet rows: Full-FT runs at (L, nll) on two benchmarks (nll -+ 0.5), and the base model."""
    rows = [{"run": "base", "method": "zero-shot", "benchmark": b, "nll": 1.0, "tokens": 10} for b in ("a", "b")]
    for L, nll in points:
        for s in seeds:
            rows += [{"run": f"r{lr}-{L}-{s}", "method": "full", "task": "world-coco", "L": L, "rho": None, "seed": s,
                      "lr": lr, "epochs": 6, "benchmark": b, "nll": nll + d + s, "tokens": 10}
                     for b, d in (("a", -0.5), ("b", 0.5))]
    return pd.DataFrame(rows)


def test_upstream_nll_by_depth_is_evidence_beside_the_accuracy_rule():
    nll = pd.concat([nll_rows([(1, 2.0), (2, 3.0), (6, 8.0)], seeds=(0, 1)), nll_rows([(2, 5.0), (6, 4.0)], lr=0.1)])
    table = nll_table(nll)
    # mean over the benchmarks, then over the seeds (0 and 1: +0 and +1)
    assert table[table.lr == 0.01].upstream_nll.tolist() == [2.5, 3.5, 8.5]
    assert table.seeds.tolist() == [2, 2, 2, 1, 1]
    floor = frame([row("full", up, 200.0, L=L) for L, up in ((1, 0.5), (6, 0.0))])
    v = claim_depth(floor, nll)
    assert v.verdict == "not yet measured"  # the verdict stays the accuracy rule's
    assert "rises with L in 1 of 2 Full-FT sweeps" in v.evidence and "2.50 (L=1) → 8.50 (L=6)" in v.evidence
    assert "base model 1.00" in v.evidence
    assert claim_depth(floor).evidence == v.evidence.split(". Upstream NLL")[0]


def test_claim_deep_verdicts():
    rows = [row("full", 5.0, 200.0, L=6), row("dowser", 60.0, 150.0, rho=0.1, seed=0, L=6),
            row("dowser", 2.0, 150.0, rho=0.5, seed=0, L=6)]
    v = claim_deep(frame(rows))
    assert v.verdict == "mixed" and "dare, tailor, grafting not in the measured grid" in v.evidence
    rows[2] = row("dowser", 40.0, 150.0, rho=0.5, seed=0, L=6)
    rows.append(row("dare", 50.0, 190.0, rho=0.1, L=6))
    assert claim_deep(frame(rows)).verdict == "reproduced"
    rows.append(row("tailor", 99.0, 190.0, rho=0.1, L=6))
    assert claim_deep(frame(rows)).verdict == "mixed"
    shallow = [dict(r, L=2) for r in rows]
    assert claim_deep(frame(shallow)).verdict == "not yet measured"


def test_claim_stability_and_continual():
    stab = pd.DataFrame({"N": [4, 64], "R": [2, 8], "hamming_mean": [0.09, 0.05], "random_hamming_mean": [0.18, 0.226],
                         "spearman_mean": [0.90, 0.89]})
    assert claim_stability(stab).verdict == "mixed"  # 0.09 / 0.18 = 0.5 > 0.064 / 0.226
    assert claim_stability(stab.iloc[1:]).verdict == "reproduced"
    assert claim_stability(None).verdict == "not yet measured"
    cl = pd.DataFrame({"method": ["full", "lora", "dowser"], "BWT": [-15.6, -7.8, -2.5]})
    assert claim_continual(cl).verdict == "reproduced"
    cl.loc[2, "BWT"] = -20.0
    assert claim_continual(cl).verdict == "not reproduced"
    # less forgetting with far less learning (MFT under half of Full-FT's) is only mixed
    cl = pd.DataFrame({"method": ["full", "dowser"], "BWT": [-200.0, -12.0], "MFT": [170.0, 17.0]})
    v = claim_continual(cl)
    assert v.verdict == "mixed" and "MFT: Dowser 17.0, full 170.0" in v.evidence
    cl.loc[1, "MFT"] = 120.0
    assert claim_continual(cl).verdict == "reproduced"
    assert claim_continual(None).verdict == "not yet measured"


def test_results_page(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    rho_grid({0.1: 60.0, 0.5: 70.0, 0.9: 80.0}).to_parquet(res / "summary.parquet")
    text = write_results_md(res, tmp_path / "results.md")
    assert (tmp_path / "results.md").read_text() == text
    assert "| 2. Dowser beats Random at the same ρ (p < 0.05), with a gap growing with ρ | reproduced |" in text
    assert "| 5. Dowser forgets less in continual learning (BWT) | not yet measured |" in text
    assert "![h_vs_rho](results/h_vs_rho.png)" in text and (res / "h_vs_rho.png").is_file()
    assert "h_vs_depth" not in text and "None" not in text


def test_md_table():
    assert md_table(pd.DataFrame({"a": [1.0, float("nan")], "b": ["x", "y"]})) == "| a | b |\n|---|---|\n| 1 | x |\n|  | y |\n"


def test_continual_judged_per_setting_and_depth_table(tmp_path):
    one = pd.DataFrame({"method": ["full", "dowser"], "BWT": [-200.0, -12.0], "MFT": [170.0, 17.0]})
    three = pd.DataFrame({"method": ["full", "dowser"], "BWT": [-238.0, -151.0], "MFT": [192.0, 132.0]})
    both = pd.concat([one.assign(table="continual_metrics"), three.assign(table="continual_ep3_metrics")])
    v = claim_continual(both)  # learned far less with 1 epoch/step (mixed), reproduced with 3
    assert v.verdict == "mixed" and "continual_ep3_metrics: reproduced" in v.evidence
    assert claim_continual(three.assign(table="a")).verdict == "reproduced"
    res = tmp_path / "results"
    res.mkdir()
    one.to_parquet(res / "continual_metrics.parquet")
    three.to_parquet(res / "continual_ep3_metrics.parquet")
    assert continual_tables(res).table.tolist() == ["continual_ep3_metrics"] * 2 + ["continual_metrics"] * 2
    summary = frame([row("full", up, 200.0, L=L) for L, up in ((1, 60.0), (2, 30.0), (6, 5.0))]
                    + [row("dowser", 40.0 + s, 150.0, rho=0.1, seed=s, L=6) for s in (0, 1)])
    depth = depth_table(summary)
    assert depth[depth.method == "full"].L.tolist() == [1, 2, 6]
    assert depth[depth.method == "dowser"][["A_up", "seeds"]].values.tolist() == [[40.5, 2]]
    pd.concat([summary, frame([row("zero-shot", 98.75, 4.0, L=0)])]).to_parquet(res / "summary.parquet")
    wide = pd.concat([summary, frame([row("zero-shot", 91.5, 3.0, L=0)])])
    wide.to_parquet((res / "wide").mkdir() or res / "wide" / "summary.parquet")
    text = write_results_md(res, tmp_path / "results.md")
    assert "## Depth (claim 1)" in text and "## Capacity: the wide world" in text
    # the two base models side by side
    assert "| default | world-coco | 98.75 | 4 |" in text and "| wide | world-coco | 91.5 | 3 |" in text
    assert "| 5. Dowser forgets less in continual learning (BWT) | mixed |" in text


def test_results_page_with_the_near_world(tmp_path):
    """With near/summary.parquet the claims get a verdict per world and the near world its own
    section: targets (from the base and Full-FT only), both bases, its tables and plots."""
    res = tmp_path / "results"
    (res / "near").mkdir(parents=True)
    pd.concat([rho_grid({0.1: 60.0, 0.5: 70.0, 0.9: 80.0}), frame([row("zero-shot", 98.0, 4.0, L=0)])]).to_parquet(
        res / "summary.parquet")
    near = rho_grid({0.1: 30.0, 0.5: 20.0, 0.9: 10.0})  # Random ahead everywhere in the near world
    near["update_norm_ratio"] = 0.04
    pd.concat([near, frame([row("zero-shot", 97.0, 60.0, L=0)])]).to_parquet(res / "near" / "summary.parquet")
    pd.DataFrame([{"ratio": 1.25, "s_per_step": 0.5, "default_s_per_step": 0.4, "estimate_min": 25.0, "default_estimate_min": 20.0}]).to_parquet(
        res / "near" / "pretrain_cost.parquet")
    text = write_results_md(res, tmp_path / "results.md")
    claim2 = next(line for line in text.splitlines() if line.startswith("| 2. Dowser beats Random"))
    assert claim2.split(" | ")[1:3] == ["reproduced", "not reproduced"]
    assert "## The near world" in text and "### Dowser vs Random (paper Table 4 layout)" in text
    # zero-shot 60 of Full-FT's 200: 0.3, met; Full-FT's A_up 10 at L=2 (its deepest): loses 87 points
    assert "| 1. zero-shot A_down / Full-FT's best, world-coco | 0.3 | base 60.0 / Full-FT best 200.0 | 0.15-0.4 | True |" in text
    assert "| 4. pretraining cost / the default world's | 1.25 |" in text and "4 of 4 met" in text
    assert "| near | world-coco | 97 | 60 |" in text and "## Every run (near world)" in text
    assert "![near h_vs_rho](results/near/h_vs_rho.png)" in text and (res / "near" / "h_vs_rho.png").is_file()


def test_results_page_explains_each_world_when_its_anatomy_table_exists(tmp_path):
    """anatomy.parquet (experiments/anatomy.py) beside a world's summary adds its "Why Dowser wins or
    loses here" section (dowser.anatomy.anatomy_section), one heading level down for the wide world."""
    from tests.test_anatomy import synthetic_table

    res = tmp_path / "results"
    (res / "wide").mkdir(parents=True)
    summary = rho_grid({0.1: 60.0, 0.5: 70.0, 0.9: 80.0})
    summary["run"] = [f"x{i}" for i in range(len(summary))]
    summary.to_parquet(res / "summary.parquet")
    assert "Why Dowser" not in write_results_md(res, tmp_path / "results.md")
    synthetic_table().to_parquet(res / "anatomy.parquet")
    summary.to_parquet(res / "wide" / "summary.parquet")
    synthetic_table().to_parquet(res / "wide" / "anatomy.parquet")
    text = write_results_md(res, tmp_path / "results.md")
    assert text.index("## Dowser vs Random") < text.index("\n## Why Dowser wins or loses here\n") < text.index("## Plots")
    assert "\n### world-coco, L = 2, ρ = 0.1, lr 0.01 × 6\n" in text
    wide = text[text.index("## Capacity: the wide world"):]
    assert "\n### Why Dowser wins or loses here\n" in wide and "\n#### world-coco, L = 2" in wide
    assert "takes back ≥ 50% of the rise: Dowser down_proj 80%" in wide

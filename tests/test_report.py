"""dowser.report on synthetic tables: tests per cell, relative H, matched A_down, recipe rule,
plots only where there is a line to draw, update norm ratio against a brute-force sum."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from dowser.metrics import h_score
from dowser.report import (_display, _plots, add_relative, choose_recipe, layout_table, matched_table, paired_table,
                           update_norm_ratio, write_report)


def row(method, A_up, A_down, rho=None, seed=None, L=2, lr=0.01, epochs=3, task="world-coco"):
    return {"method": method, "task": task, "L": L, "rho": rho, "seed": seed, "lr": lr, "epochs": epochs,
            "A_up": A_up, "A_down": A_down, "Avg": (A_up + A_down) / 2, "H": h_score(A_up, A_down)}


def frame(rows):
    df = pd.DataFrame(rows)
    df["rho"] = pd.to_numeric(df.rho)
    df["seed"] = pd.to_numeric(df.seed).astype("Int64")
    df["epochs"] = df.epochs.astype("Int64")
    return add_relative(df)


@pytest.fixture
def cell():
    rows = [row("full", 10.0, 200.0)]
    rows += [row("dowser", up, 150.0, rho=0.5, seed=s) for s, up in enumerate((60.0, 62.0, 65.0))]
    rows += [row("random", up, 140.0, rho=0.5, seed=s) for s, up in enumerate((50.0, 55.0, 51.0))]
    rows += [row("dowser", 30.0, 150.0, rho=0.1, seed=0)]
    rows += [row("random", up, 140.0, rho=0.1, seed=s) for s, up in enumerate((50.0, 55.0, 51.0))]
    rows += [row("dowser-top", 5.0, 160.0, rho=0.5, seed=0)]
    return frame(rows)


def test_paired_table_numbers(cell):
    p = paired_table(cell, ("H",)).set_index("rho")
    d = [h_score(u, 150.0) for u in (60.0, 62.0, 65.0)]
    r = [h_score(u, 140.0) for u in (50.0, 55.0, 51.0)]
    ref = sp.ttest_ind(d, r, equal_var=False, alternative="greater")
    assert p.loc[0.5, "t_welch"] == pytest.approx(ref.statistic) and p.loc[0.5, "p_welch"] == pytest.approx(ref.pvalue)
    one = sp.ttest_1samp(r, np.mean(d), alternative="less")
    assert p.loc[0.5, "p_one_sided"] == pytest.approx(one.pvalue)
    assert p.loc[0.5, "gap"] == pytest.approx(np.mean(d) - np.mean(r))
    assert (p.loc[0.5, "dowser_seeds"], p.loc[0.5, "random_seeds"]) == (3, 3)
    # one Dowser seed at rho 0.1: Welch undefined and says why; the one-sample form still runs
    assert np.isnan(p.loc[0.1, "p_welch"]) and p.loc[0.1, "p_welch_text"] == "n/a (1 Dowser seed)"
    assert 0 < p.loc[0.1, "p_one_sided"] < 1 and "None" not in p.to_string()


def test_layout_has_controls_and_full(cell):
    lay = layout_table(cell).set_index("rho")
    assert lay.loc[0.5, "Dowser"] == f"{np.mean([h_score(u, 150.0) for u in (60.0, 62.0, 65.0)]):.1f} ± " \
        f"{np.std([h_score(u, 150.0) for u in (60.0, 62.0, 65.0)], ddof=1):.1f}"
    assert lay.loc[0.5, "dowser-top"] == f"{h_score(5.0, 160.0):.1f}"
    assert lay.loc[0.1, "Full-FT"] == f"{h_score(10.0, 200.0):.1f}"
    assert "None" not in lay.to_string()


def test_relative_h_by_hand(cell):
    d = cell[(cell.method == "dowser") & (cell.rho == 0.5)].iloc[0]
    assert d.A_down_rel == pytest.approx(75.0)  # 150 of Full-FT's 200
    assert d.H_rel == pytest.approx(2 * 60.0 * 75.0 / 135.0)
    assert cell[cell.method == "full"].A_down_rel.iloc[0] == 100.0
    other = frame([row("dowser", 50.0, 10.0, rho=0.1, seed=0, lr=0.5)])
    assert np.isnan(other.H_rel.iloc[0])  # no Full-FT at that recipe


def test_matched_a_down_by_hand():
    rows = [row("full", 80.0, 100.0, lr=1e-3), row("full", 20.0, 200.0, lr=1e-2),
            row("dowser", 90.0, 50.0, rho=0.1, seed=0, lr=1e-3), row("dowser", 60.0, 150.0, rho=0.1, seed=0, lr=1e-2),
            row("random", 70.0, 10.0, rho=0.1, seed=0, lr=1e-3)]  # one recipe: no curve
    m = matched_table(frame(rows)).set_index("method")
    assert set(m.index) == {"full", "dowser"}
    assert (m.A_down_matched == 150.0).all()  # the largest A_down both curves reach
    assert m.loc["full", "A_up"] == pytest.approx(50.0)  # halfway from (100, 80) to (200, 20)
    assert m.loc["dowser", "A_up"] == pytest.approx(60.0)
    assert m.loc["dowser", "H"] == pytest.approx(h_score(60.0, 150.0))


def test_recipe_rule_reads_full_ft_only():
    rows = [row("full", 70.0, 50.0, lr=1e-3), row("full", 30.0, 95.0, lr=3e-3), row("full", 5.0, 100.0, lr=1e-2),
            row("full", 20.0, 92.0, lr=1e-3, epochs=6),
            row("dowser", 90.0, 300.0, rho=0.1, seed=0, lr=1e-4)]  # a masked method's result cannot move it
    recipe, table = choose_recipe(frame(rows), 0.9)
    assert recipe == {"lr": 1e-3, "epochs": 6}  # 92 >= 0.9 * 100 at the smallest lr, then fewest epochs
    assert table.threshold.iloc[0] == pytest.approx(90.0)
    rows.append(row("full", 50.0, 100.0, lr=1e-3, task="world-imagenet-r"))
    rows.append(row("full", 40.0, 60.0, lr=1e-2, task="world-imagenet-r"))
    recipe, _ = choose_recipe(frame(rows), 0.9)
    assert recipe == {"lr": 1e-3, "epochs": 6}  # the largest of the per-task choices (1e-3x3 vs 1e-3x6)


def test_plots_skip_single_values(tmp_path, cell):
    written = _plots(cell, tmp_path)
    assert written == ["up_vs_down.png", "h_vs_rho.png"]  # one L: no depth plot
    assert not (tmp_path / "h_vs_depth.png").exists() and (tmp_path / "h_vs_rho.png").stat().st_size > 0
    one = cell[cell.rho.isna() | (cell.rho == 0.5)]
    assert _plots(one, tmp_path / "x" if (tmp_path / "x").mkdir() is None else None) == ["up_vs_down.png"]


def test_update_norm_ratio_brute_force(tmp_path):
    import torch
    from safetensors.torch import save_file

    from dowser.models import load_artifact
    from dowser.world import SHIPPED_DIR

    model, _ = load_artifact(SHIPPED_DIR, device="cpu")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n][:2]
    (n1, m1), (n2, m2) = linears
    w1, w2 = m1.weight.detach().clone(), m2.weight.detach().clone()
    index = torch.arange(0, w2.numel(), 7)
    values = torch.full((len(index),), 0.01)
    save_file({f"{n1}.weight": w1 * 1.5, f"{n2}.index": index, f"{n2}.values": values},
              str(tmp_path / "delta.safetensors"))
    expect = np.sqrt(float((0.5 * w1.double()).pow(2).sum()) + 1e-4 * len(index)) / np.sqrt(
        float(w1.double().pow(2).sum() + w2.double().pow(2).sum()))
    assert update_norm_ratio(tmp_path, SHIPPED_DIR) == pytest.approx(expect, rel=1e-6)  # float32 deltas
    (tmp_path / "run.json").write_text(json.dumps({"update_norm_ratio": 0.25}))
    assert update_norm_ratio(tmp_path, SHIPPED_DIR) == 0.25  # the fine-tune's own number wins
    assert np.isnan(update_norm_ratio(tmp_path / "missing", SHIPPED_DIR))


# --- the HTML page -------------------------------------------------------------------------------

UP, DOWN = ("world-textvqa", "world-okvqa"), "world-coco"


def write_evals(root: Path, commit: str | None) -> list[Path]:
    """eval.json + provenance.json of a base model, one Full-FT run and Dowser / Random at two rhos with
    3 seeds each (Dowser's seeds absent: the seed column has missing values, as on a real grid)."""
    runs = [("full", None, None)] + [(m, rho, s) for m in ("dowser", "random") for rho in (0.1, 0.5)
                                     for s in (0, 1, 2)]
    files = []
    for i, (method, rho, seed) in enumerate([(None, None, None)] + runs):
        run = None if method is None else {"method": method, "task": DOWN, "depth": 2, "rho": rho, "mask": None,
                                           "seed": seed if method == "random" else None,
                                           "train": {"lr": 0.01, "epochs": 6}}
        values = {b: 80.0 - 7 * i % 23 for b in UP} | {DOWN: 100.0 + 11 * i % 37}
        doc = {"eval": {"run": None if run is None else f"run{i:09d}", "model": "m" * 12}, "run": run,
               "results": {b: {"metric": "cider" if b == DOWN else "exact_match", "value": v}
                           for b, v in values.items()}}
        folder = root / "results" / "evals" / f"{i:012d}"
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps(doc))
        (folder / "provenance.json").write_text(json.dumps({"git_commit": commit}))
        files.append(folder / "eval.json")
    return files


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    configfile = root / "exp.yaml"
    configfile.write_text("mask: {rho: [0.1, 0.5]}\n")
    config = {"mask": {"rho": [0.1, 0.5], "scope": "module"}, "model": {"source": "world"}}
    evals = write_evals(root, "c0ffee" * 6 + "abcd")
    write_report(evals, root / "tables", root / "report", config, [str(configfile)])
    return root, config, configfile


def test_page_cells_missing_values_are_dashes(page):
    root, _, _ = page
    frame = pd.DataFrame({"seed": pd.array([1, None], dtype="Int64"), "p": [np.nan, 0.12345], "s": [None, "x"]})
    assert _display(frame).to_numpy().tolist() == [[1, "\u2013", "\u2013"], ["\u2013", 0.123, "x"]]
    index = (root / "report" / "index.html").read_text()
    assert "NA&gt;" not in index and "NaN" not in index and "<td>\u2013</td>" in index
    summary = pd.read_parquet(root / "tables" / "summary.parquet")
    assert summary.seed.isna().sum() == 1 + 1 + 6  # zero-shot, Full-FT, Dowser: the page's dashes


def test_page_names_config_and_commit(page):
    import hashlib

    from dowser.spec import content_id

    root, config, configfile = page
    index = (root / "report" / "index.html").read_text()
    assert f"merged config id <code>{content_id(config)}</code>" in index
    assert f"<code>{configfile}</code> (sha256 {hashlib.sha256(configfile.read_bytes()).hexdigest()[:12]})" in index
    assert f"evaluations: {'c0ffee' * 6 + 'abcd'} (14)" in index  # the evals' commit, not this checkout's
    assert json.loads((root / "report" / "config.json").read_text()) == config
    prov = json.loads((root / "report" / "provenance.json").read_text())
    assert prov["eval_commits"] == {"c0ffee" * 6 + "abcd": 14} and prov["config_id"] == content_id(config)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MEASURE = ("<script>addEventListener('load', () => { const d = document.documentElement; document.title = "
           "JSON.stringify([d.scrollWidth, d.clientWidth, document.body.innerText]); });</script>")


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
           "--window-size=1280,900", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("DOWSER_BROWSER_TESTS"),
                    reason="no chromium (apt-get install chromium; .ci/run installs it, DOWSER_BROWSER_TESTS=1)")
def test_page_in_a_browser_fits_the_window(page, tmp_path):
    """The page as chromium renders it at 1280x900: no sideways scrolling, no <NA> in its text."""
    import html as htmllib

    from PIL import Image

    assert CHROMIUM, "DOWSER_BROWSER_TESTS is set but chromium is not installed"
    report = page[0] / "report"
    measured = report / "measure.html"  # beside index.html, so its plots load as they do for a user
    measured.write_text((report / "index.html").read_text() + MEASURE)
    try:
        dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", measured.as_uri())
    finally:
        measured.unlink()
    title = re.search(r"<title>(.*?)</title>", dom.stdout, re.S)
    assert title, dom.stderr[-2000:]
    scroll, client, text = json.loads(htmllib.unescape(title.group(1)))
    assert client > 1000 and scroll <= client, (scroll, client)
    assert "Dowser vs Random (tests)" in text and "p_one_sided_text" in text and "<NA>" not in text
    assert "merged config id" in text
    shot = tmp_path / "page.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", (report / "index.html").as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (900, 1280)
    assert (pixels[:120, :400] < 100).mean() > 0.005  # the heading and provenance table are drawn


def test_method_label_names_the_authors_rule(tmp_path):
    """A Dowser run whose mask was built by mask.rule official is its own row, dowser-official;
    an exact-rule mask, a missing mask spec and other methods keep their names."""
    import json

    from dowser.report import _method_label

    for mid, rule in (("m1", "official"), ("m2", "exact")):
        (tmp_path / "masks" / mid).mkdir(parents=True)
        (tmp_path / "masks" / mid / "spec.json").write_text(json.dumps({"rule": rule}))
    assert _method_label(tmp_path, {"method": "dowser", "mask": "m1"}) == "dowser-official"
    assert _method_label(tmp_path, {"method": "dowser", "mask": "m2"}) == "dowser"
    assert _method_label(tmp_path, {"method": "dowser", "mask": "gone"}) == "dowser"
    assert _method_label(tmp_path, {"method": "random", "mask": "m1"}) == "random"
    assert _method_label(tmp_path, {}) == "zero-shot"


def test_shown_keeps_small_learning_rates():
    from dowser.report import shown

    df = shown(frame([row("full", 97.25, 107.87, lr=1e-4), row("full", 96.58, 418.973, lr=3e-4)]))
    assert df.lr.tolist() == [1e-4, 3e-4] and df.A_down.tolist() == [107.87, 418.973]

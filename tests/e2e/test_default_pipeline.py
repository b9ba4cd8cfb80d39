"""The README's first command (`snakemake --cores 2`, the default config) end to end, in a
temporary copy of the workflow. ~15 min on 2 cores (benchmarks/results/default_pipeline.json),
so marked slow: `python -m pytest -m slow tests/e2e/test_default_pipeline.py`."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflowlib import copy_workflow, run

from dowser.spec import build_grid

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def benchmark_module():
    """benchmarks/default_pipeline.py: its claims() is what this test checks the table with."""
    spec = importlib.util.spec_from_file_location("default_pipeline", ROOT / "benchmarks/default_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    work = copy_workflow(tmp_path_factory.mktemp("default"))
    run(["snakemake", "--cores", "2"], work, timeout=3600)
    return pd.read_parquet(work / "results/tables/summary.parquet")


def test_summary_has_every_run_of_the_default_grid(summary):
    grid = build_grid(yaml.safe_load((ROOT / "config.yaml").read_text()))
    assert set(grid.runs) <= set(summary.run), set(grid.runs) - set(summary.run)
    runs = summary[summary.method != "zero-shot"]
    assert len(runs) == len(grid.runs)
    assert set(summary[summary.method == "zero-shot"].task) == set(grid.runs[r].task for r in grid.runs)
    for col in ("A_up", "A_down", "H"):
        assert summary[col].notna().all() and (summary[col] >= 0).all(), col


def test_claims_cover_every_task(summary):
    claims = benchmark_module().claims(summary)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert {c["task"] for c in claims} == set(config["finetune"]["tasks"])
    for c in claims:
        assert c["L"] == max(config["finetune"]["depths"])
        for method in config["finetune"]["methods"]:
            assert f"{method}_H" in c, (method, c)
        assert c["full_up_drop"] > 0, c  # Full-FT forgets on the world (what Dowser is for)

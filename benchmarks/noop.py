"""No-op rerun cost: `snakemake -n` and `snakemake --cores 2` on a finished workflow vs
`snakemake --version` (Snakemake's own start-up: imports, plugin registry), and where our
share of the parse time goes.

    python benchmarks/noop.py [--workdir DIR] [--repeats 7]

Without --workdir it copies the workflow into a temporary folder and runs the reduced world
(tests/e2e/reduced.yaml; a few minutes) first, so that every output exists. Each command runs
`--repeats` times, alternating, and the medians are compared (interleaving keeps the ratio
fair on a busy machine). Our share is timed inside one process: the Snakefile's imports
(dowser.spec, dowser.methods.table, the world config), the config checks (first call:
jsonschema; later calls: the remembered digest) and building the grid. Writes
benchmarks/results/noop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDUCED = ROOT / "tests/e2e/reduced.yaml"
OUT = ROOT / "benchmarks/results/noop.json"


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def prepare(work: Path) -> None:
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, work / name)
    for name in ("workflow", "envs", "profiles"):
        shutil.copytree(ROOT / name, work / name, dirs_exist_ok=True)
    print(f"running the reduced world in {work} ...", flush=True)
    timed(["snakemake", "--cores", "2", "--configfile", str(REDUCED)], work)


OUR_SHARE = r"""
import json, sys, time
from snakemake.utils import update_config  # Snakemake's own, imported before any Snakefile runs
t0 = time.perf_counter()
from dowser.config import model_params_b, read_config_file, validate_config
from dowser.spec import build_grid
t_import = time.perf_counter()
config = read_config_file("config.yaml")
update_config(config, read_config_file(sys.argv[1]))
t_read = time.perf_counter()
validate_config(config, "workflow/schemas/config.schema.yaml", sys.argv[2])
t_validate = time.perf_counter()
grid = build_grid(config)
model_params_b(config)
specs = [s.to_json() for s in [*grid.masks.values(), *grid.runs.values(), *grid.evals.values()]]
t_grid = time.perf_counter()
print(json.dumps({"import_s": t_import - t0, "read_configs_s": t_read - t_import,
                  "validate_s": t_validate - t_read, "grid_s": t_grid - t_validate,
                  "total_s": t_grid - t0, "jsonschema_imported": "jsonschema" in sys.modules}))
"""


def our_share(work: Path, cache: str) -> dict:
    out = subprocess.run([sys.executable, "-c", OUR_SHARE, str(REDUCED), cache], cwd=work, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def top_imports(work: Path, n: int = 8) -> list[dict]:
    """`python -X importtime` of the Snakefile's imports: the slowest top-level packages."""
    code = "import dowser.spec, dowser.world.config, dowser.tasks, yaml"
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=work, capture_output=True,
                         text=True, check=True).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, cum_us, name = line[len("import time:"):].split("|")
        if not name.startswith("  "):  # one leading space: imported at top level, not by another module
            rows.append({"module": name.strip(), "cumulative_ms": int(cum_us) / 1000})
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:n]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="a finished workflow (all outputs of tests/e2e/reduced.yaml)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    tmp = None
    if args.workdir:
        work = Path(args.workdir).resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="dowser-noop-")
        work = Path(tmp)
        prepare(work)
    cfg = ["--configfile", str(REDUCED)]
    commands = {
        "version": ["snakemake", "--version"],
        "dry_run": ["snakemake", "-n", "--cores", "2", *cfg],
        "noop_rerun": ["snakemake", "--cores", "2", *cfg],
    }
    _, out = timed(commands["dry_run"], work)
    if "Nothing to be done" not in out:
        sys.exit(f"{work} is not finished: `snakemake -n` has jobs to run")
    times = {k: [] for k in commands}
    for _ in range(args.repeats):
        for name, cmd in commands.items():
            times[name].append(timed(cmd, work)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    cache = tempfile.mkdtemp(prefix="dowser-valid-")
    share = {"first_call": our_share(work, cache), "later_calls": our_share(work, cache)}
    result = {
        "workdir": "temporary copy, tests/e2e/reduced.yaml" if tmp else str(work),
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_dry_run_to_version": round(med["dry_run"] / med["version"], 3),
        "ratio_noop_rerun_to_version": round(med["noop_rerun"] / med["version"], 3),
        "our_share_s": {k: {n: (round(x, 4) if isinstance(x, float) else x) for n, x in v.items()}
                        for k, v in share.items()},
        "top_imports": top_imports(work),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("median_s", "ratio_dry_run_to_version",
                                             "ratio_noop_rerun_to_version", "our_share_s")}, indent=2))
    if tmp:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

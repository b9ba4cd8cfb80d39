"""Score files: streamed merge, |W| stored once, provenance and corrupt shards through the CLI."""

import h5py
import numpy as np
import pytest
import torch

from tinymodels import tiny_llama
from dowser.cli import main
from dowser.mask import build_masks, load_masks
from dowser.models import scored_modules
from dowser.score import ScoreConfig, accumulate_scores
from dowser.scorefile import load_scores, merge_shards, spec_id, write_shard
from dowser.spec import MaskSpec, ScoreSpec, StabilitySpec

PROBES = [[3, 5, 7, 9, 11, 4], [6, 8, 10, 12], [13, 14, 15, 16, 17, 18, 19], [20, 21, 3]]


def score_spec(seed=0, aggregate="outer", shards=3):
    return ScoreSpec(model="m0", probe="p0", estimator="l1", draws=2, aggregate=aggregate, output="logits",
                     shards=shards, seed=seed)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(torch.float32)


def shards(model, folder, spec: ScoreSpec, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = ScoreConfig(draws=spec.draws, seed=spec.seed, aggregate=spec.aggregate)
    paths = []
    for k in range(n):
        idx = [i for i in range(len(PROBES)) if i % n == k]
        stats = accumulate_scores(model, [PROBES[i] for i in idx], idx, cfg)
        path = folder / f"shard-{k}-of-{n}.h5"
        write_shard(path, model, stats, idx, len(PROBES), spec.to_json(), abs_w=k == 0)
        paths.append(path)
    return paths


def merge_cli(spec: ScoreSpec, paths, out, capsys):
    rc = main(["merge", "--spec", spec.to_json(), "--shards", *map(str, paths), "--out", str(out)])
    return rc, capsys.readouterr().err.strip()


@pytest.mark.parametrize("aggregate", ["outer", "factored"])
def test_streamed_merge_is_the_whole_module_merge(model, tmp_path, monkeypatch, aggregate):
    """Row blocks of 3 rows give the same bytes as one block; |W| lives in shard 0 only."""
    import dowser.scorefile as sf

    spec = score_spec(aggregate=aggregate)
    paths = shards(model, tmp_path / "s", spec)
    merge_shards(paths, tmp_path / "whole.h5", spec.to_json())
    monkeypatch.setattr(sf, "CHUNK", 3 * 16)
    merge_shards(paths, tmp_path / "blocks.h5", spec.to_json())
    whole, blocks = load_scores(tmp_path / "whole.h5", model), load_scores(tmp_path / "blocks.h5", model)
    for name in whole:
        if aggregate == "outer":
            np.testing.assert_array_equal(whole[name], blocks[name])
        else:  # a row block of A^T B may round its last bit differently from the whole product
            np.testing.assert_allclose(whole[name], blocks[name], rtol=1e-6)
    with h5py.File(paths[1]) as f:
        keys = set(f[scored_modules(model)[0].name])
    assert keys == ({"score_sum"} if aggregate == "outer" else {"a", "b"})


def test_merge_refuses_shards_of_another_spec(model, tmp_path, capsys):
    mine, other = score_spec(seed=0), score_spec(seed=1)
    paths = shards(model, tmp_path / "s", other)
    rc, err = merge_cli(mine, paths, tmp_path / "scores.h5", capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{paths[0]}: shard of score spec {other.id}, not {mine.id}" in err
    assert not (tmp_path / "scores.h5").exists()
    assert spec_id(other.to_json()) == other.id


def test_corrupt_shard_is_named_moved_aside_and_costs_no_output(model, tmp_path, capsys):
    spec = score_spec()
    paths = shards(model, tmp_path / "s", spec)
    out = tmp_path / "scores.h5"
    assert merge_cli(spec, paths, out, capsys)[0] == 0
    good = out.read_bytes()
    # a flipped value inside a dataset: the file opens, its checksum does not hold
    with h5py.File(paths[2], "r+") as f:
        f[scored_modules(model)[1].name]["score_sum"][0, 0] += 1.0
    rc, err = merge_cli(spec, paths, out, capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{paths[2]}: corrupt score shard ({scored_modules(model)[1].name}/score_sum does not match" in err
    assert err.strip().endswith(f"; rebuild and merge with `snakemake {paths[2]} {out}` (add your "
                                "--configfile/--profile)")
    assert out.read_bytes() == good  # the merged file in place was not touched
    assert not paths[2].exists() and paths[2].with_name(paths[2].name + ".corrupt").exists()
    # a truncated shard: named, moved aside too
    paths[1].write_bytes(paths[1].read_bytes()[:2000])
    rc, err = merge_cli(spec, paths[:2] + [paths[0]], tmp_path / "x.h5", capsys)
    assert rc == 2 and f"{paths[1]}: corrupt score shard (unreadable HDF5" in err
    assert not paths[1].exists() and not (tmp_path / "x.h5").exists()


def test_shard_verifier_that_write_shard_runs(model, tmp_path):
    """write_shard reads its file back through _verify_shard before it returns."""
    from dowser.scorefile import _verify_shard

    path = shards(model, tmp_path / "s", score_spec(), n=1)[0]
    assert _verify_shard(path) is None
    name = scored_modules(model)[0].name
    with h5py.File(path, "r+") as f:
        f[name]["score_sum"][1, 1] = 0.5
    assert _verify_shard(path) == f"{name}/score_sum does not match its checksum"
    assert _verify_shard(tmp_path / "none.h5").startswith("unreadable")


def test_mask_stage_checks_the_score_spec_and_stores_its_spec(model, tmp_path, capsys):
    spec = score_spec()
    out = tmp_path / "scores.h5"
    assert merge_cli(spec, shards(model, tmp_path / "s", spec), out, capsys)[0] == 0
    mask = MaskSpec(model="m0", method="dowser", rho=0.25, scope="module", score=spec.id)
    args = ["mask", "--spec", mask.to_json(), "--scores", str(out), "--out", str(tmp_path / "m" / "mask.h5")]
    assert main(args) == 0
    with h5py.File(tmp_path / "m" / "mask.h5") as f:
        assert f.attrs["spec"] == mask.to_json()
    got, ref = load_masks(tmp_path / "m" / "mask.h5"), build_masks(load_scores(out), 0.25)
    assert all(np.array_equal(got[k], ref[k]) for k in ref)
    capsys.readouterr()
    wrong = MaskSpec(model="m0", method="dowser", rho=0.25, scope="module", score="0123456789ab")
    args[2], args[-1] = wrong.to_json(), str(tmp_path / "w" / "mask.h5")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"dowser: error: {out}: scores of score spec {spec.id}, not 0123456789ab (the one this stage's spec names)"
    assert not (tmp_path / "w" / "mask.h5").exists()


def test_stability_stage_checks_both_score_specs(model, tmp_path, capsys):
    a, b = score_spec(seed=0), score_spec(seed=1)
    for s in (a, b):
        assert merge_cli(s, shards(model, tmp_path / s.id, s), tmp_path / f"{s.id}.h5", capsys)[0] == 0
    out = tmp_path / "st" / "stability.parquet"
    swapped = StabilitySpec(a=b.id, b=a.id, top=0.1)
    assert main(["stability", "--spec", swapped.to_json(), "--a", str(tmp_path / f"{a.id}.h5"),
                 "--b", str(tmp_path / f"{b.id}.h5"), "--out", str(out)]) == 2
    assert f"scores of score spec {a.id}, not {b.id}" in capsys.readouterr().err
    ok = StabilitySpec(a=a.id, b=b.id, top=0.1)
    assert main(["stability", "--spec", ok.to_json(), "--a", str(tmp_path / f"{a.id}.h5"),
                 "--b", str(tmp_path / f"{b.id}.h5"), "--out", str(out)]) == 0
    assert out.exists()


SNAKEFILE = '''
SPEC = open("spec.json").read()

rule all:
    input: "s/scores.h5"

rule score_shard:
    output: "s/shard-{k}-of-2.h5"
    shell: "python make_shard.py {wildcards.k} {output}"

rule merge_scores:
    input: expand("s/shard-{k}-of-2.h5", k=range(2))
    output: update("s/scores.h5")  # as workflow/rules/score.smk
    log: "logs/merge.log"
    params: spec=SPEC
    shell: "dowser merge --spec {params.spec:q} --shards {input} --out {output} > {log} 2>&1"
'''

MAKE_SHARD = '''
import sys, torch
sys.path.insert(0, {tests!r})
from tinymodels import tiny_llama
from dowser.score import ScoreConfig, accumulate_scores, write_shard
k, out = int(sys.argv[1]), sys.argv[2]
model = tiny_llama(torch.float32)
idx = [i for i in range(4) if i % 2 == k]
stats = accumulate_scores(model, [{probes!r}[i] for i in idx], idx, ScoreConfig(draws=2))
write_shard(out, model, stats, idx, 4, {spec!r}, abs_w=k == 0)
'''


@pytest.mark.slow  # four snakemake runs (about 30 s on a quiet machine)
def test_snakemake_rebuilds_a_corrupt_shard_and_keeps_the_scores(tmp_path):
    """Through Snakemake: a corrupt shard fails the merge, the previous scores.h5 is restored
    (update()) and kept, the shard is moved aside, and the one-line error reaches the user
    (profiles/default: show-failed-logs) with the one command that rebuilds and merges; a plain
    rerun plans nothing while scores.h5 exists."""
    import shlex
    import shutil
    import subprocess
    from pathlib import Path

    spec = score_spec(shards=2)
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "spec.json").write_text(spec.to_json())
    (tmp_path / "make_shard.py").write_text(MAKE_SHARD.format(tests=str(Path(__file__).parent), probes=PROBES,
                                                              spec=spec.to_json()))
    shutil.copytree(Path(__file__).parents[1] / "profiles", tmp_path / "profiles")  # the workflow profile

    def snakemake(*targets):
        return subprocess.run(["snakemake", *targets, "--cores", "1", "--rerun-triggers", "mtime"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)

    assert snakemake().returncode == 0
    scores, shard = tmp_path / "s" / "scores.h5", tmp_path / "s" / "shard-1-of-2.h5"
    good = scores.read_bytes()
    with h5py.File(shard, "r+") as f:  # corrupt and newer than scores.h5: the merge reruns
        f[next(iter(f.keys() - {"probe_indices"}))]["score_sum"][0, 0] += 1.0
    before = load_scores(scores)
    failed = snakemake()
    assert failed.returncode != 0
    line = next(x for x in failed.stderr.splitlines() if x.startswith("dowser: error: "))  # not only in the log
    assert line.startswith("dowser: error: s/shard-1-of-2.h5: corrupt score shard (")
    assert scores.read_bytes() == good  # restored, not deleted
    assert not shard.exists() and shard.with_name(shard.name + ".corrupt").exists()
    # The kept scores.h5 is newer than its inputs: a plain rerun plans nothing, the shard stays missing.
    assert "Nothing to be done" in snakemake().stderr and scores.read_bytes() == good and not shard.exists()
    command = shlex.split(line.split("`")[1])  # the command the message gives
    assert command == ["snakemake", "s/shard-1-of-2.h5", "s/scores.h5"]
    again = snakemake(*command[1:])
    assert again.returncode == 0 and "score_shard" in again.stderr and "merge_scores" in again.stderr
    assert shard.exists()
    after = load_scores(scores)
    assert all(np.array_equal(before[k], after[k]) for k in before)

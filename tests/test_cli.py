"""`dowser` CLI: help for every stage and option; user errors are one line, bugs keep their traceback."""

import argparse
import subprocess
import sys

import pytest

from dowser import cli


def subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices, {c.dest: c.help for c in action._choices_actions}


def test_every_subcommand_and_option_has_help():
    choices, helps = subparsers(cli.build_parser())
    assert {"data", "model", "probe", "score", "merge", "mask", "finetune", "evaluate", "stability",
            "report", "prepare-data"} <= set(choices)
    for name, sub in choices.items():
        assert helps.get(name), f"dowser {name}: no description"
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"dowser {name} {action.option_strings}: no help"


def test_help_lists_descriptions():
    out = subprocess.run([sys.executable, "-m", "dowser.cli", "--help"], capture_output=True, text=True, check=True)
    assert "fine-tune one run" in out.stdout and "synthesize the data-free probes" in out.stdout


def boom(exc):
    def fn(args):
        raise exc

    return fn


@pytest.mark.parametrize("exc", [ValueError("mask.h5: wrong shapes"), FileNotFoundError("no such file: x.h5")])
def test_user_errors_are_one_line(monkeypatch, capsys, exc):
    monkeypatch.setattr(cli, "cmd_merge", boom(exc))
    assert cli.main(["merge", "--spec", "{}", "--shards", "a.h5", "--out", "b.h5"]) == 2
    err = capsys.readouterr().err
    assert err == f"dowser: error: {exc}\n"


@pytest.mark.parametrize("exc", [KeyError("train"), TypeError("bug"), IndexError("bug")])
def test_bugs_keep_their_traceback(monkeypatch, exc):
    monkeypatch.setattr(cli, "cmd_merge", boom(exc))
    with pytest.raises(type(exc)):
        cli.main(["merge", "--spec", "{}", "--shards", "a.h5", "--out", "b.h5"])


def test_spec_that_is_not_json_is_one_line(capsys):
    assert cli.main(["data", "--spec", "{not json", "--out", "x"]) == 2
    assert capsys.readouterr().err.startswith("dowser: error: --spec: not JSON (")


def test_checkpoint_every_reaches_finetune(monkeypatch, tmp_path):
    import json

    import dowser.finetune
    from worldrun import run_spec

    seen = {}
    monkeypatch.setattr(dowser.finetune, "finetune", lambda *a, **kw: seen.update(kw) or {"steps": 0})
    spec = json.dumps(run_spec("full"))
    base = ["finetune", "--spec", spec, "--model", "m", "--data", "d", "--out", str(tmp_path)]
    assert cli.main(base + ["--checkpoint-every", "7"]) == 0
    assert seen["checkpoint_every"] == 7
    seen.clear()
    assert cli.main(base) == 0 and "checkpoint_every" not in seen  # not given: TrainConfig's default


def test_check_config_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune:\n  tasks: [world-coco\n")
    assert cli.main(["check-config", "--configfile", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"dowser: error: {bad}:3: not valid YAML (")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert cli.main(["check-config", "--configfile", str(empty)]) == 2
    assert capsys.readouterr().err == f"dowser: error: {empty}: empty config file\n"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("mask: {rho: [1.5]}\n")  # merged over config.yaml's mask section, as snakemake does
    assert cli.main(["check-config", "--configfile", str(wrong)]) == 2
    assert capsys.readouterr().err == "dowser: error: mask.rho: 1.5 is outside (0, 1)\n"
    assert cli.main(["check-config", "--configfile", "tests/e2e/reduced.yaml"]) == 0
    assert capsys.readouterr().out.startswith("ok: 3 runs, 2 masks, 4 evaluations;")


def stage_specs() -> dict[str, tuple[str, dict]]:
    """stage -> (spec kind, a valid spec of that stage) from the default grid."""
    import yaml

    from dowser.continual import StepModelSpec
    from dowser.spec import StabilitySpec, build_grid

    g = build_grid(yaml.safe_load(open("config.yaml")))
    first = lambda specs: next(iter(specs.values())).to_dict()  # noqa: E731
    return {"data": ("data", g.data.to_dict()), "model": ("model", g.model.to_dict()),
            "probe": ("probe", g.probe.to_dict()), "score": ("score", g.score.to_dict()),
            "merge": ("score", g.score.to_dict()), "mask": ("mask", first(g.masks)),
            "finetune": ("run", first(g.runs)), "evaluate": ("eval", first(g.evals)),
            "stability": ("stability", StabilitySpec(a="a" * 12, b="b" * 12, top=0.1).to_dict()),
            "continual": ("continual_model", StepModelSpec(model="m" * 12, run="r" * 12).to_dict())}


STAGE_ARGS = {"data": [], "model": [], "probe": ["--model", "m"], "score": ["--model", "m", "--shard", "0"],
              "merge": ["--shards", "a.h5"], "mask": [], "finetune": ["--model", "m", "--data", "d"],
              "evaluate": ["--model", "m", "--data", "d"], "stability": ["--a", "a.h5", "--b", "b.h5"],
              "continual": ["model", "--model", "m", "--run", "r"]}


@pytest.mark.parametrize("stage", list(STAGE_ARGS))
def test_every_stage_checks_its_spec_keys(stage, tmp_path, capsys):
    """As finetune checks finetune.train: an unknown or missing key is one line naming it, and
    nothing is written (before, mask and probe kept an unknown key under a new id)."""
    import json

    kind, spec = stage_specs()[stage]
    out = tmp_path / "out"

    def run(s: dict) -> str:
        assert cli.main([stage, *STAGE_ARGS[stage], "--spec", json.dumps(s), "--out", str(out)]) == 2
        return capsys.readouterr().err

    import dataclasses

    from dowser.spec import spec_classes

    fields = ", ".join(f.name for f in dataclasses.fields(spec_classes()[kind]))  # those at a default too
    unknown = run({**spec, "bogus": 1})
    assert unknown == f"dowser: error: --spec: {kind}.bogus: unknown key (a {kind} spec has {fields})\n"

    required = [f.name for f in dataclasses.fields(spec_classes()[kind]) if f.default is dataclasses.MISSING]
    required = "rho" if "rho" in required else required[0]  # the example where the spec has it
    missing = run({k: v for k, v in spec.items() if k != required})
    assert missing == f"dowser: error: --spec: {kind}.{required}: required\n"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_spec_types_and_kind_are_checked(capsys):
    import json

    _, mask = stage_specs()["mask"]
    assert cli.main(["mask", "--spec", json.dumps({**mask, "rho": "0.2"}), "--out", "x"]) == 2
    assert capsys.readouterr().err == "dowser: error: --spec: mask.rho: '0.2' is not a number\n"
    assert cli.main(["probe", "--spec", json.dumps(mask), "--model", "m", "--out", "x"]) == 2
    assert capsys.readouterr().err == "dowser: error: --spec: a 'mask' spec; this stage takes 'probe'\n"
    _, ev = stage_specs()["evaluate"]
    del ev["params"]["limit"]
    assert cli.main(["evaluate", "--spec", json.dumps(ev), "--model", "m", "--data", "d", "--out", "x"]) == 2
    assert capsys.readouterr().err == "dowser: error: --spec: eval.params.limit: required\n"


def test_spec_defaults_are_filled_and_ints_normalised():
    """A spec that omits defaults, or writes 1 for 1.0, has the id the workflow gives it."""
    from dowser.spec import MaskSpec, parse_spec

    full = MaskSpec(model="m" * 12, method="random", rho=1.0, scope="module", seed=0)
    short = '{"kind": "mask", "model": "%s", "method": "random", "rho": 1, "scope": "module", "seed": 0}' % ("m" * 12)
    assert parse_spec(short, MaskSpec) == full and parse_spec(short, MaskSpec).id == full.id


def test_check_config_warns_about_repeated_entries(tmp_path, capsys):
    """A task listed twice is one set of runs (same ids): accepted, and check-config says so."""
    import yaml

    tasks = yaml.safe_load(open("config.yaml"))["finetune"]["tasks"]
    twice = tmp_path / "twice.yaml"
    twice.write_text(yaml.safe_dump({"finetune": {"tasks": tasks + [tasks[0]]}, "mask": {"rho": [0.1, 0.10, 0.5]}}))
    once = tmp_path / "once.yaml"
    once.write_text(yaml.safe_dump({"mask": {"rho": [0.1, 0.5]}}))
    assert cli.main(["check-config", "--configfile", str(once)]) == 0
    expected = capsys.readouterr()
    assert expected.err == ""
    assert cli.main(["check-config", "--configfile", str(twice)]) == 0
    got = capsys.readouterr()
    assert got.out == expected.out  # the same grid
    assert got.err == (f"dowser: warning: finetune.tasks: {tasks[0]!r} listed more than once (the grid has it once)\n"
                       "dowser: warning: mask.rho: 0.1 listed more than once (the grid has it once)\n")

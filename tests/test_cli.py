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
    import dowser.finetune

    seen = {}
    monkeypatch.setattr(dowser.finetune, "finetune", lambda *a, **kw: seen.update(kw) or {"steps": 0})
    base = ["finetune", "--spec", '{"method": "full"}', "--model", "m", "--data", "d", "--out", str(tmp_path)]
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

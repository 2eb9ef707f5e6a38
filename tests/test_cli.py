import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def _subcommands(parser) -> list[str]:
    return [name for action in parser._subparsers._group_actions for name in action.choices]


def _every_command() -> list[tuple[str, str]]:
    """(program, command) for every subcommand the four command lines define: a new one is tested unasked."""
    from bench.__main__ import build_parser as bench_parser
    from client.__main__ import build_parser as client_parser
    from training.cli import build_parser as training_parser

    found = [("training", c) for c in _subcommands(training_parser())]
    found += [("bench", c) for c in _subcommands(bench_parser())]
    found += [("client", c) for c in _subcommands(client_parser())]
    return [*found, ("web", "")]


def test_the_command_list_is_complete():
    commands = _every_command()
    assert {c for p, c in commands if p == "bench"} == {
        "model",
        "serving",
        "image",
        "load",
        "matrix",
        "second-renderer",
        "generalization",
    }
    assert {c for p, c in commands if p == "client"} == {"predict", "batch", "ab-report"}
    assert {c for p, c in commands if p == "training"} == {"synth", "prepare", "train", "evaluate", "quantize",
                                                           "bench", "archive", "serve", "stop", "schema", "deployments", "image"}  # fmt: skip


def _parser(program: str):
    from bench.__main__ import build_parser as bench_parser
    from client.__main__ import build_parser as client_parser
    from training.cli import build_parser as training_parser

    return {"training": training_parser, "bench": bench_parser, "client": client_parser}[program]()


@pytest.mark.parametrize(
    ("program", "command"), [c for c in _every_command() if c not in {("web", ""), ("training", "bench")}]
)
def test_every_command_has_help(program, command, capsys):
    """In-process: each command's help; the entry points themselves are run below, once per program."""
    with pytest.raises(SystemExit) as done:
        _parser(program).parse_args([command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m {program} {command}")


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["training", "train", "--help"], "usage: python -m training train"),
        (["training", "bench", "--help"], "usage: python -m bench model"),  # the old command line forwards
        (["bench", "matrix", "--help"], "usage: python -m bench matrix"),
        (["client", "batch", "--help"], "usage: python -m client batch"),
        (["web", "--help"], "usage: python -m web"),
    ],
)
def test_every_program_runs_as_a_module(args, usage, repo_root):
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage), result.stdout[:200]


def test_synth_then_prepare_from_the_command_line(tmp_path, repo_root):
    synth = run(
        "synth", "--out", tmp_path / "s", "--layers", 3, "--size", 64, "--workers", 1, "--seed", 4, cwd=repo_root
    )
    assert synth.returncode == 0, synth.stderr
    assert synth.stdout.strip().splitlines()[-1].startswith(f"wrote 3 layers to {tmp_path / 's'}/raw")
    record = json.loads((tmp_path / "s" / "synth_config.json").read_text())
    assert record["command"].startswith("python -m training synth") and record["config"]["size"] == 64
    assert len(list((tmp_path / "s" / "raw").glob("*.png"))) == 9

    prep = run(
        "prepare", "--raw", tmp_path / "s" / "raw", "--truth", tmp_path / "s" / "truth", "--out", tmp_path / "p",
        "--report-dir", tmp_path / "docs", "--workers", 1, cwd=repo_root,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    last = prep.stdout.strip().splitlines()[-1]
    assert last.startswith("wrote 3 layers (") and "label quality:" in last
    report = (tmp_path / "docs" / "label_quality.md").read_text()
    assert "python -m training synth --out" in report and "python -m training prepare --raw" in report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["synth", "--lights", "0,120", "--out", "{tmp}"], "expected exactly three light azimuths"),
        (["synth", "--classes", "cracks", "--out", "{tmp}"], "choose from: recoater_streak"),
        (["synth", "--layers", "0", "--out", "{tmp}"], "at least 1"),
        (["prepare", "--raw", "/nonexistent/raw", "--out", "{tmp}"], "does not exist"),
        (["prepare", "--split", "1,1", "--out", "{tmp}"], "three fractions"),
        (["prepare", "--pitch", "0", "--out", "{tmp}"], "--pitch must be above 0"),
        (["prepare", "--pitch", "fine", "--out", "{tmp}"], "--pitch must be a number of micrometres per pixel"),
        (["train", "--pitch", "-5", "--out", "{tmp}"], "--pitch must be above 0"),
        (["train", "--data", "/nonexistent", "--out", "{tmp}"], "run `python -m training prepare"),
        (["train", "--crop", "100", "--out", "{tmp}"], "multiple of 32"),
        (["evaluate", "--checkpoint", "/nonexistent.pt"], "not found"),
        (["evaluate", "--checkpoint", "x.pt", "--rule", "best"], "max-f1' or 'min-recall R"),
        (["bench", "--checkpoint", "x.pt", "--sizes", "a"], "comma-separated whole numbers"),
        (["archive", "--checkpoint", "x.pt", "--tile-size", "1000"], "tile_size must be a multiple of 32"),
    ],
)
def test_bad_arguments_give_a_clear_error(args, message, tmp_path, repo_root, capsys, monkeypatch):
    """In-process (an unexpected exception would fail the test), from the repository root as a user runs it."""
    from training.cli import main

    monkeypatch.chdir(repo_root)
    code = main([a.replace("{tmp}", str(tmp_path / "out")) for a in args])
    assert code == 2
    assert message in capsys.readouterr().err

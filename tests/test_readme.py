"""The README against the code: the main-job command does what the README says (its install step is CI's own
command), the synopsis is the parsers' usage, every command block parses and every option it names exists."""

import argparse
import importlib
import re
import shlex
import subprocess
import sys

import pytest
from locales import ASCII_LOCALE
from PIL import Image
from readme_job import README, shell_blocks

from dbunet.cli import synopsis


def test_readme_states_the_two_setup_commands_and_ci_runs_the_second():
    blocks = shell_blocks()
    main_job, tests = blocks[0].strip(), blocks[1].strip()
    assert "dbunet-export --fp16" in main_job and "dbunet-run" in main_job
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci


def test_main_job_exports_and_writes_a_png(readme_main_job):
    img = Image.open(readme_main_job / "out.png")
    assert img.size == (64, 64) and img.text["prompt"] == "a red circle and a blue square"
    assert (readme_main_job / "dbunet-artifacts" / "manifest.json").is_file()


TEXT = README.read_text(encoding="utf-8")
PROGRAMS = {"dbunet-export": "dbunet.cli.export", "dbunet-run": "dbunet.cli.run", "dbunet-build": "dbunet.cli.build",
            "dbunet-bench": "dbunet.cli.bench", "python -m dbunet.train": "dbunet.train.__main__"}


def _split(command: str) -> tuple[str, list[str]] | None:
    """(program, arguments) if `command` runs one of ours."""
    for program in PROGRAMS:
        if command == program or command.startswith(program + " "):
            return program, shlex.split(command[len(program):])
    return None


def _block_commands() -> list[tuple[str, list[str]]]:
    """Each command in the README's shell blocks (a `&&` chain gives one per command)."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", TEXT, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("  #", 1)[0].split("&&"):
                if (command := _split(part.strip())) is not None:
                    found.append(command)
    return found


def _inline_commands() -> list[tuple[str, list[str]]]:
    """Commands quoted in the prose (`dbunet-build --max-boxes 8`): often partial, so only their options count."""
    return [c for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", TEXT) if (c := _split(span)) is not None]


def _parser(program: str):
    return importlib.import_module(PROGRAMS[program]).parser()


def test_the_synopsis_command_refuses_a_misspelt_flag(capsys):
    # before: any argument but exactly --write printed the synopsis, so `--wirte` seemed to work and wrote nothing
    with pytest.raises(SystemExit) as exc:
        synopsis.main(["--wirte"])
    assert exc.value.code == 2 and "unrecognized arguments: --wirte" in capsys.readouterr().err


def test_the_synopsis_command_rewrites_the_readme_under_an_ascii_locale(tmp_path):
    # the README is UTF-8 (it has dashes); read with the locale's encoding, --write failed where that is ASCII
    copy = tmp_path / "README.md"
    copy.write_bytes(README.read_bytes())
    code = ("import pathlib, sys; from dbunet.cli import synopsis; "
            f"synopsis.README = pathlib.Path({str(copy)!r}); sys.exit(synopsis.main(['--write']))")
    done = subprocess.run([sys.executable, "-c", code], env=ASCII_LOCALE, capture_output=True, text=True,
                          encoding="utf-8")
    assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == README.read_bytes()  # the synopsis is current (test below), so nothing changes


def test_the_readme_synopsis_is_the_parsers_usage():
    assert synopsis.readme_block(TEXT) == synopsis.synopsis(), (
        "the README's synopsis differs from the commands' parsers: run python -m dbunet.cli.synopsis --write")


def _long_usage(pad: int) -> argparse.ArgumentParser:
    """A usage that needs several lines, with a nested metavar and a group of alternatives `pad` characters on."""
    p = argparse.ArgumentParser(prog="dbunet-x")
    p.add_argument("--pad", metavar="P" * pad)
    for i in range(3):
        p.add_argument(f"--ptx{i}", nargs="*", metavar="TARGET[:CUDA]")
        group = p.add_mutually_exclusive_group()
        group.add_argument(f"--replicas{i}", type=int)
        group.add_argument(f"--autoscale{i}", metavar="MIN:MAX")
    p.add_argument("command", choices=["one", "two"])
    return p


@pytest.mark.parametrize("pad", range(0, 90, 3))
def test_the_synopsis_never_breaks_a_line_inside_brackets(pad):
    # before: argparse wrapped it, and each Python release breaks lines differently: 3.11 inside a nested metavar
    # (`[--ptx0 [TARGET[:CUDA]` / `...]]`), 3.13 inside a group of alternatives (`[--a A |` / `--b B]`), so the
    # README's synopsis test failed on Python 3.13
    text = synopsis.wrapped(_long_usage(pad))
    one_line = _long_usage(pad).format_usage().split(None, 1)[1].replace("\n", " ")
    lines = text.splitlines()
    assert len(lines) > 2 and " ".join(line.strip() for line in lines) == " ".join(one_line.split())
    for line in lines:
        assert all(line.count(a) == line.count(b) for a, b in ("[]", "()", "{}")), line
        assert len(line) <= synopsis.LINE, line
    assert all(line.startswith(" " * len("dbunet-x ")) and line[len("dbunet-x ")] != " " for line in lines[1:])


def test_the_readme_shows_every_command():
    assert {program for program, _ in _block_commands() + _inline_commands()} == set(PROGRAMS)


@pytest.mark.parametrize("program,args", _block_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v)[:50])
def test_every_command_block_in_the_readme_parses(program, args):
    _parser(program).parse_args(args)  # SystemExit (exit 2, "error: ...") if an option is gone or misspelled


def test_every_option_the_readme_names_exists():
    unknown = []
    for program, args in _block_commands() + _inline_commands():
        known = _parser(program)._option_string_actions
        unknown += [f"{program} {a}" for a in args if a.startswith("--") and a.split("=")[0] not in known]
    assert not unknown, unknown


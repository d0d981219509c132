"""The README's commands work as written on a fresh clone: the two set-up commands are the ones
documented, every CLI example calls the virtual environment's Python (the set-up never activates
it), and every subcommand and flag an example shows exists in the parser."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from galaxy_core.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SET_UP = [
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/streamlit run app.py",
    "python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt && .venv/bin/python -m pytest -q",
]


def shell_commands() -> list[str]:
    """Every command in the README's bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#")[0].strip()
            if command:
                commands.append(command)
    return commands


def cli_commands() -> list[str]:
    inline = [c for c in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", README) if c.startswith(".venv/bin/")]
    return [c for c in shell_commands() + inline if "-m galaxy_core " in c]  # with a subcommand


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_two_set_up_commands_are_unchanged() -> None:
    for command in SET_UP:
        assert command in shell_commands()


def test_every_cli_example_uses_the_virtual_environment() -> None:
    found = cli_commands()
    assert len(found) >= 10
    for command in found:
        assert re.match(r"^\.venv/bin/(python -m galaxy_core|torchrun .* -m galaxy_core) ", command), command
    assert not re.search(r"(?<![/\w])python -m galaxy_core", README)  # nor in the prose
    for command in shell_commands():
        assert not re.match(r"^(python|torchrun|streamlit|pip) ", command), command


@pytest.mark.parametrize("command", cli_commands())
def test_every_documented_subcommand_and_flag_exists(command: str) -> None:
    words = shlex.split(command.replace("[", " ").replace("]", " ").replace("|", " "))
    after = words[words.index("galaxy_core") + 1:]
    parsers = subcommands()
    assert after[0] in parsers, f"{after[0]!r} is not a subcommand"
    known = parsers[after[0]]._option_string_actions
    for word in after[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{after[0]} has no {word}"

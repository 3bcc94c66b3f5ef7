"""Options that mean the same thing are spelt the same way on every command."""

from __future__ import annotations

import typer

from dorl.cli import app

# long name -> every spelling it must come with
SAME_EVERYWHERE = {
    "--output": {"-o", "--output", "--out"},
    "--domain": {"-d", "--domain"},
    "--max-cells": {"-n", "--max-cells"},
}


def option_names() -> dict[str, list[set[str]]]:
    """Command name -> the spellings of each of its options."""
    group = typer.main.get_group(app)
    return {name: [set(p.opts) for p in command.params if p.opts and p.opts[0].startswith("-")]
            for name, command in group.commands.items()}


def test_shared_options_have_the_same_short_and_long_names() -> None:
    commands = option_names()
    seen = set()
    for command, options in commands.items():
        for names in options:
            for canonical, spellings in SAME_EVERYWHERE.items():
                if names & spellings:
                    seen.add((command, canonical))
                    assert names == spellings, f"dorl {command}: {sorted(names)} should be {sorted(spellings)}"
    assert {("train", "--domain"), ("evaluate", "--domain"), ("calibrate", "--domain")} <= seen
    assert {(c, "--output") for c in ("train", "evaluate", "export", "calibrate", "build", "adapt", "bench", "demo")} <= seen

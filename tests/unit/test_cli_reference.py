"""docs/cli.md is the command reference that ships in the repository: it must be exactly what
`python -m parent.cli.reference` makes from the commands, so a command or option cannot be
added, renamed or dropped without it; and the project's docs point at nothing outside it."""
from __future__ import annotations

import re

import click

from parent.cli.main import cli, register_commands
from parent.cli.reference import JSON_KEYS, generate, walk
from tests.conftest import ROOT

REGENERATE = "docs/cli.md is stale: run  .venv/bin/python -m parent.cli.reference > docs/cli.md"


def test_docs_cli_md_is_generated_from_the_commands():
    assert (ROOT / "docs" / "cli.md").read_text() == generate(), REGENERATE


def test_every_command_and_option_is_in_the_reference():
    text = (ROOT / "docs" / "cli.md").read_text()
    register_commands()
    for full, cmd in walk(cli):
        assert f"`{full}`" in text, f"{full} missing from docs/cli.md; {REGENERATE}"
        for p in cmd.params:
            if isinstance(p, click.Option):
                for opt in p.opts:
                    assert f"`{opt}`" in text, f"{full} {opt} missing; {REGENERATE}"


def test_json_keys_name_real_commands():
    register_commands()
    names = {full for full, _ in walk(cli)}
    assert set(JSON_KEYS) <= names, set(JSON_KEYS) - names


def test_reference_lists_guest_programs_exit_codes_and_error_codes():
    from hypervisor.runtime.errors import ERROR_CODES
    from worker.guest.programs import GUEST_PROGRAMS
    text = (ROOT / "docs" / "cli.md").read_text()
    assert all(f"`{spec}`" in text for spec in GUEST_PROGRAMS)
    assert all(f"`{code}`" in text for code in ERROR_CODES)
    assert all(f"| {n} |" in text for n in (0, 1, 2, 3))


def test_docs_point_at_nothing_outside_the_repository():
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        assert not re.search(r"\.\./shared|/work/shared", path.read_text()), path

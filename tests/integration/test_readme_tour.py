"""The README's tour, pasted as a new user would: every ```sh block under "## A tour of hvctl",
in order, in one bash process from the repository's root (so `. .venv/bin/activate` and
`export HVEMU_HOME` carry over), with the home moved to a temporary one. Only lines marked
`(interactive)` are skipped. Each line must exit 0; a `timeout …` line may also exit 124 (it
was bounded on purpose). The tour cannot rot without this failing, naming the line.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, Host, kill_home, short_home

README_HOME = "/tmp/hv1"
TOUR = "## A tour of hvctl"


def tour_lines(readme: str) -> list[str]:
    """The tour's shell lines in order (no blanks, no comment-only lines, no interactive ones)."""
    section = readme.split(TOUR, 1)[1]
    section = re.split(r"^## ", section, flags=re.M)[0]
    lines = []
    for block in re.findall(r"^```sh\n(.*?)^```", section, flags=re.M | re.S):
        for line in block.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or "(interactive)" in stripped:
                continue
            lines.append(stripped)
    return lines


def script_for(lines: list[str], home: str) -> str:
    out = ["set -u -o pipefail", f"cd {shlex.quote(str(ROOT))}"]
    for n, line in enumerate(lines, 1):
        line = line.replace(README_HOME, home)
        allowed = "0 124" if line.startswith("timeout ") else "0"
        out += [f"printf '%s\\n' {shlex.quote('+ ' + line)}",
                line,
                "rc=$?",
                f"case \" {allowed} \" in *\" $rc \"*) ;; *) "
                f"echo {shlex.quote(f'README tour line {n} failed')} \"(exit $rc): \"{shlex.quote(line)} >&2; "
                "exit 1;; esac"]
    out.append("echo TOUR-DONE")
    return "\n".join(out) + "\n"


def test_tour_lines_are_found_and_interactive_ones_skipped():
    lines = tour_lines((ROOT / "README.md").read_text())
    assert lines[0].startswith("bash scripts/bootstrap.sh") and lines[-1] == "hvctl host down"
    assert any(line.startswith("timeout ") and "hvctl events" in line for line in lines)
    assert not any("socat" in line for line in lines)


@pytest.mark.integration
def test_readme_tour_runs_top_to_bottom():
    if not (ROOT / ".venv" / "bin" / "hvctl").exists():
        pytest.skip("the tour runs from the repository's .venv (scripts/test creates it)")
    home = short_home()
    script = script_for(tour_lines((ROOT / "README.md").read_text()), str(home))
    try:
        proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=240,
                              env={k: v for k, v in os.environ.items()
                                   if k not in ("HVEMU_HOME", "VIRTUAL_ENV")})
        assert proc.returncode == 0 and "TOUR-DONE" in proc.stdout, \
            f"{proc.stderr[-3000:]}\n---- stdout\n{proc.stdout[-4000:]}"
        # What the tour promises shows up in what it printed.
        assert re.search(r"^hvctl \d+\.\d+\.\d+$", proc.stdout, flags=re.M)   # --version
        assert "started automatically (AutomaticStartAction): " in proc.stdout
        assert re.search(r"Attached\s+: True", proc.stdout)
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\s+busy\s+state", proc.stdout)
    finally:
        host = Host(home)
        subprocess.run([str(ROOT / ".venv/bin/hvctl"), "--home", str(home), "host", "down"],
                       capture_output=True, timeout=60)
        kill_home(host)
        shutil.rmtree(home, ignore_errors=True)

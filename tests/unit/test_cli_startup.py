"""hvctl's start-up stays cheap (issue 16) — checked by what a run imports, never by a time:
`get-vm` takes the fast path (parent/cli/launch.py) without click, rich, psutil, structlog,
dataclasses or any command module; other commands load only their own module; the lazy
command table agrees with what the modules register; the fast path words errors as the click
command would; `--json` output is exactly json.dumps(indent=2). The run against a real host is in tests/integration/test_cli_answers.py."""
from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from parent.cli import launch, output
from parent.cli.main import COMMAND_MODULES, cli, modules_for, option_words, register_commands
from tests.conftest import ROOT

# what hvctl get-vm must not import (the first five are the list; dataclasses pulls
# inspect, ast, dis and tokenize)
HEAVY = ("click", "rich", "psutil", "structlog", "platformdirs", "dataclasses", "inspect")

PROBE = """
import json, sys
from parent.cli import launch
try:
    launch.main(sys.argv[2:])
    code = 0
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def probe(tmp_path, *argv: str) -> tuple[int, set[str], str]:
    """Run hvctl's entry point in a fresh interpreter: (exit status, modules it imported, stdout)."""
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(report), *argv], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert report.exists(), proc.stderr
    data = json.loads(report.read_text())
    return data["code"], set(data["modules"]), proc.stdout


@functools.cache
def wire_modules() -> frozenset[str]:
    """What `import zmq, msgpack` imports by itself on this interpreter (the issue's reference;
    pyzmq's cp312 build pulls inspect): hvctl cannot send a request for less."""
    out = subprocess.run([sys.executable, "-c", "import json, sys, zmq, msgpack; "
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return frozenset(json.loads(out))


def heavy_in(modules: set[str]) -> list[str]:
    """The heavy modules among `modules` beyond what the wire libraries import themselves."""
    return sorted(m for m in modules - wire_modules() if m.split(".")[0] in HEAVY)


def command_modules_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m in COMMAND_MODULES or m == "parent.cli.main")


@pytest.mark.parametrize("argv", [["get-vm"], ["--json", "get-vm", "web*", "db1"], ["Get-VM", "--json"]])
def test_get_vm_imports_no_click_and_no_command_module(tmp_path, argv):
    code, modules, _ = probe(tmp_path, "--home", str(tmp_path / "no-host"), *argv)
    assert code == 3                      # answered (the host is not running), not a usage error
    assert heavy_in(modules) == []
    assert command_modules_in(modules) == []
    assert "parent.cli.vm_listing" in modules


def test_another_command_loads_only_its_own_module(tmp_path):
    code, modules, _ = probe(tmp_path, "--home", str(tmp_path / "no-host"), "get-vmmemory", "x")
    assert code == 3
    assert command_modules_in(modules) == ["parent.cli.main", "parent.cli.resource_commands"]
    assert not {"rich", "psutil", "structlog"} & {m.split(".")[0] for m in modules}


def test_an_option_after_get_vm_goes_to_click(tmp_path):
    code, modules, out = probe(tmp_path, "get-vm", "--help")
    assert code == 0 and "Usage: hvctl get-vm" in out and "click" in modules


def test_help_lists_every_command(tmp_path):
    code, _, out = probe(tmp_path, "--help")
    register_commands()
    assert code == 0
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(cli.commands)


def test_the_lazy_table_names_every_command_where_it_is_registered():
    register_commands()
    for name, cmd in cli.commands.items():
        if getattr(cmd, "unavailable", None):
            assert not modules_for(name), f"{name} is listed but no module registers it"
            continue
        assert cmd.callback.__module__ in modules_for(name), \
            f"add {name!r} to COMMAND_MODULES[{cmd.callback.__module__!r}] (parent/cli/main.py)"
    listed = {n for names in COMMAND_MODULES.values() for n in names}
    assert listed <= set(cli.commands), listed - set(cli.commands)


def test_the_fast_path_words_errors_as_the_click_command_does():
    register_commands()
    assert launch.GET_VM_WORDS == option_words(cli.commands["get-vm"])


@pytest.mark.parametrize("rest, fast", [
    (["get-vm"], True), (["GET-VM", "a", "b*"], True), (["get-vm", "--help"], False),
    (["get-vm", "--"], False), (["get-vmhost"], False), ([], False), (["get-vm", "-h"], False),
])
def test_which_lines_take_the_fast_path(rest, fast):
    assert launch.is_fast(rest) is fast


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    | st.dictionaries(st.integers() | st.booleans() | st.none(), inner, max_size=2),
    max_leaves=30)


@given(JSONISH)
def test_json_output_is_exactly_what_json_dumps_writes(value):
    assert output.dumps_indented(value) == json.dumps(value, indent=2, default=str)


def test_json_output_of_objects_and_get_vm_lists():
    class Odd:
        def __str__(self):
            return "odd\n\u00e9"
    vms = [{"Name": f"web{i}\u00e9", "Id": str(i), "CPUUsage": 0, "MemoryAssigned": None,
            "Uptime": 1.5, "DynamicMemoryEnabled": False, "Tags": ["a", {"b": []}]} for i in range(3)]
    for value in (vms, [Odd(), {"x": Odd()}], {"deep": [[[[1]]]]}, [], {}, float("nan")):
        assert output.dumps_indented(value) == json.dumps(value, indent=2, default=str)

"""hvctl's answers without a host: command names as PowerShell spells them, suggestions,
--version, tables that never wrap, errors naming options as typed, MiB/GiB sizes, VM name
selection (several, comma lists, wildcards), ISO 8601 times, what this build says it lacks,
and the one definition of available memory."""
from __future__ import annotations

import re

import click
import pytest
from hypothesis import given, strategies as st

from hypervisor.memory_ledger import MemoryLedger, MemorySettings
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.sizes import parse_size
from parent import build_features
from parent.cli import output, vm_selection
from parent.cli.main import as_typed, cli, main, register_commands

MIB, GIB = 1 << 20, 1 << 30


def run(capsys, *argv, home="/tmp/hv-no-such-home"):
    with pytest.raises(SystemExit) as exc:
        main(["--home", home, *argv])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.mark.parametrize("typed", ["Get-VM", "GET-VM", "get-vm", "Measure-VM", "Get-VMMemory"])
def test_command_names_are_case_insensitive(capsys, typed):
    code, _, err = run(capsys, typed, "x")
    assert code == 3 and "Unavailable" in err  # resolved, then found no host (not a usage error)


def test_option_names_are_case_insensitive(capsys):
    code, out, _ = run(capsys, "Set-VMMemory", "--Help")
    assert code == 0 and "--minimum-bytes" in out


def test_subcommands_too(capsys):
    code, out, _ = run(capsys, "HOST", "Up", "--help")
    assert code == 0 and "--host-memory" in out
    code, _, err = run(capsys, "host", "dwn")
    assert code == 2 and "Did you mean down?" in err


def test_unknown_command_is_usage_error_with_a_suggestion(capsys):
    code, _, err = run(capsys, "get-vn")
    assert code == 2 and "No such command 'get-vn'" in err and "get-vm" in err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and re.fullmatch(r"hvctl \d+\.\d+\.\d+\n", out)


@given(st.integers(min_value=0, max_value=1 << 20))
def test_mib_gib_mean_what_mb_gb_mean(n):
    assert parse_size(f"{n}MiB") == parse_size(f"{n}MB") == parse_size(f"{n} mib") == n * MIB
    assert parse_size(f"{n}GiB") == parse_size(f"{n}GB") == n * GIB


def test_bad_size_is_refused_naming_the_option(capsys):
    code, _, err = run(capsys, "set-vmmemory", "web1", "--minimum-bytes", "512XB")
    assert code == 1 and "BadRequest: --minimum-bytes: size '512XB'" in err
    assert "minimum_bytes" not in err


def test_vmms_argument_names_are_reworded_as_typed():
    register_commands()
    cmd = cli.commands["set-vmmemory"]
    msg = as_typed("argument 'minimum_bytes' must be a positive multiple of 2 MiB, got 3", cmd)
    assert msg == "--minimum-bytes must be a positive multiple of 2 MiB, got 3"
    assert as_typed("argument 'vm' must be a VM name or Id", cmd) == "NAME must be a VM name or Id"
    assert as_typed("argument 'partition_id' is odd", cmd) == "'partition_id' is odd"


def test_table_headers_never_wrap_and_long_cells_are_shortened():
    headers = ["Name", "State", "MemoryAssigned(M)", "Status"]
    rows = [["a VM with a long name " * 3, "Running", "1024", "Operating normally"]]
    full = output.format_table(headers, rows, width=None)
    assert len(full) == 2 and full[0].split() == ["Name", "State", "MemoryAssigned(M)", "Status"]
    assert rows[0][0].strip() in full[1]           # piped: full width, nothing cut
    narrow = output.format_table(headers, rows, width=60)
    assert len(narrow) == 2 and all(len(line) <= 60 for line in narrow)
    assert "MemoryAssigned(M)" in narrow[0] and "…" in narrow[1]


def test_several_runs_print_one_table_or_one_json_list(capsys):
    cols = [("VMName", "VMName")]
    with output.collecting() as items:
        output.print_table(cols, [{"VMName": "a"}])
        output.print_table(cols, [{"VMName": "b"}])
    output.flush(items, as_json=False)
    assert capsys.readouterr().out.split() == ["VMName", "a", "b"]
    with output.collecting() as items:
        output.print_json({"VMName": "a"})
        output.print_json([{"VMName": "b"}])
    output.flush(items, as_json=True)
    assert '"b"' in capsys.readouterr().out


def test_names_commas_and_wildcards_select_vms():
    existing = ["web1", "Web2", "db1"]
    assert vm_selection.split_names(["web1,db1", "x"]) == ["web1", "db1", "x"]
    assert vm_selection.match(["WEB*"], existing) == ["web1", "Web2"]
    assert vm_selection.match(["db?", "web1", "*"], existing) == ["db1", "web1", "Web2"]
    assert vm_selection.match(["nosuch", "zz*"], existing) == ["nosuch"]   # the op says NotFound


def test_every_vm_command_takes_several_names_and_others_do_not():
    register_commands()
    takes = {name for name, cmd in cli.commands.items()
             if getattr(cmd, "_vm_selection", False)}
    for name in ("get-vm", "start-vm", "stop-vm", "measure-vm", "get-vmmemory", "get-vmprocessor",
                 "set-vmmemory", "get-vmkvp", "set-vmkvp", "get-vmharddiskdrive", "save-vm",
                 "checkpoint-vm", "get-vmsnapshot"):
        assert name in takes, name
    for name in ("new-vm", "get-vmhostdriver", "restart-vmhostdriver", "get-vhd", "new-vhd",
                 "merge-vhd"):
        assert name not in takes, name
    # a command another module adds later gets it by the same rule
    probe = click.Command("get-vmnetworkadapter", params=[click.Argument(["name"])])
    switch = click.Command("get-vmswitch", params=[click.Argument(["name"])])
    assert vm_selection.vm_param("get-vmnetworkadapter", probe) is not None
    assert vm_selection.vm_param("get-vmswitch", switch) is None


def test_times_are_iso_8601_utc():
    from parent.cli.host_commands import event_line
    assert output.iso_time(0) == "1970-01-01T00:00:00.000Z"
    line = event_line({"Time": 1.5, "VMName": "web1", "Event": "state", "State": "Off",
                       "Reason": "turned off"})
    assert line == "1970-01-01T00:00:01.500Z  web1  state  Off (turned off)"


def test_default_stop_action_is_turn_off_even_with_saved_state():
    # hvemu differs from Hyper-V (Save) on purpose: docs/cli-extensions.md
    assert build_features.DEFAULT_STOP_ACTION == "TurnOff"
    assert ("Save" in build_features.STOP_ACTIONS) == build_features.SAVED_STATE


@pytest.mark.skipif(build_features.SAVED_STATE, reason="this build has saved state (issue 13)")
def test_nothing_advertises_saved_state(capsys):
    assert "Save" not in build_features.STOP_ACTIONS and build_features.DEFAULT_STOP_ACTION != "Save"
    code, out, _ = run(capsys, "start-vm", "--help")
    assert code == 0 and "Saved" not in out
    code, out, _ = run(capsys, "set-vm", "--help")
    assert "Save" not in out.replace("ShutDown", "")
    code, _, err = run(capsys, "save-vm", "web1")
    assert code == 1 and err.count(".") == 1 and "NotSupported" in err and "saved state" in err
    code, _, err = run(capsys, "stop-vm", "web1", "--save")
    assert code == 1 and "NotSupported: stop-vm --save: saved state is not in this build" in err


def test_a_refused_start_names_the_figure_get_vmhost_calls_available():
    ledger = MemoryLedger(4 * GIB, 512 * MIB)
    dyn = MemorySettings(dynamic=True, startup=1 * GIB, minimum=256 * MIB, maximum=2 * GIB)
    ledger.admit("p1", "web1", dyn, now=0)
    ledger.report_demand("p1", 100 * MIB)       # it can now give back down to its minimum
    assert ledger.available_to_start == ledger.available + (1 * GIB - 256 * MIB)
    with pytest.raises(HvError) as exc:
        ledger.admit("p2", "big", MemorySettings(startup=4 * GIB), now=0)
    said = int(re.search(r"(\d+) MB is available", exc.value.message)[1])
    assert said * MIB == ledger.available_to_start

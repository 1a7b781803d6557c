"""hvctl against a real host answers the way Hyper-V's cmdlets do: several names and wildcards
with partial results, lifecycle commands that print the VM as it is, measure-vm in MB with a
MeteringDuration, tables that never wrap when piped, errors naming the option as typed, ISO
8601 event times, get-vhd on an attached disk, one figure for available memory, and logs that
say `error` only for errors. One host for the module; every wait bounded."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.conftest import HVCTL, ROOT, wait_until
from tests.unit.test_cli_startup import command_modules_in, heavy_in, probe

pytestmark = pytest.mark.integration
MB = 1 << 20


def text(host, *args, check=True):
    """hvctl without --json, output piped (as in a script)."""
    proc = subprocess.run([*HVCTL, "--home", str(host.home), *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def host(shared_host):
    h = shared_host
    h.hvctl("new-vm", "web1", "--memory-startup-bytes", "64MiB")
    h.hvctl("new-vm", "web2", "--memory-startup-bytes", "96MB")
    h.hvctl("new-vm", "a VM with a rather long name for tables", "--memory-startup-bytes", "64MB")
    return h


def test_start_prints_the_vms_as_they_are_when_it_returns(host):
    rc, out, _ = host.hvctl("start-vm", "web*")
    assert {vm["Name"]: vm["MemoryAssigned"] for vm in out} == {"web1": 64 * MB, "web2": 96 * MB}
    assert all(vm["State"] == "Running" for vm in out)


def test_several_names_and_wildcards_with_partial_results(host):
    rc, out, err = host.hvctl("get-vm", "web1", "nosuch", check=False)
    assert rc == 1 and [vm["Name"] for vm in out] == ["web1"] and "NotFound" in err
    rc, out, _ = host.hvctl("Get-VM", "WEB*")
    assert sorted(vm["Name"] for vm in out) == ["web1", "web2"]
    rc, out, _ = host.hvctl("get-vmmemory", "web1,web2")
    assert [m["VMName"] for m in out] == ["web1", "web2"]
    rc, out, err = host.hvctl("get-vmprocessor", "web1", "nosuch", check=False)
    assert rc == 1 and [p["VMName"] for p in out] == ["web1"] and "nosuch" in err
    rc, out, _ = host.hvctl("get-vm", "zz*")
    assert out == []                                  # a pattern that matches nothing: nothing


def test_measure_vm_in_hyper_v_units_with_metering_duration(host):
    rc, out, _ = host.hvctl("measure-vm", "web*")
    assert [m["VMName"] for m in out] == ["web1", "web2"]
    assert all(m["MeteringDuration"] > 0 and m["AvgRAM"] > 0 for m in out)
    _, table, _ = text(host, "measure-vm", "web1")
    header, row = table.splitlines()
    assert "AvgCPU(% of host)" in header and "AvgRAM(M)" in header and "MeteringDuration" in header
    assert row.split()[2] == "64"                     # MB, not bytes


def test_piped_tables_never_wrap(host):
    _, table, _ = text(host, "get-vm")
    lines = table.splitlines()
    assert lines[0].split() == ["Name", "State", "CPUUsage(%)", "MemoryAssigned(M)", "Uptime", "Status"]
    assert len(lines) == 4 and "a VM with a rather long name for tables" in table


def test_get_vm_takes_the_fast_path_and_prints_what_the_click_command_prints(host, tmp_path):
    """issue 16: a one-shot get-vm sends its request without click, rich, psutil, structlog or
    any command module imported (parent/cli/launch.py), and prints what the click command
    (`get-vm --` keeps a line off the fast path) prints: same keys, same VMs, same columns."""
    code, modules, out = probe(tmp_path, "--home", str(host.home), "--json", "get-vm")
    assert code == 0 and {"zmq", "msgpack"} <= modules          # it did ask vmms
    assert heavy_in(modules) == [] and command_modules_in(modules) == []
    fast = json.loads(out)
    _, slow, _ = host.hvctl("get-vm", "--")
    assert [(vm["Name"], sorted(vm)) for vm in fast] == [(vm["Name"], sorted(vm)) for vm in slow]
    _, fast_table, _ = text(host, "get-vm")
    _, slow_table, _ = text(host, "get-vm", "--")
    assert [line.split()[0] for line in fast_table.splitlines()] == \
        [line.split()[0] for line in slow_table.splitlines()]
    assert fast_table.splitlines()[0] == slow_table.splitlines()[0]


def test_errors_name_the_option_as_typed(host):
    rc, _, err = text(host, "set-vmmemory", "web1", "--minimum-bytes", "3MB", check=False)
    assert rc == 1 and "--minimum-bytes" in err and "minimum_bytes" not in err
    rc, _, err = text(host, "new-vm", "x", "--guest", "nope", check=False)
    assert rc == 1 and "no-shutdown" in err and "kvp-echo" in err   # every SPEC is named


def test_event_times_are_iso_8601(host):
    proc = subprocess.Popen([*HVCTL, "--home", str(host.home), "--json", "events", "--vm", "web2"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        def one_event():
            host.call("suspend-vm", vm="web2")
            host.call("resume-vm", vm="web2")
            return True
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = wait_until(lambda: one_event() and sel.select(0.5) and proc.stdout.readline(), 15,
                          interval=0.05, what="an event line")
        body = json.loads(line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["Time"])
        assert body["VMName"] == "web2" and body["Event"] == "state"
    finally:
        proc.kill()
        proc.wait(5)


def test_get_vhd_on_an_attached_disk_reads_it(host, tmp_path):
    path = str(host.home / "a.vhdx")
    host.hvctl("new-vhd", path, "--size-bytes", "16MiB")
    host.hvctl("new-vm", "disk1", "--memory-startup-bytes", "64MB")
    host.hvctl("add-vmharddiskdrive", "disk1", "--path", path)
    _, off, _ = host.hvctl("get-vhd", path)
    assert off["Attached"] is False and off["VMName"] == "disk1"
    host.hvctl("start-vm", "disk1")
    _, on, _ = host.hvctl("get-vhd", path)
    assert on["Attached"] is True and on["VMName"] == "disk1" and on["Size"] == 16 * MB
    host.hvctl("stop-vm", "disk1", "--turn-off")


def test_available_memory_is_one_figure(host):
    host.hvctl("new-vm", "huge", "--memory-startup-bytes", "3840MB")
    available = host.call("get-vmhost")["MemoryAvailable"]
    rc, out, _ = host.hvctl("start-vm", "huge", check=False)
    assert rc == 1 and out["error"]["code"] == "InsufficientMemory"
    assert f"{available // MB} MB is available" in out["error"]["message"]


def test_a_normal_stop_logs_no_error(host):
    host.hvctl("stop-vm", "web1", "web2")
    logs = "".join(p.read_text() for p in (host.home / "logs").glob("*.log"))
    assert "partition_free_failed" not in logs
    assert '"level": "error"' not in logs


def test_host_down_follows_automatic_stop_action_and_host_up_says_what_it_starts(host):
    for name in ("web1", "web2"):
        host.hvctl("start-vm", name)
    _, vm, _ = host.hvctl("set-vm", "web1", "--automatic-stop-action", "shutdown")
    assert vm["AutomaticStopAction"] == "ShutDown"
    from parent.build_features import SAVED_STATE
    assert host.vm("web2")["AutomaticStopAction"] == "TurnOff"   # hvemu's default (not Hyper-V's Save)
    if SAVED_STATE:
        _, vm, _ = host.hvctl("set-vm", "web2", "--automatic-stop-action", "Save")
        assert vm["AutomaticStopAction"] == "Save"
    host.close()
    host.hvctl("host", "down")
    reasons = {}
    for path in (host.home / "vms").glob("*/config.json"):
        cfg = json.loads(path.read_text())
        reasons[cfg["name"]] = cfg.get("last_exit_reason")
    assert reasons["web1"] == "guest shut down"                   # ShutDown: the guest was asked
    assert reasons["web2"] == ("saved" if SAVED_STATE                 # Save: saved state
                               else "worker terminated")          # TurnOff: the power was pulled
    _, up, _ = host.hvctl("host", "up")
    assert sorted(up["AutoStarted"]) == ["web1", "web2"]            # StartIfRunning

"""Pure checks of the hardening rules (issue 9): finite ranges, config checks, rotated logs,
pid-file ownership, the limits table and its documentation."""
from __future__ import annotations

import fcntl
import math
import os
import threading
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, strategies as st

from hypervisor.runtime import limits
from hypervisor.runtime.arg_checks import get_float, get_int
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.log_rotation import RotatingFile
from hypervisor.runtime.pidfile import PidFile, _same_file, holder_pid
from hypervisor.runtime.sizes import parse_size
from parent.config_checks import config_problem
from hypervisor.runtime.paths import Home
from parent.worker_supervisor import signal_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1 << 70, -(1 << 70)])
def test_get_float_refuses_non_finite_and_huge_naming_the_field(value):
    with pytest.raises(HvError) as exc:
        get_float({"timeout": value}, "timeout", lo=0.1, hi=3600)
    assert exc.value.code == "BadRequest" and "timeout" in exc.value.message


def test_get_int_without_range_still_fits_the_wire():
    with pytest.raises(HvError, match="'n'"):
        get_int({"n": 1 << 64}, "n")
    assert get_int({"n": 5}, "n") == 5


@pytest.mark.parametrize("text", ["99999999999999999999999998MB", "1.5e400GB", "1" * 70,
                                  "nanMB", "infGB", "9" * 30])
def test_parse_size_refuses_huge_or_odd_text_naming_the_field(text):
    with pytest.raises(HvError) as exc:
        parse_size(text, "memory_startup_bytes")
    assert exc.value.code == "BadRequest" and "memory_startup_bytes" in exc.value.message


@given(st.one_of(st.text(max_size=40), st.integers(), st.floats()))
def test_parse_size_answers_a_packable_int_or_bad_request(value):
    try:
        n = parse_size(value)
    except HvError as err:
        assert err.code == "BadRequest"
    else:
        msgpack.packb(n)  # every accepted size can be sent back to a client


def good_config():
    return {"id": "x", "name": "vm", "guest": "idle",
            "processor": {"count": 1, "reserve": 0, "maximum": 100, "relative_weight": 100},
            "memory": {"dynamic": False, "startup": 64 << 20, "minimum": 64 << 20,
                       "maximum": 64 << 20, "buffer": 20, "priority": 50},
            "automatic_start_action": "Nothing", "automatic_stop_action": "TurnOff"}


@pytest.mark.parametrize("break_it, words", [
    (lambda c: c["memory"].update(startup=99999999999999999999999998 << 20), "startup"),
    (lambda c: c.pop("processor"), "processor"),
    (lambda c: c["processor"].update(count="many"), "Count"),
    (lambda c: c.update(guest="nonsense:1"), "SPEC"),
    (lambda c: c.update(devices="x"), "devices"),
    (lambda c: c.update(name=None), "name"),
])
def test_config_problem_names_what_cannot_be_served(break_it, words):
    assert config_problem(good_config()) is None
    cfg = good_config()
    break_it(cfg)
    problem = config_problem(cfg)
    assert problem and words.lower() in problem.lower()


def test_rotating_file_keeps_n_files_of_bounded_size(tmp_path):
    f = RotatingFile(tmp_path / "console.log", 1000, 3, binary=True)
    for i in range(500):
        f.write(b"%04d-line-of-output\n" % i)
    f.close()
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["console.log", "console.log.1", "console.log.2"]
    assert all(p.stat().st_size <= 1000 for p in files)
    assert (tmp_path / "console.log").read_bytes().endswith(b"0499-line-of-output\n")
    big = RotatingFile(tmp_path / "big.log", 100, 2)
    big.write("x" * 10_000)  # one write larger than a file keeps its tail only
    big.close()
    assert (tmp_path / "big.log").stat().st_size == 100


def test_rotating_file_whose_folder_went_out_of_reach_keeps_writing_bounded(tmp_path):
    """A drvhost opens its log, then enters its sandbox: the logs folder is gone from its view.
    Reaching the size bound must start the held file over, never raise (it killed the drvhost
    of a 100k-frame fuzz run at exactly 16 MiB of log)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    f = RotatingFile(logs / "drvhost-echo.log", 1000, 4)
    f.write("first line\n")
    logs.rename(tmp_path / "elsewhere")          # what the sandbox's mount namespace does to it
    for i in range(300):
        f.write(f"{i:04d}-line-of-output\n")
    f.close()
    held = tmp_path / "elsewhere" / "drvhost-echo.log"
    assert held.stat().st_size <= 1000
    assert held.read_text().endswith("0299-line-of-output\n")
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == ["drvhost-echo.log"]


def test_pidfile_release_then_stale_lock_is_not_ownership(tmp_path):
    path = tmp_path / "vmms.pid"
    first = PidFile(path)
    first.acquire()
    with pytest.raises(HvError, match="held by running process"):
        PidFile(path).acquire()
    slow = os.open(path, os.O_RDWR)  # a second daemon opened the file before the release ...
    first.release()
    assert not path.exists()
    third = PidFile(path)
    third.acquire()                   # ... a third one makes and holds the new file
    fcntl.flock(slow, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the slow one can lock the old inode,
    assert not _same_file(slow, path)  # but acquire() sees it is not the file at `path`
    os.close(slow)
    with pytest.raises(HvError):
        PidFile(path).acquire()
    third.release()


def test_pidfile_acquire_is_not_refused_by_a_holder_pid_probe(tmp_path):
    """CI found it: `host up` polls holder_pid() while the daemon starts; the probe's brief
    shared lock made the daemon's acquire() fail with "held by running process None"."""
    path = tmp_path / "hypervisor.pid"
    probe = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(probe, fcntl.LOCK_SH)                 # holder_pid() mid-probe, file still empty
    unlock = threading.Timer(0.05, lambda: os.close(probe))
    unlock.start()
    daemon = PidFile(path)
    daemon.acquire()                                  # waits out the probe instead of failing
    unlock.join()
    assert holder_pid(path) == os.getpid()
    with pytest.raises(HvError, match=f"held by running process {os.getpid()}"):
        PidFile(path).acquire()                       # a real holder is still refused at once
    daemon.release()


def test_signal_worker_never_signals_a_non_holder():
    import shutil
    import tempfile
    root = tempfile.mkdtemp(prefix="hv", dir="/tmp")
    try:
        home = Home.resolve(root)
        home.ensure()
        # a pid that does not hold the worker's pid file (ours: no lock at all) gets nothing
        assert signal_worker(home, "0" * 36, os.getpid(), 0) is False
        held = PidFile(home.worker_pidfile("0" * 36))
        held.acquire()
        assert signal_worker(home, "0" * 36, os.getpid(), 0) is True  # the holder: sent
        held.release()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_get_vm_of_max_vms_fits_one_message():
    view = {"Name": "n" * limits.MAX_NAME_CHARS, "Id": "0" * 36, "State": "Running",
            "Status": "Operating normally (waiting for the guest's first heartbeat)",
            "CPUUsage": 100, "MemoryAssigned": 1 << 40, "MemoryDemand": 1 << 40,
            "MemoryStartup": 1 << 40, "DynamicMemoryEnabled": True, "ProcessorCount": 64,
            "Uptime": 1e9, "Heartbeat": "LostCommunication", "WorkerProcessId": 4194304,
            "GuestProcessId": 4194304, "Guest": "c" * 4096, "AutomaticStartAction": "StartIfRunning",
            "AutomaticStopAction": "ShutDown", "LastExitReason": "r" * 200, "HypervisorStatus": "NotResponding"}
    reply = msgpack.packb({"id": "x" * 128, "ok": True, "result": [view] * limits.MAX_VMS})
    assert len(reply) < limits.MAX_MESSAGE_BYTES
    with pytest.raises(HvError) as exc:
        limits.check_vm_count(limits.MAX_VMS)
    assert exc.value.code == "InvalidState"


def test_docs_list_every_limit():
    text = (ROOT / "docs" / "limits.md").read_text()
    for limit in limits.LIMITS:
        assert limit.name in text, limit.name

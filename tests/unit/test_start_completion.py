"""start-vm's completion rule (parent/control/vm_ops._Start): the client is answered once the VM
is Running AND its configuration is durable, whichever comes last; a failed write undoes the
start (the worker killed, the write's error answered); a late launch failure restores the state
and configuration from before the start. The VM record is real; vmms is a recorder."""
from __future__ import annotations

import signal

from hypervisor.runtime.errors import HvError
from parent.control.vm_ops import _Start
from parent.vm_record import VmRecord
from worker.vm_state import VmState


class Handle:
    def __init__(self):
        self.signals = []

    def signal(self, sig):
        self.signals.append(sig)


class Recorder:
    def __init__(self):
        self.answers, self.saves, self.unlocked = [], [], []

    def answer(self, req, rec):
        return lambda err: self.answers.append((req, err, rec.state))

    def unlock(self, rec, op=None):
        self.unlocked.append(op)
        rec.busy = None

    def set_state(self, rec, state, **payload):
        rec.state = state

    def save_config_async(self, rec, done):
        self.saves.append(dict(rec.config))


def started(before=VmState.Off):
    vmms, handle = Recorder(), Handle()
    rec = VmRecord(config={"id": "v1", "name": "v1", "was_running": False, "last_exit_reason": "x"},
                   state=VmState.Starting, worker=handle, busy="start-vm")
    start = _Start(vmms, "req", rec, before, {"was_running": False, "last_exit_reason": "x"})
    start.handle = handle
    rec.config.update(was_running=True, last_exit_reason=None)
    start.waiter = (start.running, 1e18)
    rec.start_waiters.append(start.waiter)
    return vmms, rec, handle, start


def test_running_first_then_durable_answers_once_at_durable():
    vmms, rec, _, start = started()
    rec.start_waiters.remove(start.waiter)
    start.running(None)
    assert vmms.answers == []                 # Running, but the config is not durable yet
    start.saved(None)
    assert vmms.answers == [("req", None, VmState.Starting)]
    start.saved(None)
    assert len(vmms.answers) == 1


def test_durable_first_then_running_answers_at_running():
    vmms, rec, _, start = started()
    start.saved(None)
    assert vmms.answers == []
    rec.start_waiters.remove(start.waiter)
    start.running(None)
    assert [a[1] for a in vmms.answers] == [None]


def test_a_failed_write_kills_the_worker_and_answers_the_error():
    vmms, rec, handle, start = started()
    err = HvError("Internal", "the VM's configuration could not be saved: disk full")
    start.saved(err)
    assert handle.signals == [signal.SIGKILL]
    assert start.waiter not in rec.start_waiters
    assert vmms.answers == [("req", err, VmState.Starting)]
    start.running(None)                        # a late Running changes nothing
    assert len(vmms.answers) == 1


def test_a_late_launch_failure_restores_the_vm_as_before_the_start():
    vmms, rec, handle, start = started(before=VmState.Off)
    rec.worker = None
    err = HvError("Unavailable", "the worker fork-server failed twice: it exited")
    start.launch_failed(err)
    assert rec.state == VmState.Off and rec.busy is None
    assert rec.config["was_running"] is False and rec.config["last_exit_reason"] == "x"
    assert vmms.saves and vmms.saves[-1]["was_running"] is False   # the disk says so too
    assert start.waiter not in rec.start_waiters
    assert vmms.answers == [("req", err, VmState.Off)]
    start.saved(None)
    assert len(vmms.answers) == 1 and handle.signals == []


def test_a_worker_gone_before_durable_answers_an_error_not_its_view():
    vmms, rec, _, start = started()
    rec.start_waiters.remove(start.waiter)
    start.running(None)
    rec.worker = None                          # it exited after Running, before the fsync
    start.saved(None)
    (_, err, _), = vmms.answers
    assert isinstance(err, HvError) and err.code == "InvalidState"

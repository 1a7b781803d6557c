"""vmms's configuration writer (parent/config_writer.py): saves off the loop, group-committed,
each callback only after its file and folder were synced; ordering against synchronous saves
and removal; failures reported; pending saves flushed at close. Real files in a temp home; every
wait bounded."""
from __future__ import annotations

import json
import os
import select
import shutil
import tempfile
import time

import pytest

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from parent.config_store import CONFIG_NAME, ConfigStore
from parent.config_writer import ConfigWriter


class RecordingStore(ConfigStore):
    """The real store, with a log of each step (and a switch to make writes fail)."""

    def __init__(self, home):
        super().__init__(home)
        self.steps: list[tuple[str, str]] = []
        self.fail: set[str] = set()

    def write_file(self, vm_id, data):
        if vm_id in self.fail:
            raise OSError(28, "No space left on device")
        super().write_file(vm_id, data)
        self.steps.append(("write", vm_id))

    def sync_folder(self, vm_id):
        super().sync_folder(vm_id)
        self.steps.append(("sync", vm_id))


@pytest.fixture
def home():
    root = tempfile.mkdtemp(prefix="hvcw", dir="/tmp")   # short: a home's socket paths fit
    yield Home.resolve(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def writer(home):
    w = ConfigWriter(RecordingStore(home))
    yield w
    w.close()


def cfg(vm_id: str, **extra) -> dict:
    return {"id": vm_id, "name": vm_id, **extra}


def on_disk(w: ConfigWriter, vm_id: str) -> dict:
    return json.loads((w.store.home.vm_dir(vm_id) / CONFIG_NAME).read_text())


def drain(w: ConfigWriter, results: dict, want: int, timeout: float = 10.0) -> None:
    """Run the loop's side (eventfd → callbacks) until `want` callbacks ran."""
    deadline = time.monotonic() + timeout
    while len(results) < want:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(results)} of {want} saves reported"
        if select.select([w.fd], [], [], left)[0]:
            w.on_readable()


def test_a_burst_is_written_in_few_batches_and_each_answer_follows_its_folder_sync(writer):
    results: dict[str, HvError | None] = {}
    seen_at_callback: dict[str, list] = {}

    def done(vm_id):
        def callback(err):
            results[vm_id] = err
            seen_at_callback[vm_id] = list(writer.store.steps)
        return callback
    with writer._files:            # the thread is held at its first file: the rest pile up
        for i in range(30):
            writer.save_async(cfg(f"vm{i}", n=i), done(f"vm{i}"))
        time.sleep(0.05)           # (only lets the thread reach the lock; not synchronisation)
    drain(writer, results, 30)
    assert all(err is None for err in results.values())
    assert writer.batches <= 3, writer.batches        # group commit, not one batch per save
    for i in range(30):
        assert on_disk(writer, f"vm{i}")["n"] == i
        steps = seen_at_callback[f"vm{i}"]
        assert ("write", f"vm{i}") in steps and ("sync", f"vm{i}") in steps   # durable first
        assert steps.index(("sync", f"vm{i}")) > steps.index(("write", f"vm{i}"))
    assert not list(writer.store.home.vms_dir.glob("*/.*.tmp"))   # no temp file left behind


def test_saves_of_one_vm_collapse_into_the_newest_and_all_callbacks_run(writer):
    results = {}
    with writer._files:
        writer.save_async(cfg("a", n=1), lambda err: results.setdefault("first", err))
        writer.save_async(cfg("b", n=1), lambda err: results.setdefault("b", err))
        time.sleep(0.05)
        writer.save_async(cfg("a", n=2), lambda err: results.setdefault("second", err))
        writer.save_async(cfg("a", n=3), lambda err: results.setdefault("third", err))
    drain(writer, results, 4)
    assert results == {"first": None, "b": None, "second": None, "third": None}
    assert on_disk(writer, "a")["n"] == 3


def test_a_synchronous_save_is_never_overwritten_by_an_older_pending_one(writer):
    results = {}
    with writer._files:
        writer.save_async(cfg("blocker"), lambda err: results.setdefault("blocker", err))
        time.sleep(0.05)            # the thread now waits for the lock with "blocker" taken
        writer.save_async(cfg("a", n=1), lambda err: results.setdefault("old", err))
    writer.save(cfg("a", n=2))     # newer, synchronous: durable when it returns
    assert on_disk(writer, "a")["n"] == 2
    drain(writer, results, 2)
    assert results["old"] is None   # superseded by a durable newer save
    assert on_disk(writer, "a")["n"] == 2


def test_remove_drops_pending_saves_and_no_config_comes_back(writer):
    writer.save(cfg("gone", n=1))
    results = {}
    with writer._files:
        writer.save_async(cfg("blocker"), lambda err: results.setdefault("blocker", err))
        time.sleep(0.05)
        writer.save_async(cfg("gone", n=2), lambda err: results.setdefault("gone", err))
    writer.remove("gone")
    drain(writer, results, 2)
    assert isinstance(results["gone"], HvError)
    assert not (writer.store.home.vm_dir("gone") / CONFIG_NAME).exists()


def test_a_failed_write_is_reported_and_others_in_the_batch_still_land(writer):
    writer.store.fail.add("bad")
    results = {}
    with writer._files:
        writer.save_async(cfg("bad"), lambda err: results.setdefault("bad", err))
        writer.save_async(cfg("good"), lambda err: results.setdefault("good", err))
    drain(writer, results, 2)
    assert isinstance(results["bad"], HvError) and "No space left" in results["bad"].message
    assert results["good"] is None and on_disk(writer, "good")["id"] == "good"


def test_close_writes_what_is_pending_then_the_thread_stops(home):
    w = ConfigWriter(ConfigStore(home))
    with w._files:
        for i in range(10):
            w.save_async(cfg(f"c{i}", n=i), lambda err: None)
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < ConfigWriter.CLOSE_TIMEOUT
    assert not w._thread.is_alive()
    assert [json.loads((home.vm_dir(f"c{i}") / CONFIG_NAME).read_text())["n"] for i in range(10)] \
        == list(range(10))
    with pytest.raises(HvError):
        w.save_async(cfg("late"), lambda err: None)
    assert not os.path.exists(home.vm_dir("late"))

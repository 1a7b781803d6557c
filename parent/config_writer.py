"""vmms's configuration writer: durable saves off the loop, group-committed (issue 16).

A start-vm must not wait on the disk in vmms's loop (two fsyncs, ~9 ms under load): the loop
encodes the configuration (a snapshot; the dict keeps changing) and hands it to `save_async`;
one thread takes every pending configuration at once, writes each (temp file, fsync, rename:
parent/config_store.py), then fsyncs each folder once for the batch, and tells the loop which
saves are durable through an eventfd that vmms's poller watches. The loop runs the callbacks
(`callback(None)`, or `callback(HvError)` if the write failed); nothing else crosses threads.

Saves of one VM are ordered by a generation number: several pending saves of a VM collapse
into the newest (all their callbacks wait for it), and a write older than what is on disk is
skipped, so `save` (synchronous, for the callers that keep waiting in the loop) and `remove`
can run at any moment without an older snapshot landing after them. Only one writer touches a
VM's files at a time (`_files`). Crash safety is the store's: a kill at any moment leaves the
old or the new file, never half of one.

The thread holds no ZeroMQ object and vmms never forks (its children are fork+exec or come
from the fork-servers), so a thread is safe here. `close` writes what is pending, then stops
the thread (bounded).
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
from typing import Callable

from hypervisor.runtime.errors import HvError
from parent.config_store import ConfigStore

Done = Callable[[HvError | None], None]


class ConfigWriter:
    IDLE_WAIT = 3600.0    # s; the thread is woken by work or close(), never by a timer
    CLOSE_TIMEOUT = 10.0  # s; what close() waits for the pending writes

    def __init__(self, store: ConfigStore):
        self.store = store
        self._gen = itertools.count(1)
        self._files = threading.Lock()            # one writer of the files at a time
        self._written: dict[str, int] = {}        # vm_id -> generation on disk (under _files)
        self._cond = threading.Condition()        # guards _pending, _done, _stopping
        self._pending: dict[str, tuple[int, bytes, list[Done]]] = {}
        self._done: collections.deque = collections.deque()   # (callbacks, err) for the loop
        self._stopping = False
        self.batches = 0                          # batches written (tests, logs)
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)   # the loop's wake-up
        self._thread = threading.Thread(target=self._run, name="config-writer", daemon=True)
        self._thread.start()

    # --- the loop's side --------------------------------------------------------------------
    def save_async(self, config: dict, done: Done) -> None:
        """Save `config` (snapshotted now); `done(err)` runs in the loop once it is durable."""
        data = self.store.encode(config)
        gen = next(self._gen)
        with self._cond:
            if self._stopping:
                raise HvError("Unavailable", "vmms is stopping")
            old = self._pending.get(config["id"])
            self._pending[config["id"]] = (gen, data, (old[2] if old else []) + [done])
            self._cond.notify()

    def save(self, config: dict) -> None:
        """Save `config` now and return once it is durable (raises OSError as the store does).
        A pending save of the same VM is superseded: its callbacks get this write's result."""
        vm_id = config["id"]
        data = self.store.encode(config)
        gen = next(self._gen)
        with self._cond:
            old = self._pending.pop(vm_id, None)
        err = None
        try:
            with self._files:
                self.store.write_file(vm_id, data)
                self._written[vm_id] = gen
            self.store.sync_folder(vm_id)
        except OSError as exc:
            err = exc
            raise
        finally:
            if old is not None:
                self._post([(old[2], None if err is None else self._error(err))])

    def remove(self, vm_id: str) -> None:
        """Delete the VM's configuration; a pending or in-flight save of it is dropped."""
        with self._cond:
            old = self._pending.pop(vm_id, None)
        with self._files:
            self._written[vm_id] = next(self._gen)   # anything older is skipped
            self.store.remove(vm_id)
        if old is not None:
            self._post([(old[2], HvError("NotFound", "the VM was removed"))])

    def on_readable(self) -> None:
        """The eventfd fired: run the callbacks of what became durable (or failed)."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        while True:
            with self._cond:
                if not self._done:
                    return
                callbacks, err = self._done.popleft()
            for done in callbacks:
                done(err)

    def close(self) -> None:
        """Write what is pending, then stop the thread (bounded by CLOSE_TIMEOUT)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(self.CLOSE_TIMEOUT)
        try:
            os.close(self.fd)
        except OSError:
            pass

    # --- the thread -------------------------------------------------------------------------
    @staticmethod
    def _error(exc: OSError) -> HvError:
        return HvError("Internal", f"the VM's configuration could not be saved: {exc}")

    def _post(self, results: list) -> None:
        with self._cond:
            self._done.extend(results)
        try:
            os.eventfd_write(self.fd, 1)
        except OSError:
            pass   # closed at exit: nobody is left to tell

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait(self.IDLE_WAIT)
                if not self._pending:
                    return   # stopping, and everything is written
                batch, self._pending = self._pending, {}
            self._post(self._write_batch(batch))
            self.batches += 1

    def _write_batch(self, batch: dict) -> list:
        """Each file written and renamed, then each folder synced once: [(callbacks, err)]."""
        results, renamed = [], []
        for vm_id, (gen, data, callbacks) in batch.items():
            try:
                with self._files:
                    if self._written.get(vm_id, 0) > gen:
                        results.append((callbacks, None))   # a newer save is durable already
                        continue
                    self.store.write_file(vm_id, data)
                    self._written[vm_id] = gen
                renamed.append((vm_id, gen, callbacks))
            except OSError as exc:
                results.append((callbacks, self._error(exc)))
        for vm_id, gen, callbacks in renamed:
            try:
                self.store.sync_folder(vm_id)
                results.append((callbacks, None))
            except OSError as exc:
                with self._files:
                    removed = self._written.get(vm_id, 0) > gen and not self.store.home.vm_dir(vm_id).exists()
                results.append((callbacks, HvError("NotFound", "the VM was removed") if removed
                                else self._error(exc)))
        return results

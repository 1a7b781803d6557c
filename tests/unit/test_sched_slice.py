"""The short scheduler slice of the network data path (hypervisor/runtime/sched_slice.py):
taken by the caller only, never inherited by what it forks. Needs no root; skipped where the
kernel keeps no custom slices (before Linux 6.12) or the architecture is not known."""
from __future__ import annotations

import os

import pytest

from hypervisor.runtime import sched_slice


def in_child(fn) -> int:
    """Run fn in a forked child (the slice is per thread: keep it out of the test runner)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_short_slice_is_the_callers_own_and_not_inherited():
    before = sched_slice.current_slice()
    if before is None:
        pytest.skip("sched_getattr is not available here")

    def child() -> int:
        if not sched_slice.request_slice(0.0002):
            return 3
        if sched_slice.current_slice() != 0.0002:
            return 4                                  # a kernel without custom slices
        grandchild = in_child(lambda: 0 if sched_slice.current_slice() == before else 5)
        return grandchild

    code = in_child(child)
    if code == 4:
        pytest.skip("this kernel keeps no custom SCHED_OTHER slice (Linux < 6.12)")
    assert code == 0
    assert sched_slice.current_slice() == before      # the runner itself is untouched

"""The guest runtime's start (worker/guest/runtime.py) before its sandbox: the per-host paths
computed at import, and the environment it clears. No root needed."""
from __future__ import annotations

import os
import subprocess

from hypervisor.runtime import sandbox as sb
from worker.guest import runtime


def test_host_paths_computed_at_import_are_this_interpreters():
    assert runtime.HOST_PATHS == sb.host_paths()


def test_clear_environment_empties_os_environ_and_what_children_inherit():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # in a child: the test process keeps its environment
        code = 1
        try:
            os.close(r)
            os.environ["HVEMU_SOME_SECRET"] = "x"
            runtime.clear_environment()
            inherited = subprocess.run(["/usr/bin/env"], capture_output=True, timeout=10).stdout
            os.write(w, repr((dict(os.environ), os.getenv("PATH"), inherited)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got == repr(({}, None, b""))
    assert os.environ.get("HVEMU_SOME_SECRET") is None   # the parent's is untouched

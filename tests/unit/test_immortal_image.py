"""hypervisor/runtime/immortal_image.py (issue 16): a fork-server's image made immortal keeps
its pages shared with the children that use it. Every check runs in a fresh interpreter (an
immortalized pytest process would never free anything again)."""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from hypervisor.runtime import immortal_image
from tests.conftest import ROOT

needs_support = pytest.mark.skipif(immortal_image.supported() is not None,
                                   reason=f"immortal objects: {immortal_image.supported()}")


def run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_says_why_where_it_does_nothing():
    reason = immortal_image.supported()
    if sys.version_info[:2] in ((3, 12), (3, 13)) and sys.maxsize > 2**32 \
            and not hasattr(sys, "gettotalrefcount"):
        assert reason is None
    else:
        assert reason and ("needs" in reason or "build" in reason)


@needs_support
def test_what_was_imported_becomes_immortal_and_what_comes_after_stays_mortal():
    got = run("""
import gc, json, socket, sys
from hypervisor.runtime import immortal_image
from worker.vmbus import ring
a, b = socket.socketpair()
before = sys.getrefcount(ring.RingReader)
made = immortal_image.immortalize()
kept = [ring.RingReader] * 1000          # new references write nothing and count nothing
after = sys.getrefcount(ring.RingReader)
del kept
later = object()
del ring.RingReader                       # an immortal object losing its name: never freed
gc.collect()
print(json.dumps({"made": made, "before": before, "after": after,
                  "func": sys.getrefcount(json.dumps), "sock": sys.getrefcount(a),
                  "later": sys.getrefcount(later), "again": immortal_image.immortalize() < made}))
""")
    assert got["made"] > 10_000                       # the whole imported image
    assert got["before"] < 100 and got["after"] == got["func"] == immortal_image.IMMORTAL_REFCNT
    assert got["sock"] < 10                           # a resource stays mortal (closed when freed)
    assert got["later"] < 10                          # made after: mortal
    assert got["again"]                               # a second call finds almost nothing new


CHILD = """
import gc, os, signal, sys
import worker.guest.runtime, worker.vmwp
from hypervisor.runtime import immortal_image
if sys.argv[1] == "immortal":
    immortal_image.immortalize()
gc.freeze()
me = os.getpid()
pid = os.fork()
if pid == 0:   # uses the image: holds, for a moment, every object of every module's namespace
    for module in list(sys.modules.values()):
        values = list(vars(module).values())
        del values
    os.kill(os.getpid(), signal.SIGSTOP)
    os._exit(0)
os.kill(me, signal.SIGSTOP)    # the parent writes nothing after the fork either
"""


def private_pages(pid: int) -> int:
    """Pages of `pid` mapped by it alone (/proc/pid/pagemap bit 56), in writable mappings."""
    count = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            fields = line.split()
            if "w" not in fields[1]:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // 4096 * 8)
            for (entry,) in struct.iter_unpack("<Q", pagemap.read((end - start) // 4096 * 8)):
                count += (entry >> 63) & (entry >> 56) & 1
    return count


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def child_private_pages(mode: str) -> int:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode], cwd=ROOT)
    child = None
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the image and its child did not stop"
            if stopped(proc.pid):
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    kids = f.read().split()
                if kids and stopped(int(kids[0])):
                    child = int(kids[0])
                    break
            time.sleep(0.02)
        return private_pages(child)
    finally:
        for pid in (child, proc.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=30)


@needs_support
@pytest.mark.skipif(os.geteuid() != 0, reason="reading another process's pagemap needs root")
def test_a_child_using_an_immortal_image_copies_far_fewer_of_its_pages():
    mortal, immortal = child_private_pages("mortal"), child_private_pages("immortal")
    # measured here: ~2,270 pages against ~220 (CPython's after-fork work, the child's stack and
    # its own lists)
    assert immortal < 0.5 * mortal, (mortal, immortal)

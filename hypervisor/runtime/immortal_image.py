"""Make a fork-server's imported image immortal before it forks (issue 16).

A forked child shares its parent's pages until it writes one. In CPython every use of an object
writes its reference count, so a worker or guest that merely *calls* the code the fork-server
imported copied the pages of every function, code object, class, module dict and constant it
touched: most of a VM's private memory, and the page faults (CPU) of its start.

CPython 3.12 has immortal objects (PEP 683): an object whose reference count holds the immortal
value is never written by `Py_INCREF`/`Py_DECREF` and never freed. The interpreter makes its
static objects, small ints and interned strings immortal itself; PEP 683 names pre-fork servers
as the case for making more of them so. `immortalize()` does that for everything the
fork-server has imported — every object the collector tracks, what they refer to, and what code
objects hold — once, at its start, before it makes any socket, file or other object whose
lifetime matters. Objects made afterwards (a launch, a worker's own state) stay mortal.

What immortality changes for those objects: they are never deallocated (they live as long as
the image anyway), and `sys.getrefcount` says 4294967295. Nothing in hvemu relies on either.
Only on the builds where the immortal value is the one written here (CPython 3.12 and 3.13,
64-bit, GIL, release build); elsewhere it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import gc
import io
import mmap
import selectors
import socket
import sys
import sysconfig
import types

IMMORTAL_REFCNT = 0xFFFFFFFF   # _Py_IMMORTAL_REFCNT of 64-bit CPython 3.12/3.13 (UINT_MAX)

# resources whose release is their deallocation: kept mortal (none exist at a fork-server's
# start, but the rule costs nothing)
_KEEP_MORTAL = (io.IOBase, socket.socket, mmap.mmap, selectors.BaseSelector)


def supported() -> str | None:
    """None if this interpreter's objects can be made immortal here, else why not."""
    if sys.implementation.name != "cpython" or not (3, 12) <= sys.version_info[:2] <= (3, 13):
        return f"needs CPython 3.12 or 3.13 (this is {sys.implementation.name} {sys.version.split()[0]})"
    if sys.maxsize <= 2**32:
        return "needs a 64-bit build"
    if hasattr(sys, "gettotalrefcount"):
        return "a debug build counts references differently"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return "a free-threaded build counts references differently"
    return None


def _code_parts(code: types.CodeType) -> tuple:
    # Code objects are not tracked by the collector, so what they hold is no referent of it.
    # Only what they store: co_code, co_varnames and the like are made afresh when read.
    return (code.co_consts, code.co_names, code.co_linetable, code.co_exceptiontable,
            code.co_filename, code.co_name, code.co_qualname)


def immortalize() -> int:
    """Make every object reachable from the collector's objects immortal; the number made so
    (0 where unsupported). Call once, single-threaded, before the first fork."""
    if supported() is not None:
        return 0
    gc.collect()
    refcount, refcnt_at = sys.getrefcount, ctypes.c_ssize_t.from_address
    keep: dict[type, bool] = {}
    made = 0
    level = gc.get_objects()
    while level:   # breadth first; an object made immortal is never taken again
        fresh = {}
        for obj in level:
            if refcount(obj) < 0x80000000:
                kind = type(obj)
                mortal = keep.get(kind)
                if mortal is None:
                    mortal = keep[kind] = issubclass(kind, _KEEP_MORTAL)
                if not mortal:
                    fresh[id(obj)] = obj
        codes = []
        for key, obj in fresh.items():
            refcnt_at(key).value = IMMORTAL_REFCNT
            if type(obj) is types.CodeType:
                codes.extend(_code_parts(obj))
        made += len(fresh)
        level = gc.get_referents(*fresh.values()) + codes
    return made

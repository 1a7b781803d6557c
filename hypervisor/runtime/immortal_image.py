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
    # `co_code` is made on first reading and kept by the code object: reading it here, once
    # for the image, saves each VM 0.45 MiB (measured: 4.35 -> 3.90 MiB per idle VM).
    return (code.co_consts, code.co_names, code.co_code, code.co_linetable,
            code.co_exceptiontable, code.co_filename, code.co_name, code.co_qualname)


CHUNK = 4096   # objects taken at a time: the walk's own lists stay small (they are freed, but
               # their pages would stay in the image every fork copies)


def immortalize() -> int:
    """Make every object reachable from the collector's objects immortal; the number made so
    (0 where unsupported). Call once, single-threaded, before the first fork."""
    if supported() is not None:
        return 0
    gc.collect()
    refcount, refcnt_at = sys.getrefcount, ctypes.c_ssize_t.from_address
    keep: dict[type, bool] = {}
    made = 0
    todo = gc.get_objects()
    while todo:   # an object made immortal is never taken again
        chunk = {}
        for obj in todo[-CHUNK:]:
            if refcount(obj) < 0x80000000:
                kind = type(obj)
                mortal = keep.get(kind)
                if mortal is None:
                    mortal = keep[kind] = issubclass(kind, _KEEP_MORTAL)
                if not mortal:
                    chunk[id(obj)] = obj
        del todo[-CHUNK:]
        for key, obj in chunk.items():
            refcnt_at(key).value = IMMORTAL_REFCNT
            if type(obj) is types.CodeType:
                todo.extend(_code_parts(obj))
        made += len(chunk)
        todo.extend(ref for ref in gc.get_referents(*chunk.values())
                    if refcount(ref) < 0x80000000)
    _return_free_memory()
    return made


def _return_free_memory() -> None:
    # glibc keeps freed heap pages; handing them back means fewer pages for each fork to copy
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass

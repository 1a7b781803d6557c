"""The one table of control ops vmms answers (`CONTROL_OPS`: name → `ControlOp`), the decorator
that fills it, and the argument readers every group of ops shares.

Op names are the `hvctl` command names (CLI.md), so the table is also the list of what a client
may ask; each handler's docstring is its documentation. A handler is `handler(vmms, req)`: it
validates its arguments (BadRequest naming the field), takes the VM's lock (`vmms.lock`) when
it changes the VM (a concurrent change answers Busy), and either answers at once or returns
`DEFERRED` and replies when the worker reports.

This module imports nothing of vmms: vmms imports the table (parent/control/__init__.py loads
every group into it), never the other way round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from hypervisor.hypercall_defs import GRANULE
from hypervisor.runtime import limits
from hypervisor.runtime.arg_checks import get_str
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import Request
from hypervisor.runtime.sizes import parse_size

if TYPE_CHECKING:
    from parent.vm_record import VmRecord
    from parent.vmms import Vmms


@dataclass(frozen=True)
class ControlOp:
    handler: Callable[["Vmms", Request], object]
    doc: str


CONTROL_OPS: dict[str, ControlOp] = {}


def control_op(name: str):
    """Register the decorated `handler(vmms, req)` as control op `name` (once)."""
    def register(fn):
        assert name not in CONTROL_OPS, f"control op {name!r} registered twice"
        CONTROL_OPS[name] = ControlOp(fn, (fn.__doc__ or "").strip())
        return fn
    return register


def size_arg(args: dict, key: str, default=None) -> int | None:
    """A memory size (bytes or a size like 1GB): a positive multiple of 2 MiB."""
    value = args.get(key, default)
    if value is None:
        return None
    n = parse_size(value, key)
    if n <= 0 or n % GRANULE or n > limits.MAX_MEMORY_BYTES:
        raise HvError("BadRequest", f"argument '{key}' must be a positive multiple of 2 MiB of at "
                                    f"most {limits.MAX_MEMORY_BYTES >> 30} GiB, got {n}")
    return n


def vm_arg(vmms: "Vmms", req: Request) -> "VmRecord":
    """The VM named by argument `vm` (a name or an Id). A VM whose stored configuration cannot
    be served answers InvalidState naming the problem to every op but remove-vm (get-vm shows
    it; parent/config_checks.py)."""
    rec = vmms.find(get_str(req.args, "vm", max_len=200))
    if rec.broken is not None and req.op != "remove-vm":
        raise HvError("InvalidState", f"VM '{rec.name}' has a configuration that cannot be "
                                      f"served ({rec.broken}); remove it with remove-vm")
    return rec

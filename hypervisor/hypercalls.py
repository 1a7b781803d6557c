"""The one table of hypercalls: name → (handler, who may call it) (DESIGN.md §4).

Callers are the root partition (vmms, vmwp: they present the root credential the hypervisor
wrote at boot) or a child partition (its own per-partition credential). A child may act only on
itself. Refusals answer `Unauthorized` and are logged. Handlers validate their arguments and
call into the `Hypervisor` object (hypervisor/daemon.py), which owns the partition table and
the ledgers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from hypervisor.runtime.arg_checks import get_int, get_map, get_str
from hypervisor.cpu_scheduler import ProcessorSettings
from hypervisor.runtime.errors import HvError
from hypervisor.memory_ledger import MemorySettings
from hypervisor.runtime.rpc_server import Request

if TYPE_CHECKING:
    from hypervisor.daemon import Hypervisor

ROOT, CHILD = "root", "child"


@dataclass(frozen=True)
class Hypercall:
    handler: Callable[["Hypervisor", Request], object]
    callers: frozenset[str]
    doc: str


HYPERCALLS: dict[str, Hypercall] = {}


def hypercall(name: str, *callers: str):
    def register(fn):
        HYPERCALLS[name] = Hypercall(fn, frozenset(callers), (fn.__doc__ or "").strip())
        return fn
    return register


def processor_from(args: dict) -> ProcessorSettings:
    p = get_map(args, "processor", {})
    return ProcessorSettings(count=p.get("count", 1), reserve=p.get("reserve", 0),
                             maximum=p.get("maximum", 100),
                             relative_weight=p.get("relative_weight", 100))


def memory_from(args: dict) -> MemorySettings:
    m = get_map(args, "memory", {})
    startup = m.get("startup", 512 * 1024 * 1024)
    dynamic = m.get("dynamic", False)
    return MemorySettings(dynamic=dynamic, startup=startup,
                          minimum=m.get("minimum", startup), maximum=m.get("maximum", startup),
                          buffer=m.get("buffer", 20), priority=m.get("priority", 50))


# --- callable by anyone holding a credential -----------------------------------------------

@hypercall("ping", ROOT, CHILD)
def _ping(hv: "Hypervisor", req: Request):
    """Liveness: answers the hypervisor's pid."""
    return {"pid": hv.pid}


# --- root partition only ---------------------------------------------------------------------

@hypercall("get-host-info", ROOT)
def _host_info(hv, req):
    """Host capacity and what is still free in the CPU and memory ledgers."""
    return hv.host_info()


@hypercall("create-partition", ROOT)
def _create(hv, req):
    """Create a child partition for a VM; admits it to the CPU and memory ledgers."""
    return hv.create_partition(vm_id=get_str(req.args, "vm_id", max_len=64),
                               name=get_str(req.args, "name", max_len=256),
                               worker_pid=get_int(req.args, "worker_pid", lo=1),
                               processor=processor_from(req.args), memory=memory_from(req.args))


@hypercall("attach-guest", ROOT)
def _attach(hv, req):
    """Register the partition's guest process (it must be a child of the partition's worker)."""
    return hv.attach_guest(get_str(req.args, "partition_id"), get_int(req.args, "guest_pid", lo=1))


@hypercall("delete-partition", ROOT)
def _delete(hv, req):
    """Free a partition and everything the ledgers hold for it."""
    hv.free_partition(hv.partitions.get(get_str(req.args, "partition_id")), "deleted")
    return {}


@hypercall("suspend-partition", ROOT)
def _suspend(hv, req):
    """Stop every process of the partition (no CPU until resumed)."""
    return hv.set_suspended(hv.partitions.get(get_str(req.args, "partition_id")), True)


@hypercall("resume-partition", ROOT)
def _resume(hv, req):
    """Continue a suspended partition."""
    return hv.set_suspended(hv.partitions.get(get_str(req.args, "partition_id")), False)


@hypercall("set-processor", ROOT)
def _set_processor(hv, req):
    """Change a running partition's CPU settings (admission re-checked)."""
    return hv.set_processor(hv.partitions.get(get_str(req.args, "partition_id")), processor_from(req.args))


@hypercall("check-processor", ROOT)
def _check_processor(hv, req):
    """Would these CPU settings be admitted now? (vmms asks before it starts a worker)"""
    s = processor_from(req.args)
    s.validate(hv.host_cpus)
    hv.cpu.check_admission(s, exclude=None)
    return {}


@hypercall("set-memory", ROOT)
def _set_memory(hv, req):
    """Change a running partition's memory settings (only what Hyper-V allows while running)."""
    return hv.set_memory(hv.partitions.get(get_str(req.args, "partition_id")), memory_from(req.args))


@hypercall("list-partitions", ROOT)
def _list(hv, req):
    """Every partition with its CPU and memory ledger figures."""
    return [hv.partition_stats(p) for p in hv.partitions]


@hypercall("shutdown", ROOT)
def _shutdown(hv, req):
    """Stop the hypervisor (continues and frees every partition first)."""
    hv.running = False
    return {}


# --- a child partition, about itself only ------------------------------------------------------

@hypercall("report-memory-demand", CHILD)
def _report_demand(hv, req):
    """The guest's committed memory (Dynamic Memory pressure report). Speaks only for itself."""
    part = req.context["partition"]
    return hv.report_memory_demand(part, get_int(req.args, "demand", lo=0, hi=1 << 50))


@hypercall("get-own-stats", CHILD)
def _own_stats(hv, req):
    """The calling partition's own ledger figures."""
    return hv.partition_stats(req.context["partition"])


def authorize(hv: "Hypervisor", req: Request) -> None:
    call = HYPERCALLS.get(req.op)
    if call is None:
        raise HvError("BadRequest", f"unknown hypercall {req.op!r}")
    auth = req.auth if isinstance(req.auth, str) else None
    if auth is not None and auth == hv.root_credential:
        if ROOT in call.callers:
            req.context["caller"] = ROOT
            return
        raise HvError("Unauthorized", f"{req.op} is a child-partition hypercall")
    part = hv.partitions.by_credential.get(auth) if auth else None
    if part is not None and CHILD in call.callers:
        req.context["caller"] = CHILD
        req.context["partition"] = part
        return
    who = f"partition {part.id}" if part else "a caller without a valid credential"
    raise HvError("Unauthorized", f"{who} may not call {req.op}")



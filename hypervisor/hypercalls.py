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

from hypervisor import hypercall_defs as hc
from hypervisor.hypercall_defs import MemorySettings, ProcessorSettings, memory_settings, processor_settings
from hypervisor.runtime.arg_checks import get_bool, get_float, get_int, get_map, get_str
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import Request
from hypervisor.ledger_history import COLUMNS

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
    assert name in hc.HYPERCALL_NAMES, name   # a new hypercall is named in hypercall_defs first
    def register(fn):
        HYPERCALLS[name] = Hypercall(fn, frozenset(callers), (fn.__doc__ or "").strip())
        return fn
    return register


def processor_from(args: dict) -> ProcessorSettings:
    return processor_settings(get_map(args, "processor", {}))


def memory_from(args: dict) -> MemorySettings:
    return memory_settings(get_map(args, "memory", {}))


# --- callable by anyone holding a credential -----------------------------------------------

@hypercall(hc.PING, ROOT, CHILD)
def _ping(hv: "Hypervisor", req: Request):
    """Liveness: answers the hypervisor's pid."""
    return {"pid": hv.pid}


# --- root partition only ---------------------------------------------------------------------

@hypercall(hc.GET_HOST_INFO, ROOT)
def _host_info(hv, req):
    """Host capacity and what is still free in the CPU and memory ledgers."""
    return hv.host_info()


@hypercall(hc.CREATE_PARTITION, ROOT)
def _create(hv, req):
    """Create a child partition for a VM; admits it to the CPU and memory ledgers. With
    `guest_pid` it also attaches that guest (as attach-guest), in the same call: one round trip
    on every VM start."""
    return hv.create_partition(vm_id=get_str(req.args, "vm_id", max_len=64),
                               name=get_str(req.args, "name", max_len=256),
                               worker_pid=get_int(req.args, "worker_pid", lo=1),
                               processor=processor_from(req.args), memory=memory_from(req.args),
                               guest_pid=get_int(req.args, "guest_pid", None, lo=1))


@hypercall(hc.ATTACH_GUEST, ROOT)
def _attach(hv, req):
    """Register the partition's guest process (it must be a child of the partition's worker)."""
    return hv.attach_guest(get_str(req.args, "partition_id"), get_int(req.args, "guest_pid", lo=1))


@hypercall(hc.DELETE_PARTITION, ROOT)
def _delete(hv, req):
    """Free a partition and everything the ledgers hold for it. Idempotent: a partition the
    hypervisor already freed (its guest exited first, as on every normal stop) answers
    freed false, not an error."""
    pid = get_str(req.args, "partition_id")
    try:
        part = hv.partitions.get(pid)
    except HvError as err:
        if err.code != "NotFound":
            raise
        return {"freed": False}
    hv.free_partition(part, "deleted")
    return {"freed": True}


@hypercall(hc.SUSPEND_PARTITION, ROOT)
def _suspend(hv, req):
    """Stop every process of the partition (no CPU until resumed)."""
    return hv.set_suspended(hv.partitions.get(get_str(req.args, "partition_id")), True)


@hypercall(hc.RESUME_PARTITION, ROOT)
def _resume(hv, req):
    """Continue a suspended partition."""
    return hv.set_suspended(hv.partitions.get(get_str(req.args, "partition_id")), False)


@hypercall(hc.SET_PROCESSOR, ROOT)
def _set_processor(hv, req):
    """Change a running partition's CPU settings (admission re-checked)."""
    return hv.set_processor(hv.partitions.get(get_str(req.args, "partition_id")), processor_from(req.args))


@hypercall(hc.CHECK_PROCESSOR, ROOT)
def _check_processor(hv, req):
    """Would these CPU settings be admitted now? (vmms asks before it starts a worker)"""
    s = processor_from(req.args)
    s.validate(hv.host_cpus)
    hv.cpu.check_admission(s, exclude=None)
    return {}


@hypercall(hc.SET_MEMORY, ROOT)
def _set_memory(hv, req):
    """Change a running partition's memory settings (only what Hyper-V allows while running)."""
    return hv.set_memory(hv.partitions.get(get_str(req.args, "partition_id")), memory_from(req.args))


@hypercall(hc.LIST_PARTITIONS, ROOT)
def _list(hv, req):
    """Every partition with its CPU and memory ledger figures. `brief`: only the ledgers'
    figures (what get-vm and measure-vm show), without settings, paths or cgroup readings —
    vmms asks this for every get-vm (issue 16: 200 partitions' cgroup files cost more than
    the rest together)."""
    brief = get_bool(req.args, "brief", False)
    return [hv.partition_stats(p, brief) for p in hv.partitions]


@hypercall(hc.GET_LEDGER_HISTORY, ROOT)
def _ledger_history(hv, req):
    """The ledgers' recent past per partition (hypervisor/ledger_history.py): samples newer
    than `since` (wall time; all when absent), at most `limit` per partition, for the VMs in
    `vm_ids` (all when absent). Compact, as it is polled every second for every VM: each
    partition is a list [partition_id, vm_id, [entitled, consumed, throttled] (cumulative CPU
    seconds as of its newest sample), then one list per column of `columns`]."""
    since = get_float(req.args, "since", lo=0) if req.args.get("since") is not None else None
    limit = get_int(req.args, "limit", None, lo=0, hi=1 << 20)
    vm_ids = req.args.get("vm_ids")
    if vm_ids is not None and (not isinstance(vm_ids, list) or not all(isinstance(v, str) for v in vm_ids)):
        raise HvError("BadRequest", "argument 'vm_ids' must be a list of VM ids")
    wanted = set(vm_ids) if vm_ids is not None else None
    history = hv.history
    return {"interval": history.interval, "window": history.window, "columns": list(COLUMNS),
            "partitions": [[p.id, p.vm_id, history.last_totals(p.id), *history.read_columns(p.id, since, limit)]
                           for p in hv.partitions if wanted is None or p.vm_id in wanted]}


@hypercall(hc.SHUTDOWN, ROOT)
def _shutdown(hv, req):
    """Stop the hypervisor (continues and frees every partition first)."""
    hv.running = False
    return {}


# --- a child partition, about itself only ------------------------------------------------------

@hypercall(hc.REPORT_MEMORY_DEMAND, CHILD)
def _report_demand(hv, req):
    """The guest's committed memory (Dynamic Memory pressure report). Speaks only for itself."""
    part = req.context["partition"]
    return hv.report_memory_demand(part, get_int(req.args, "demand", lo=0, hi=1 << 50))


@hypercall(hc.GET_OWN_STATS, CHILD)
def _own_stats(hv, req):
    """The calling partition's own ledger figures."""
    return hv.partition_stats(req.context["partition"])


assert set(HYPERCALLS) == hc.HYPERCALL_NAMES, "hypercall_defs names a hypercall with no handler"


def authorize(hv: "Hypervisor", req: Request) -> None:
    call = HYPERCALLS[req.op]   # the RpcServer has already answered an unknown op
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



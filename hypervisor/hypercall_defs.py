"""What a caller of the hypervisor needs, apart from how the hypervisor does it (as OpenVMM keeps
`*_defs` apart from implementations): the hypercall names, the settings types that ride in
hypercalls (`ProcessorSettings`, `MemorySettings`) with their rules, and the one conversion from a
settings map (a VM's configuration, a hypercall's args) to those types.

vmms, vmwp and the guest import this module, never `cpu_scheduler` or `memory_ledger` (the
ledgers import their settings types from here). The handlers are in hypervisor/hypercalls.py,
registered under these names.
"""
from __future__ import annotations

from dataclasses import dataclass

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.limits import MAX_MEMORY_BYTES

MIB = 1024 * 1024
GRANULE = 2 * MIB          # every memory size is a multiple of this

# --- hypercall names (the table in hypervisor/hypercalls.py registers exactly these) -------------
PING = "ping"
GET_HOST_INFO = "get-host-info"
CREATE_PARTITION = "create-partition"
ATTACH_GUEST = "attach-guest"
DELETE_PARTITION = "delete-partition"
SUSPEND_PARTITION = "suspend-partition"
RESUME_PARTITION = "resume-partition"
SET_PROCESSOR = "set-processor"
CHECK_PROCESSOR = "check-processor"
SET_MEMORY = "set-memory"
LIST_PARTITIONS = "list-partitions"
SHUTDOWN = "shutdown"
REPORT_MEMORY_DEMAND = "report-memory-demand"
GET_OWN_STATS = "get-own-stats"
GET_LEDGER_HISTORY = "get-ledger-history"   # the ledgers' last 15 min (hypervisor/ledger_history.py)
HYPERCALL_NAMES = frozenset({
    PING, GET_HOST_INFO, CREATE_PARTITION, ATTACH_GUEST, DELETE_PARTITION, SUSPEND_PARTITION,
    RESUME_PARTITION, SET_PROCESSOR, CHECK_PROCESSOR, SET_MEMORY, LIST_PARTITIONS, SHUTDOWN,
    REPORT_MEMORY_DEMAND, GET_OWN_STATS, GET_LEDGER_HISTORY})


# --- processors (Set-VMProcessor) ------------------------------------------------------------------

def _check_int(name: str, value: object, lo: int, hi: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise HvError("BadRequest", f"{name} must be an integer {lo}-{hi}{note}, got {value!r}")


@dataclass(frozen=True)
class ProcessorSettings:
    """A partition's `Set-VMProcessor` settings; percentages are of Count CPUs."""
    count: int = 1
    reserve: int = 0
    maximum: int = 100
    relative_weight: int = 100

    def validate(self, host_cpus: int) -> None:
        _check_int("Count", self.count, 1, host_cpus, " (the host's logical processors)")
        _check_int("Reserve", self.reserve, 0, 100)
        _check_int("Maximum", self.maximum, 0, 100)
        _check_int("RelativeWeight", self.relative_weight, 1, 10000)
        if self.reserve > self.maximum:  # Hyper-V: a reservation above the limit is refused
            raise HvError("BadRequest", f"Reserve ({self.reserve} %) may not exceed "
                                        f"Maximum ({self.maximum} %)")

    @property
    def reserved_cpus(self) -> float:
        return self.reserve / 100 * self.count

    @property
    def cap_cpus(self) -> float:
        return self.maximum / 100 * self.count


def processor_settings(p: dict) -> ProcessorSettings:
    """The settings in a `processor` map (a VM's configuration or a hypercall's args); a key
    that is absent takes Hyper-V's default. Not validated: call `validate` with the host's CPUs."""
    return ProcessorSettings(count=p.get("count", 1), reserve=p.get("reserve", 0),
                             maximum=p.get("maximum", 100),
                             relative_weight=p.get("relative_weight", 100))


# --- memory (Set-VMMemory) -----------------------------------------------------------------------

def is_int(value: object) -> bool:
    # bool is a subclass of int; True must not pass for "1 byte".
    return isinstance(value, int) and not isinstance(value, bool)


def check_size(field: str, value: object) -> None:
    if not is_int(value) or value <= 0 or value % GRANULE or value > MAX_MEMORY_BYTES:
        raise HvError("BadRequest", f"{field} must be a positive multiple of 2 MiB of at most "
                                    f"{MAX_MEMORY_BYTES >> 30} GiB, got {value!r}")


@dataclass(frozen=True)
class MemorySettings:
    """One VM's memory configuration, as `Set-VMMemory` knows it."""

    dynamic: bool = False
    startup: int = 512 * MIB
    minimum: int = 512 * MIB
    maximum: int = 1024 * 1024 * MIB  # 1 TiB, Hyper-V's default MaximumBytes
    buffer: int = 20  # percent of demand kept spare, 5..2000
    priority: int = 50  # weight under contention, 0..100

    def validate(self) -> None:
        """Raise HvError("BadRequest") naming the first field that breaks a rule."""
        if not isinstance(self.dynamic, bool):
            raise HvError("BadRequest", f"dynamic must be true or false, got {self.dynamic!r}")
        for field in ("startup", "minimum", "maximum"):
            check_size(field, getattr(self, field))
        if self.dynamic and not self.minimum <= self.startup <= self.maximum:
            raise HvError(
                "BadRequest",
                f"dynamic memory needs minimum <= startup <= maximum, got minimum "
                f"{self.minimum // MIB} MB, startup {self.startup // MIB} MB, "
                f"maximum {self.maximum // MIB} MB",
            )
        if not is_int(self.buffer) or not 5 <= self.buffer <= 2000:
            raise HvError("BadRequest", f"buffer must be an integer from 5 to 2000, got {self.buffer!r}")
        if not is_int(self.priority) or not 0 <= self.priority <= 100:
            raise HvError("BadRequest", f"priority must be an integer from 0 to 100, got {self.priority!r}")


def check_running_change(old: MemorySettings, new: MemorySettings) -> None:
    """Refuse, with HvError("InvalidState") naming the field, a change a running VM cannot take.

    While running, Maximum may only go up and Minimum only down (so the current assignment stays
    inside the range); Buffer and Priority are free; dynamic and Startup are fixed.
    """
    if new.dynamic != old.dynamic:
        raise HvError("InvalidState", "dynamic memory cannot be turned on or off while the VM is running")
    if new.startup != old.startup:
        raise HvError("InvalidState", "startup cannot change while the VM is running")
    if new.minimum > old.minimum:
        raise HvError("InvalidState", "minimum can only be lowered while the VM is running")
    if new.maximum < old.maximum:
        raise HvError("InvalidState", "maximum can only be raised while the VM is running")


def memory_settings(m: dict) -> MemorySettings:
    """The settings in a `memory` map (a VM's configuration or a hypercall's args); absent keys
    take the defaults of a new VM (static, 512 MB; Minimum and Maximum = Startup)."""
    startup = m.get("startup", 512 * MIB)
    return MemorySettings(dynamic=m.get("dynamic", False), startup=startup,
                          minimum=m.get("minimum", startup), maximum=m.get("maximum", startup),
                          buffer=m.get("buffer", 20), priority=m.get("priority", 50))

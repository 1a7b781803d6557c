"""Every bound a client can run into, in one table (docs/limits.md is written from it).

Each limit is a number, the thing it bounds, and what a client gets when it hits it (always a
named error, never a hang or a crash). Code imports the constant; the docs import `LIMITS`.
A test checks that docs/limits.md lists every entry, so the table and the docs cannot drift.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hypervisor.runtime.errors import HvError

KIB, MIB, GIB, TIB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

MAX_MESSAGE_BYTES = 4 * MIB         # any frame on any ZeroMQ socket (ZMQ_MAXMSGSIZE)
MAX_VMS = 512                       # VMs per host: get-vm of all of them fits one 4 MiB reply
MAX_NAME_CHARS = 100                # VM name (parent/vm_names.py)
MAX_SETTING_KEYS = 32               # settings of one VMBus device
MAX_SETTING_KEY_CHARS = 64
MAX_SETTING_VALUE_CHARS = 1024
MAX_DEVICES_PER_VM = 16             # add-vmdevice devices (hard disk drives: 64 SCSI locations)
MAX_DRIVES_PER_VM = 64
MAX_KVP_ITEMS = 1024                # per KVP pool (worker/integration/ic_defs.py KVP_MAX_ITEMS)
MAX_MEMORY_BYTES = 256 * TIB        # any VM memory size (Hyper-V: 240 TB for a generation 2 VM)
MAX_DISK_BYTES = 64 * TIB           # a VHDX's virtual size (the format's own limit)
MAX_DISK_BLOCKS = 1 << 20           # payload blocks of a new disk: bounds new-vhd's time and memory
MAX_TIMEOUT_SECONDS = 3600.0        # any timeout argument
MAX_SUBSCRIPTIONS = 256             # distinct event topics one vmms confirms
MAX_SUBSCRIPTION_BYTES = 1024       # a subscription frame on ev.sock (topics are ~60 bytes)
CONSOLE_LOG_BYTES = 4 * MIB         # console.log before it is rotated
CONSOLE_LOG_FILES = 3               # console.log + console.log.1 .. .2
DAEMON_LOG_BYTES = 16 * MIB         # each daemon's JSON log before rotation
DAEMON_LOG_FILES = 4                # <daemon>.log + .1 .. .3


@dataclass(frozen=True)
class Limit:
    name: str
    value: str
    bounds: str
    on_hit: str


LIMITS: list[Limit] = [
    Limit("subscription frame", "1 KiB", "ev.sock (event topics are ~60 bytes)",
          "the frame is dropped by ZeroMQ (MAXMSGSIZE) and the subscriber's connection reset"),
    Limit("message size", "4 MiB", "every frame on ctl, hv and worker sockets",
          "the frame is dropped by ZeroMQ (MAXMSGSIZE) and the peer's connection reset; the daemon keeps serving"),
    Limit("VMs per host", str(MAX_VMS), "new-vm", "`InvalidState`: the host already has N VMs"),
    Limit("VM name", f"{MAX_NAME_CHARS} characters", "new-vm", "`BadRequest` naming the rule"),
    Limit("request id", "128 characters", "every request", "`BadRequest`"),
    Limit("string argument", "4096 characters (paths), 200 (VM names/Ids)", "every op", "`BadRequest` naming the field"),
    Limit("numbers", "finite, in the documented range", "sizes, timeouts, counts, percentages",
          "`BadRequest` naming the field (NaN, inf and huge values included)"),
    Limit("VM memory size", "2 MiB .. 256 TiB, multiple of 2 MiB", "new-vm, set-vmmemory", "`BadRequest` naming the field"),
    Limit("timeout arguments", f"0.1 .. {int(MAX_TIMEOUT_SECONDS)} s", "start-vm, stop-vm, …", "`BadRequest` naming the field"),
    Limit("devices per VM", str(MAX_DEVICES_PER_VM), "add-vmdevice", "`InvalidState`"),
    Limit("device settings", f"{MAX_SETTING_KEYS} keys of {MAX_SETTING_KEY_CHARS} chars, values of {MAX_SETTING_VALUE_CHARS}",
          "add-vmdevice", "`BadRequest`"),
    Limit("hard disk drives per VM", str(MAX_DRIVES_PER_VM), "add-vmharddiskdrive", "`InvalidState`"),
    Limit("a disk per VM", "1 VM", "add-vmharddiskdrive, add-vmdevice storvsp, start-vm",
          "`InvalidState` naming the VM that has it"),
    Limit("KVP items per pool", str(MAX_KVP_ITEMS), "add-vmkvp", "`BadRequest`"),
    Limit("disk size", "64 TiB", "new-vhd", "`BadRequest`"),
    Limit("disk blocks", f"{MAX_DISK_BLOCKS} blocks (64 TiB at 64 MiB blocks)", "new-vhd",
          "`BadRequest` naming the smallest block size that fits"),
    Limit("event subscriptions", f"{MAX_SUBSCRIPTIONS} distinct topics per vmms", "ev.sock subscribers",
          "a further topic is not confirmed: the client's subscribe answers `Timeout` (logged)"),
    Limit("console log", f"{CONSOLE_LOG_BYTES // MIB} MiB x {CONSOLE_LOG_FILES} files", "a VM's console.log",
          "rotated: console.log.1, .2 kept, older output dropped"),
    Limit("daemon logs", f"{DAEMON_LOG_BYTES // MIB} MiB x {DAEMON_LOG_FILES} files", "logs/<daemon>.log",
          "rotated: <daemon>.log.1 .. .3 kept"),
]


def check_finite(key: str, value: float, lo: float, hi: float) -> float:
    """A number that must be finite and in lo..hi; BadRequest naming `key` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HvError("BadRequest", f"argument '{key}' must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise HvError("BadRequest", f"argument '{key}' must be a finite number, got {value}")
    if not lo <= value <= hi:
        raise HvError("BadRequest", f"argument '{key}' must be in {lo:g}..{hi:g}, got {value:g}")
    return value


def check_vm_count(count: int) -> None:
    if count >= MAX_VMS:
        raise HvError("InvalidState", f"the host already has {count} VMs (at most {MAX_VMS}); remove one first")

"""Control ops for virtual hard disks (CLI.md "Virtual hard disks"): New-VHD, Get-VHD and a VM's
hard disk drives (Add-, Get-, Remove-VMHardDiskDrive), registered in parent/control/op_table.py.

A VM's drives live in its configuration, `config["hard_disk_drives"]`: a list of
`{"path", "controller_type", "controller_number", "controller_location"}`, one SCSI controller
(number 0, locations 0-63) as on a generation 2 VM; each becomes a `storvsp` device when the VM
starts (parent/vm_devices.py `storage_devices`). Paths are absolute (hvctl resolves relative
ones against the caller's working directory) and kept as given; "the same disk" means the same
file (device and inode, or the same resolved path when a file is missing).

Rules:
- Every file is opened read-only through the disk backend and validated before it is used
  (`inspect`): a corrupt or hostile file is refused with the backend's BadRequest naming the
  problem, and nothing is ever written to it here.
- A disk is attached to at most one VM of the host (a second attach answers InvalidState naming
  the VM). Drives change only while the VM is Off: hot-add and hot-remove need the storage
  driver (storvsp over VMBus), which is not there yet.
- At start-vm (`check_disks_for_start`, called by the start-vm op and by vmms's automatic start
  at host boot, before the VM leaves Off) every attached disk is validated again and must not
  be in use: by another running VM of this host (InvalidState naming it) or by any other
  process holding the file's lock (the backend's flock; Busy naming the process, and its VM
  when it is one of this host's workers).

Differencing disks: `new-vhd` with `differencing` / `parent_path` opens the parent (and its
whole chain) read-only and checks it — a missing parent is NotFound, a chain whose links no
longer match is ChainBroken — then `create_differencing` writes the child with the parent's
geometry and a locator. Merging (Merge-VHD) is not an op: `hvctl merge-vhd` does it in its own
process, as the cmdlet does, so a long merge never holds vmms's loop; the disks' locks keep it
off disks in use.

Performance: these ops run on vmms's loop. Creating or validating a disk costs about 0.2 s per
million BAT entries (a 64 TiB disk with the default 64 MiB blocks has one million) plus, for a
fixed disk, one posix_fallocate; new-vhd refuses more than limits.MAX_DISK_BLOCKS blocks, so a
tiny block size on a huge disk can no longer stall the loop or grow vmms's memory.
"""
from __future__ import annotations

import os
import stat

from hypervisor.runtime import limits
from hypervisor.runtime.arg_checks import get_bool, get_int, get_str
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.sizes import parse_size
from parent.control.op_table import control_op, vm_arg
from parent.storage.disk_backend import create_disk, format_for_path, open_disk
from parent.storage.vhdx import create_differencing
from parent.storage.vhdx.metadata import MAX_BLOCK_SIZE, auto_block_size
from parent.vm_devices import DEVICES_KEY, DRIVES_KEY, STORAGE_DRIVER, drives_of
from worker.vm_state import VmState

CONTROLLER_TYPE = "SCSI"
CONTROLLER_NUMBER = 0
LOCATIONS = 64            # per SCSI controller, as in Hyper-V
MAX_PATH = 4096


# --- arguments -----------------------------------------------------------------------------------

def path_arg(args: dict, key: str = "path") -> str:
    """An absolute path to a disk image of a supported format, normalised."""
    path = get_str(args, key, max_len=MAX_PATH)
    if not path or "\0" in path:
        raise HvError("BadRequest", f"argument '{key}' must be a non-empty path without NUL bytes")
    if not os.path.isabs(path):
        raise HvError("BadRequest", f"argument '{key}' must be an absolute path, got {path!r} "
                                    "(hvctl resolves relative paths against its working directory)")
    path = os.path.normpath(path)
    format_for_path(path)  # BadRequest naming the supported extensions
    return path


def bytes_arg(args: dict, key: str, default=None) -> int | None:
    """A byte count given as an integer or a size like 10GB."""
    value = args.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise HvError("BadRequest", f"argument '{key}' must be a size, got {type(value).__name__}")
    n = parse_size(value, key)
    if n <= 0:
        raise HvError("BadRequest", f"argument '{key}' must be a positive number of bytes, got {n}")
    return n


def location_arg(args: dict, default=None) -> int | None:
    return get_int(args, "controller_location", default, lo=0, hi=LOCATIONS - 1)


# --- disks ---------------------------------------------------------------------------------------

def file_identity(path: str) -> tuple:
    """What makes two paths the same disk: (device, inode), or the resolved path if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", st.st_dev, st.st_ino)


def lock_holders(path: str) -> list[int]:
    """Pids holding a flock on `path` (from /proc/locks; best effort, [] when unknown)."""
    try:
        st = os.stat(path)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key and parts[4].isdigit():
            pids.append(int(parts[4]))
    return pids


def describe_process(vmms, pid: int) -> str:
    for rec in vmms.vms.values():
        if rec.worker is not None and rec.worker.pid == pid:
            return f"process {pid} (the worker of VM '{rec.name}')"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = " ".join(f.read().replace(b"\0", b" ").decode(errors="replace").split())
    except OSError:
        cmd = ""
    return f"process {pid} ({cmd[:80]})" if cmd else f"process {pid}"


def in_use_error(vmms, path: str, err: HvError) -> HvError:
    """The backend's Busy, naming who holds the disk when that can be found out."""
    holders = [describe_process(vmms, p) for p in lock_holders(path) if p != os.getpid()]
    if not holders:
        return err
    return HvError("Busy", f"{path}: the disk is in use by {', '.join(holders)}")


def inspect(vmms, path: str, read_attached: bool = False) -> dict:
    """Get-VHD's view of the file at `path`, after full validation; writes nothing.
    `read_attached`: a disk a running VM holds is read without the lock (get-vhd) instead of
    answering Busy (what start and attach checks need)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise HvError("NotFound", f"{path}: no such file") from None
    except PermissionError:
        raise HvError("Unauthorized", f"{path}: permission denied") from None
    except OSError as exc:
        raise HvError("BadRequest", f"{path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise HvError("BadRequest", f"{path}: not a regular file")
    owners = [rec for rec, _ in attachments(vmms, path)]
    try:
        disk = open_disk(path, writable=False)
    except HvError as err:
        if err.code != "Busy" or not read_attached or not any(r.worker for r in owners):
            raise in_use_error(vmms, path, err) if err.code == "Busy" else err
        disk = open_disk(path, writable=False, lock=False)  # a running VM's disk: read, as Get-VHD
    try:
        info = disk.info()
    finally:
        disk.close()
    info["Path"] = path
    info["Attached"] = any(rec.worker is not None for rec in owners)   # open by a running VM
    info["VMName"] = owners[0].name if owners else None                # whose drive it is
    return info


# --- drives --------------------------------------------------------------------------------------

def drive_view(rec, drive: dict) -> dict:
    """Get-VMHardDiskDrive's object for one drive."""
    ctype, number, location = (drive["controller_type"], drive["controller_number"],
                               drive["controller_location"])
    return {"VMName": rec.name, "VMId": rec.id, "ControllerType": ctype,
            "ControllerNumber": number, "ControllerLocation": location, "Path": drive["path"],
            "Name": f"Hard Drive on {ctype} controller number {number} at location {location}"}


def where(drive: dict) -> str:
    return f"{drive['controller_type']} {drive['controller_number']}:{drive['controller_location']}"


def disk_paths(rec) -> list[tuple[str, str]]:
    """Every disk file a VM uses, with where it is attached: its hard disk drives and its
    storvsp devices given a `path` setting (add-vmdevice storvsp)."""
    out = [(d["path"], where(d)) for d in drives_of(rec)]
    for dev in rec.config.get(DEVICES_KEY) or []:
        path = (dev.get("settings") or {}).get("path") if isinstance(dev, dict) else None
        if dev.get("driver") == STORAGE_DRIVER and isinstance(path, str) and path:
            out.append((path, f"storvsp device {dev.get('instance_id')}"))
    return out


def attachments(vmms, path: str, skip=None):
    """(VM record, where) for every attachment of the file `path` to another VM than `skip`."""
    ident = file_identity(path)
    for rec in vmms.vms.values():
        if rec is skip:
            continue
        for other_path, at in disk_paths(rec):
            if file_identity(other_path) == ident:
                yield rec, at


def check_disk_free(vmms, rec, path: str) -> None:
    """The one-disk-one-VM rule, the one place it lives: every path that attaches a disk to a
    VM (add-vmharddiskdrive, add-vmdevice storvsp) goes through here, and start-vm re-checks
    it (check_disks_for_start). AlreadyExists for the same VM, InvalidState naming the other."""
    ident = file_identity(path)
    for own, at in disk_paths(rec):
        if file_identity(own) == ident:
            raise HvError("AlreadyExists", f"{path} is already attached to VM '{rec.name}' at {at}")
    for other, at in attachments(vmms, path, skip=rec):
        raise HvError("InvalidState", f"{path} is already attached to VM '{other.name}' at "
                                      f"{at}; a disk can belong to one VM at a time")


def check_changeable(rec, verb: str) -> None:
    """Drives change only while the VM is Off and nothing else is being done to it."""
    if rec.worker is not None:
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}: {verb} needs the "
                                      "storage driver; change drives while the VM is Off")
    if rec.state != VmState.Off:
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}; change drives "
                                      "while the VM is Off")
    if rec.busy is not None:
        raise HvError("Busy", f"VM '{rec.name}' is busy with {rec.busy}; try again")


def save_drives(vmms, rec, drives: list[dict]) -> None:
    old = rec.config.get(DRIVES_KEY)
    rec.config[DRIVES_KEY] = sorted(drives, key=lambda d: d["controller_location"])
    try:
        vmms.save_config(rec)
    except BaseException:
        if old is None:
            rec.config.pop(DRIVES_KEY, None)
        else:
            rec.config[DRIVES_KEY] = old
        raise


def check_disks_for_start(vmms, rec) -> None:
    """Before a VM starts: each attached disk is valid and used by no one else (see module doc).
    Raises the HvError that refuses the start."""
    for path, _ in disk_paths(rec):
        for other, _ in attachments(vmms, path, skip=rec):
            if other.worker is not None:
                raise HvError("InvalidState", f"VM '{rec.name}' cannot start: disk {path} is in "
                                              f"use by running VM '{other.name}'")
        try:
            inspect(vmms, path)
        except HvError as err:
            raise HvError(err.code, f"VM '{rec.name}' cannot start: {err.message}") from None


# --- ops -----------------------------------------------------------------------------------------

def check_block_count(size: int, block_size: int | None) -> None:
    """A new disk has at most limits.MAX_DISK_BLOCKS payload blocks: its BAT is built and
    checked on vmms's loop, so this bounds new-vhd's time (~0.2 s) and memory (~10 MB).
    The automatic block size always fits; a tiny block size on a huge disk is refused."""
    if size > limits.MAX_DISK_BYTES:
        raise HvError("BadRequest", f"argument 'size_bytes' must be at most 64 TiB, got {size}")
    block = block_size or auto_block_size(size)
    if -(-size // block) > limits.MAX_DISK_BLOCKS:
        need = block
        while -(-size // need) > limits.MAX_DISK_BLOCKS and need < MAX_BLOCK_SIZE:
            need *= 2
        raise HvError("BadRequest", f"argument 'block_size_bytes': a {size}-byte disk in "
                                    f"{block}-byte blocks has more than {limits.MAX_DISK_BLOCKS} "
                                    f"blocks; use a block size of at least {need} bytes")


def new_differencing(vmms, req, path: str) -> dict:
    """Create the differencing disk `path` over args `parent_path` (absolute); optional
    `block_size_bytes` (default 2 MiB, as Hyper-V) and `size_bytes` (must be the parent's).
    Answers Get-VHD's object."""
    if req.args.get("parent_path") is None:
        raise HvError("BadRequest", "a differencing disk needs 'parent_path'")
    parent = path_arg(req.args, "parent_path")
    if req.args.get("fixed"):
        raise HvError("BadRequest", "a disk is either differencing or fixed: choose one")
    parent_info = inspect(vmms, parent)   # NotFound / ChainBroken / BadRequest as get-vhd
    size = bytes_arg(req.args, "size_bytes")
    if size is not None and size != parent_info["Size"]:
        raise HvError("BadRequest", f"a differencing disk has its parent's size "
                                    f"({parent_info['Size']} bytes), not {size}")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise HvError("NotFound", f"{folder}: no such directory")
    create_differencing(path, parent, block_size=bytes_arg(req.args, "block_size_bytes"))
    vmms.log.info("vhd_created", path=path, parent=parent, differencing=True)
    return inspect(vmms, path)


@control_op("new-vhd")
def new_vhd(vmms, req):
    """Create a VHDX (New-VHD). Args: path (absolute), size_bytes, fixed or dynamic (default),
    block_size_bytes (1-256 MiB, power of two; default by size as qemu), logical_sector_size_bytes
    (512 or 4096; default 512), physical_sector_size_bytes (512 or 4096; default 4096).
    Answers Get-VHD's object."""
    path = path_arg(req.args)
    if req.args.get("parent_path") is not None or get_bool(req.args, "differencing", False):
        return new_differencing(vmms, req, path)
    size = bytes_arg(req.args, "size_bytes")
    if size is None:
        raise HvError("BadRequest", "missing argument 'size_bytes'")
    fixed = get_bool(req.args, "fixed", False)
    dynamic = get_bool(req.args, "dynamic", not fixed)
    if fixed == dynamic:
        raise HvError("BadRequest", "a disk is either fixed or dynamic: choose exactly one")
    options = {"fixed": fixed, "block_size": bytes_arg(req.args, "block_size_bytes"),
               "logical_sector": get_int(req.args, "logical_sector_size_bytes", 512),
               "physical_sector": get_int(req.args, "physical_sector_size_bytes", 4096)}
    check_block_count(size, options["block_size"])
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise HvError("NotFound", f"{folder}: no such directory")
    create_disk(path, size, **options)
    vmms.log.info("vhd_created", path=path, size=size, fixed=fixed)
    return inspect(vmms, path)


@control_op("get-vhd")
def get_vhd(vmms, req):
    """A disk image's properties (Get-VHD): Path, VhdFormat, VhdType, Size, FileSize, BlockSize,
    LogicalSectorSize, PhysicalSectorSize, ParentPath, Attached (a running VM has it open),
    VMName (the VM whose drive it is, or null). The file is validated, never written; a
    running VM's disk is read without taking its lock."""
    return inspect(vmms, path_arg(req.args), read_attached=True)


@control_op("add-vmharddiskdrive")
def add_vmharddiskdrive(vmms, req):
    """Attach a disk to a VM (VM Off). Args: vm, path (absolute), controller_location (0-63;
    default the lowest free). The disk is validated first and may not be attached to another
    VM. Answers the drive (Get-VMHardDiskDrive's object)."""
    rec = vm_arg(vmms, req)
    path = path_arg(req.args)
    location = location_arg(req.args)
    check_changeable(rec, "hot-add")
    drives = drives_of(rec)
    used = {d["controller_location"] for d in drives}
    if location is None:
        free = [n for n in range(LOCATIONS) if n not in used]
        if not free:
            raise HvError("InvalidState", f"VM '{rec.name}': every location of {CONTROLLER_TYPE} "
                                          f"controller {CONTROLLER_NUMBER} is taken")
        location = free[0]
    elif location in used:
        taken = next(d for d in drives if d["controller_location"] == location)
        raise HvError("AlreadyExists", f"VM '{rec.name}' already has {taken['path']} at "
                                       f"{where(taken)}")
    check_disk_free(vmms, rec, path)
    inspect(vmms, path)
    if not os.access(path, os.R_OK | os.W_OK):
        raise HvError("Unauthorized", f"{path}: permission denied (the VM needs to read and "
                                      "write it)")
    drive = {"path": path, "controller_type": CONTROLLER_TYPE,
             "controller_number": CONTROLLER_NUMBER, "controller_location": location}
    save_drives(vmms, rec, drives + [drive])
    vmms.log.info("drive_added", vm_id=rec.id, vm_name=rec.name, path=path, location=location)
    return drive_view(rec, drive)


@control_op("get-vmharddiskdrive")
def get_vmharddiskdrive(vmms, req):
    """A VM's hard disk drives, by controller location."""
    rec = vm_arg(vmms, req)
    return [drive_view(rec, d) for d in drives_of(rec)]


@control_op("remove-vmharddiskdrive")
def remove_vmharddiskdrive(vmms, req):
    """Detach the drive at controller_location from a VM (VM Off); the file is kept. Answers
    the removed drive."""
    rec = vm_arg(vmms, req)
    location = location_arg(req.args)
    if location is None:
        raise HvError("BadRequest", "missing argument 'controller_location'")
    check_changeable(rec, "hot-remove")
    drives = drives_of(rec)
    gone = [d for d in drives if d["controller_location"] == location]
    if not gone:
        raise HvError("NotFound", f"VM '{rec.name}' has no drive at {CONTROLLER_TYPE} "
                                  f"{CONTROLLER_NUMBER}:{location}")
    save_drives(vmms, rec, [d for d in drives if d["controller_location"] != location])
    vmms.log.info("drive_removed", vm_id=rec.id, vm_name=rec.name, path=gone[0]["path"],
                  location=location)
    return drive_view(rec, gone[0])

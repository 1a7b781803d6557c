"""VHDX files in tests: patching bytes (to make a file corrupt or hostile on purpose) and asking
qemu-img, the reference implementation, what it makes of a file."""
from __future__ import annotations

import json
import struct
import subprocess

from parent.storage.vhdx.layout import MIB

BAT_OFFSET = 2 * MIB   # hvemu's layout (create()): headers and log in the first 2 MiB, then the BAT


def patch_bytes(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def set_bat(path, index: int, value: int) -> None:
    """Overwrite BAT entry `index` of a disk hvemu created."""
    patch_bytes(path, BAT_OFFSET + 8 * index, struct.pack("<Q", value))


def qemu_img(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)


def qemu_info(path) -> dict:
    """`qemu-img info` of a VHDX file, parsed; fails the test if qemu-img refuses it."""
    done = qemu_img("info", "-f", "vhdx", "--output=json", str(path))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)

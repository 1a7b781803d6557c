"""Durable VM configurations: one folder per VM under `<home>/vms/<VMId>/`, `config.json`
written atomically (temp file, fsync, rename, fsync of the folder), so a kill at any moment
leaves either the old or the new configuration, never half of one.

`save` does it all at once (the caller waits for the disk); `write_file` + `sync_folder` are
the same two steps apart, for parent/config_writer.py, which writes off vmms's loop and syncs
each folder once per batch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from hypervisor.runtime.paths import Home

CONFIG_NAME = "config.json"


def write_replace(path: Path, data: bytes) -> None:
    """The file's new content in a temp file, fsynced, renamed over it (its folder not synced:
    the rename is durable once `sync_dir(path.parent)` returned)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def sync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_atomic(path: Path, data: bytes) -> None:
    write_replace(path, data)
    sync_dir(path.parent)


class ConfigStore:
    def __init__(self, home: Home):
        self.home = home

    @staticmethod
    def encode(config: dict) -> bytes:
        return json.dumps(config, indent=2, sort_keys=True).encode()

    def save(self, config: dict) -> None:
        self.write_file(config["id"], self.encode(config))
        self.sync_folder(config["id"])

    def write_file(self, vm_id: str, data: bytes) -> None:
        """`data` (an encoded configuration) renamed into place; durable after `sync_folder`."""
        folder = self.home.vm_dir(vm_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_replace(folder / CONFIG_NAME, data)

    def sync_folder(self, vm_id: str) -> None:
        sync_dir(self.home.vm_dir(vm_id))

    def load_all(self, log=None) -> list[dict]:
        out = []
        if not self.home.vms_dir.exists():
            return out
        for folder in sorted(self.home.vms_dir.iterdir()):
            path = folder / CONFIG_NAME
            if not path.is_file():
                continue
            try:
                config = json.loads(path.read_text())
                if not isinstance(config, dict) or config.get("id") != folder.name:
                    raise ValueError("id does not match its folder")
                out.append(config)
            except (OSError, ValueError) as exc:
                if log is not None:  # keep the file for a person to look at; never delete it
                    log.error("config_unreadable", path=str(path), error=str(exc))
        return out

    def remove(self, vm_id: str) -> None:
        """Delete the configuration; files the user put in the folder (disks) stay."""
        folder = self.home.vm_dir(vm_id)
        for name in (CONFIG_NAME, "console.log", *(f"console.log.{n}" for n in range(1, 10))):
            (folder / name).unlink(missing_ok=True)
        import shutil
        shutil.rmtree(folder / "Saved", ignore_errors=True)   # a Saved VM's state goes with it
        shutil.rmtree(folder / "Snapshots", ignore_errors=True)   # checkpoints' memory (disks stay)
        try:
            folder.rmdir()
        except OSError:
            pass

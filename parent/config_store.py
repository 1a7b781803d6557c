"""Durable VM configurations: one folder per VM under `<home>/vms/<VMId>/`, `config.json`
written atomically (temp file, fsync, rename, fsync of the folder), so a kill at any moment
leaves either the old or the new configuration, never half of one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from hypervisor.runtime.paths import Home

CONFIG_NAME = "config.json"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class ConfigStore:
    def __init__(self, home: Home):
        self.home = home

    def save(self, config: dict) -> None:
        folder = self.home.vm_dir(config["id"])
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True).encode())

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

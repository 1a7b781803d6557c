"""The host's driver model (DESIGN.md §9, `hvctl host up --driver-model`), kept in the home.

`microkernel` (default): each driver plugin runs in its own `drvhost` process outside the
hypervisor. `monolithic`: the same plugins run inside the `hypervisor` process, which also maps
every partition's RAM — the design the book argues against, built so that the same fault and
the same malice can be run against both (scripts/experiment).

The model is chosen at `host up` and stored in `<home>/host.json`; it cannot change while the
host runs. `get-vmhost` shows it as `DriverModel` (`Microkernel`, `Monolithic`).
"""
from __future__ import annotations

import json
import os

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home

MICROKERNEL, MONOLITHIC = "microkernel", "monolithic"
MODELS = (MICROKERNEL, MONOLITHIC)
DISPLAY = {MICROKERNEL: "Microkernel", MONOLITHIC: "Monolithic"}


def parse(value: object) -> str:
    """A model name (case-insensitive) or BadRequest naming the choices."""
    if isinstance(value, str) and value.lower() in MODELS:
        return value.lower()
    raise HvError("BadRequest", f"unknown driver model {value!r}: use {' or '.join(MODELS)}")


def _settings_file(home: Home):
    return home.root / "host.json"


def load(home: Home) -> str:
    """The model kept in the home (microkernel when none was ever chosen)."""
    try:
        data = json.loads(_settings_file(home).read_text())
    except (OSError, ValueError):
        return MICROKERNEL
    try:
        return parse(data.get("driver_model", MICROKERNEL) if isinstance(data, dict) else None)
    except HvError:
        return MICROKERNEL


def save(home: Home, model: str) -> None:
    """Keep the model in the home (temp file, fsync, rename)."""
    path = _settings_file(home)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"driver_model": parse(model)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

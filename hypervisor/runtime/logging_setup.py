"""structlog configured to write one JSON line per event to `<home>/logs/<daemon>.log`.

The file is size-bounded and rotated (limits.DAEMON_LOG_BYTES × DAEMON_LOG_FILES, see
log_rotation.py), so a flood of bad frames cannot fill the disk. Every process calls
`configure()` once at start; code then binds context
(`log.bind(vm_id=...)`) so every line about a VM carries its id.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import structlog

# at module top, not in configure(): a worker forked from the fork-server then finds them
# loaded (a module imported after fork is private memory in every worker; issue 16)
from hypervisor.runtime.limits import DAEMON_LOG_BYTES, DAEMON_LOG_FILES
from hypervisor.runtime.log_rotation import RotatingFile


def configure(logs_dir: Path, name: str) -> structlog.stdlib.BoundLogger:
    logs_dir.mkdir(parents=True, exist_ok=True)
    stream = _LineFlushed(RotatingFile(logs_dir / f"{name}.log", DAEMON_LOG_BYTES, DAEMON_LOG_FILES))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(process=name, pid=os.getpid())


class _LineFlushed:
    """Each log line reaches the file at once (as line buffering did), rotated by size."""

    def __init__(self, target):
        self.target = target

    def write(self, text: str) -> int:
        n = self.target.write(text)
        self.target.flush()
        return n

    def flush(self) -> None:
        self.target.flush()

"""structlog configured to write one JSON line per event to `<home>/logs/<daemon>.log`.

The file is size-bounded and rotated (limits.DAEMON_LOG_BYTES × DAEMON_LOG_FILES, see
log_rotation.py), so a flood of bad frames cannot fill the disk. Every process calls
`configure()` once at start; code then binds context
(`log.bind(vm_id=...)`) so every line about a VM carries its id.

A fork-server configures its children's log before it forks (`configure(..., warm=True)`); a
child then calls `inherited()`: the same processors and the same descriptor (O_APPEND, so
lines from many processes land whole), its own pid bound — no per-process set-up, and the
pages of that set-up stay shared (issue 16: it was ~1 MiB and ~1 ms in every `vmwp`).
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


_stream: "_LineFlushed | None" = None    # what configure() set up in this process


def configure(logs_dir: Path, name: str, warm: str | None = None) -> structlog.stdlib.BoundLogger:
    """Log to `<logs_dir>/<name>.log`. `warm`: log this event once now, so that a process
    forked later finds every piece of the logging path created and run once (fork-servers)."""
    global _stream
    logs_dir.mkdir(parents=True, exist_ok=True)
    stream = _stream = _LineFlushed(RotatingFile(logs_dir / f"{name}.log", DAEMON_LOG_BYTES,
                                                 DAEMON_LOG_FILES))
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
    log = structlog.get_logger().bind(process=name, pid=os.getpid())
    if warm:
        log.info(warm)
    return log


def inherited(logs_dir: Path, name: str) -> structlog.stdlib.BoundLogger:
    """In a process forked after configure(): the same log with this process's pid (following
    a rotation another writer did meanwhile); configure() if nothing was set up."""
    if _stream is None or _stream.target.path != logs_dir / f"{name}.log":
        return configure(logs_dir, name)
    _stream.target.follow()
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

"""structlog configured to write one JSON line per event to `<home>/logs/<daemon>.log`.

Every process calls `configure()` once at start; code then binds context
(`log.bind(vm_id=...)`) so every line about a VM carries its id.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import structlog


def configure(logs_dir: Path, name: str) -> structlog.stdlib.BoundLogger:
    logs_dir.mkdir(parents=True, exist_ok=True)
    stream = open(logs_dir / f"{name}.log", "a", buffering=1, encoding="utf-8")
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

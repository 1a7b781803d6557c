"""The `secret` guest program (CLI.md "Guest programs"): something only this partition knows,
held in its own RAM.

It writes `HVEMU-SECRET:` followed by 64 random hex digits at a random page of its guest RAM,
keeps it there, and publishes only KVP `secret-sha256` = the hex SHA-256 of that whole string.
Whoever claims to have read the secret can be checked against the hash, and the host never
learns the secret itself (scripts/experiment counts the secrets a driver managed to read).
"""
from __future__ import annotations

import hashlib
import mmap
import secrets

PREFIX = b"HVEMU-SECRET:"


class SecretProgram:
    def __init__(self, memory, services):
        if memory is None:
            services.publish("secret-sha256", "error: no guest RAM")
            return
        text = PREFIX + secrets.token_hex(32).encode()
        from worker.guest.program_state import STATE_AREA_SIZE   # the runtime's own pages
        pages = max(1, (memory.assigned - STATE_AREA_SIZE) // mmap.PAGESIZE)
        offset = STATE_AREA_SIZE + secrets.randbelow(pages) * mmap.PAGESIZE
        memory.mm[offset:offset + len(text)] = text
        services.publish("secret-sha256", hashlib.sha256(text).hexdigest())

    def tick(self, now: float) -> None: ...

    def next_deadline(self) -> float:
        return float("inf")

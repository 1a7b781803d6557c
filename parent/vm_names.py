"""What a VM name may be, and how a VM argument (name or Id) is told apart. Pure."""
from __future__ import annotations

import re
import uuid

from hypervisor.runtime.errors import HvError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,99}$")


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name != name.strip():
        raise HvError("BadRequest", f"invalid VM name {name!r}: 1-100 characters, letters, digits, "
                                    "space and ._()+- , starting with a letter or digit")
    return name


def looks_like_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, AttributeError, TypeError):
        return False

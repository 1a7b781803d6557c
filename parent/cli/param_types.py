"""Click parameter types hvctl's commands share, so a bad value is refused naming the option as
the user typed it.

    SIZE     512MB, 1.5GB, 512MiB, 2GiB or plain bytes (binary units, as PowerShell reads them);
             a size that does not parse is `BadRequest` (exit 1, as vmms's own refusal would
             be): `hvctl: BadRequest: --minimum-bytes: size '3XB' is not …`
    BOOL     (a usage error, exit 2, when it does not parse) true/false (also 1/0, yes/no, $true/$false), as Set-VMMemory's switches
    choice() a case-insensitive choice that hands the command the canonical spelling
"""
from __future__ import annotations

import click

from hypervisor.runtime.errors import HvError


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        from hypervisor.runtime.sizes import parse_size
        try:
            return parse_size(value)
        except HvError as err:
            typed = max(param.opts, key=len) if param is not None and param.opts else "size"
            raise HvError("BadRequest", f"{typed}: {err.message}") from None


class BoolType(click.ParamType):
    name = "true|false"
    TRUE = {"true", "1", "yes", "$true", "on"}
    FALSE = {"false", "0", "no", "$false", "off"}

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        v = str(value).strip().lower()
        if v in self.TRUE:
            return True
        if v in self.FALSE:
            return False
        self.fail(f"expected true or false, got {value!r}", param, ctx)


SIZE = SizeType()
BOOL = BoolType()


def choice(values) -> click.Choice:
    return click.Choice(list(values), case_sensitive=False)

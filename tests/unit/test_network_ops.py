"""Network control ops' pure checks: without root, Internal and External switches are refused
with an error that names what is missing (issue 12's "Bad input"); Private needs no root."""
from __future__ import annotations

import pytest

from hypervisor.runtime.errors import HvError
from parent.control import network_ops


@pytest.mark.parametrize("kind, missing", [("Internal", "host TAP"), ("External", "packet socket")])
def test_without_root_a_host_facing_switch_names_what_is_missing(monkeypatch, kind, missing):
    monkeypatch.setattr(network_ops.os, "geteuid", lambda: 1000)
    with pytest.raises(HvError) as exc:
        network_ops.need_root(kind)
    assert exc.value.code == "Unauthorized"
    assert "CAP_NET_ADMIN" in exc.value.message and missing in exc.value.message
    assert "Private switches work without it" in exc.value.message


def test_as_root_a_host_facing_switch_is_not_refused(monkeypatch):
    monkeypatch.setattr(network_ops.os, "geteuid", lambda: 0)
    network_ops.need_root("Internal")
    network_ops.need_root("External")

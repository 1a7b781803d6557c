"""Pure parsers: sizes (PowerShell's binary units), guest SPECs, VM names, hvctl's globals."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.sizes import parse_size
from parent.cli.main import split_globals
from parent.vm_names import check_name, looks_like_id
from worker.guest.programs import parse_spec

MB, GB = 1 << 20, 1 << 30


@pytest.mark.parametrize("text,value", [("512MB", 512 * MB), ("1GB", GB), ("2048MB", 2048 * MB),
                                        ("1.5GB", 3 * GB // 2), ("4096", 4096), ("1gb", GB),
                                        ("64KB", 65536), (" 2MB ", 2 * MB), (7, 7)])
def test_sizes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "lots", "1.3B", "-5MB", "1e3", "1..5GB", True, None, "12XB"])
def test_bad_sizes(text):
    with pytest.raises(HvError) as exc:
        parse_size(text)
    assert exc.value.code == "BadRequest"


@given(st.text(max_size=20))
def test_size_parser_never_crashes(text):
    try:
        assert parse_size(text) >= 0
    except HvError as err:
        assert err.code == "BadRequest"


@pytest.mark.parametrize("spec,kind", [("idle", "idle"), ("cpu-burn", "cpu-burn"),
                                       ("command:echo hi", "command"), ("memory-demand:200MB", "memory-demand"),
                                       ("disk-write:8192:abc", "disk-write"), ("disk-sha256:4096", "disk-sha256")])
def test_guest_specs(spec, kind):
    assert parse_spec(spec).kind == kind
    assert parse_spec(str(parse_spec(spec))) == parse_spec(spec)


@pytest.mark.parametrize("spec", ["", "fly", "command:", "memory-demand:", "disk-write:1000:s",
                                  "disk-write:4096", "idle:extra", "x" * 5000])
def test_bad_guest_specs(spec):
    with pytest.raises(HvError):
        parse_spec(spec)


@given(st.text(max_size=60))
def test_spec_parser_never_crashes(text):
    try:
        parse_spec(text)
    except HvError as err:
        assert err.code == "BadRequest"


def test_vm_names():
    assert check_name("web 1 (test)") == "web 1 (test)"
    for bad in ("", " lead", "trail ", "a/b", "-x", "x" * 101, 5, "tab\there"):
        with pytest.raises(HvError):
            check_name(bad)
    assert looks_like_id("0069a617-696e-494e-83e1-9a5dd4eafe27")
    assert not looks_like_id("web1")


def test_global_options_anywhere():
    assert split_globals(["--json", "get-vm"]) == (["get-vm"], None, True)
    assert split_globals(["get-vm", "--json", "--home", "/h"]) == (["get-vm"], "/h", True)
    assert split_globals(["--home=/h", "get-vm", "a"]) == (["get-vm", "a"], "/h", False)
    assert split_globals(["set-vm", "a", "--", "--json"]) == (["set-vm", "a", "--", "--json"], None, False)

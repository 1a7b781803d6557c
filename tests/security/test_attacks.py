"""The attack suite as a test (tests/security/attack_suite.py; the same rows as `scripts/attack`):
every attack from a hostile guest and from a hostile third-party driver plugin is refused or
confined, and the victim VM, its disk and the host are unharmed. Needs root (Full isolation)."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import kill_home, short_home, Host
from tests.security import attack_suite
from hypervisor.runtime.paths import Home
from parent.host_control import host_down

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="Full isolation (a uid and namespaces "
                                 "per partition and driver) needs root; CI runs as root")]


@pytest.fixture(scope="module")
def attack_rows():
    home = short_home()
    attack_suite.install_evil_driver()
    host = Host(home)
    try:
        yield attack_suite.run(home, log=lambda m: None)
    finally:
        try:
            host_down(Home.resolve(home))
        finally:
            kill_home(host)
            attack_suite.uninstall_evil_driver()
            shutil.rmtree(home, ignore_errors=True)


def test_every_attack_is_refused_or_confined(attack_rows):
    failed = [r for r in attack_rows if not r["ok"]]
    assert not failed, attack_suite.table(failed)
    sources = {r["source"] for r in attack_rows}
    assert sources == {"guest", "driver", "check"}
    names = " ".join(r["attack"] for r in attack_rows)
    for needed in ("root.cred", "ctl.sock", "hv.sock", "/dev/shm", "memfd", "/mem", "signal",
                   "ptrace", "/root", "VHDX", "fill /tmp", "fork bomb", "heap", "setsid",
                   "disk it does not serve", "hypercall"):
        assert needed in names, needed

"""The book's argument, run short (issue 11): scripts/experiment with 3 VMs per host, every
experiment driver against a microkernel host and a monolithic one. The monolithic host must
lose every VM to the faulty update and let the snoop read the other guest's secret and the
attacker change the ledgers; the microkernel host must lose no VM and keep the hypervisor up
(one device stalls, its drvhost is restarted). Whether the microkernel also keeps the secret
and the ledgers safe depends on the sandboxes (DESIGN.md §9): asserted when the host reports
`IsolationMode` `Full`, shown otherwise."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def experiment():
    # six hosts at a time: the suite's short version; figures come from the sequential run
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "experiment"), "--vms", "3", "--json",
                           "--jobs", "6"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(660)
def test_a_faulty_driver_takes_every_vm_down_only_in_the_monolithic_model(experiment):
    micro = experiment["results"]["microkernel"]["faulty-update"]
    mono = experiment["results"]["monolithic"]["faulty-update"]
    assert micro["crashed"] == "drvhost" and micro["hypervisor_up"]
    assert micro["running"] == 3 and micro["lost_io"] == 0
    assert micro["back_s"] is not None and micro["stall_ms"] > 0
    assert mono["crashed"] == "hypervisor" and not mono["hypervisor_up"]
    assert mono["running"] == 0 and mono["lost_io"] == 2
    assert mono["recover_s"] > 0


@pytest.mark.timeout(660)
def test_snooping_and_attacking_drivers_inside_the_hypervisor_get_everything(experiment):
    snoop = experiment["results"]["monolithic"]["snoop"]
    attack = experiment["results"]["monolithic"]["attack"]
    assert snoop["secrets_total"] == 1 and snoop["secrets_read"] == 1
    assert "own address space 1" in snoop["reply"] or "own address space 2" in snoop["reply"]
    assert attack["hypervisor_up"] and len(attack["ledger_changes"]) >= 3
    # it stopped another VM: its own answer says so (get-vm may not show the VM Off yet)
    assert "killed the guest of" in attack["reply"] or attack["running"] < 3
    assert experiment["table"]["monolithic"]["hypervisor still up (faulty update)"] == "no (aborted)"


@pytest.mark.timeout(660)
def test_the_microkernel_contains_them_as_far_as_its_sandboxes_go(experiment):
    snoop = experiment["results"]["microkernel"]["snoop"]
    attack = experiment["results"]["microkernel"]["attack"]
    assert snoop["driver_model"] == "Microkernel" and snoop["hypervisor_up"] and attack["hypervisor_up"]
    assert "(own address space 0," in snoop["reply"]   # a drvhost maps no guest RAM
    if snoop["isolation"] != "Full":
        pytest.skip(f"isolation {snoop['isolation']}: drvhost shares the host's uid, so what it "
                    "reads and changes is shown, not asserted")
    assert snoop["secrets_read"] == 0
    assert attack["ledger_changes"] == [] and attack["running"] == 3

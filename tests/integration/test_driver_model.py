"""`hvctl host up --driver-model` (issue 11): a monolithic host serves devices from inside the
hypervisor process (no drvhost exists) with every guest's RAM mapped there; the model is kept
in the home, shown by get-vmhost, and changing it needs host down."""
from __future__ import annotations

import psutil
import pytest

from tests.conftest import short_home, start_host, stop_host, wait_until

pytestmark = pytest.mark.integration


def test_a_monolithic_host_serves_devices_from_the_hypervisor_and_keeps_its_model(request):
    host = start_host(short_home(), "--host-memory", "2GB", "--root-reserve", "256MB",
                      "--driver-model", "monolithic")
    try:
        assert host.call("get-vmhost")["DriverModel"] == "Monolithic"
        host.new_vm("m1", guest="device-stream:echo:200")
        host.call("add-vmdevice", vm="m1", driver="echo")
        host.start("m1")
        done = wait_until(lambda: host.call("get-vmkvp", vm="m1").get("device-stream"), 30,
                          what="the stream to finish")
        assert done.startswith("done completed=200 duplicates=0 errors=0")
        hv = host.pid_of("hypervisor")
        echo = next(d for d in host.call("get-vmhostdriver") if d["Name"] == "echo")
        assert echo["ProcessId"] == hv and echo["State"] == "Running"
        titles = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
        assert not [t for t in titles if t.startswith("drvhost") and str(host.home) in t]
        guest = host.vm("m1")["GuestProcessId"]
        guest_ram = {line.split()[-1] for line in open(f"/proc/{guest}/maps") if "/dev/shm/" in line}
        hv_maps = open(f"/proc/{hv}/maps").read()
        assert guest_ram and all(path in hv_maps for path in guest_ram)   # the hypervisor maps it

        rc, out, _ = host.hvctl("host", "up", "--driver-model", "microkernel", check=False)
        assert rc == 1 and out["error"]["code"] == "InvalidState" and "host down" in out["error"]["message"]
        rc, _, err = host.hvctl("host", "up", "--driver-model", "bogus", check=False)
        assert rc == 2 and "monolithic" in err

        host.close()
        host.hvctl("host", "down")
        host.hvctl("host", "up")                       # no option: the kept model
        assert host.call("get-vmhost")["DriverModel"] == "Monolithic"
        host.close()
        host.hvctl("host", "down")
        rc, out, _ = host.hvctl("host", "up", "--driver-model", "microkernel")
        assert out["DriverModel"] == "Microkernel"
        assert host.call("get-vmhost")["DriverModel"] == "Microkernel"
    finally:
        stop_host(host, request)

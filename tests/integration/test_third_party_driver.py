"""A third-party driver: a separate package, built in a temporary directory, pip-installed into
this environment (offline: --no-build-isolation --no-deps --no-index), serves a tiny device in a
running VM without any change to hvemu. It is uninstalled afterwards."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import wait_until
from tests.helpers.host_views import driver, kvp, summary

pytestmark = pytest.mark.integration

PACKAGE = "hvemu-upper-driver"

PYPROJECT = """
[build-system]
requires = ["setuptools>=70.1"]
build-backend = "setuptools.build_meta"

[project]
name = "hvemu-upper-driver"
version = "2.1.0"
description = "an example third-party hvemu driver: a device that upper-cases what it is sent"

[project.entry-points."hvemu.drivers"]
upper = "hvemu_upper:UpperDriver"

[tool.setuptools]
packages = ["hvemu_upper"]
"""

MODULE = '''
"""A tiny VMBus device served from the parent partition: it answers `request {seq, data}` with
the data upper-cased, and counts what it served per channel."""
from parent.drivers.driver_api import Driver, DriverError


class UpperDriver(Driver):
    version = "2.1"
    class_id = "upper"
    ring_size = 64 * 1024

    def open(self, channel):
        channel.state = 0

    def request(self, channel, kind, body):
        if kind != "request" or not isinstance(body.get("data"), str):
            raise DriverError(f"upper cannot handle {kind!r}")
        channel.state += 1
        return {"seq": body.get("seq"), "data": body["data"].upper()}
'''


def pip(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def upper_driver(tmp_path_factory):
    src = tmp_path_factory.mktemp("upper-driver")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "hvemu_upper").mkdir()
    (src / "hvemu_upper" / "__init__.py").write_text(textwrap.dedent(MODULE))
    done = pip("install", "--no-build-isolation", "--no-deps", "--no-index", "-q", str(src))
    assert done.returncode == 0, done.stdout + done.stderr
    yield PACKAGE
    pip("uninstall", "-y", "-q", PACKAGE)


def test_a_pip_installed_driver_serves_a_device_in_a_running_vm(upper_driver, host):
    upper = driver(host, "upper")
    assert upper["Package"] == PACKAGE and upper["State"] == "Stopped"
    host.new_vm("t1", guest="device-stream:upper:40")
    host.start("t1")
    dev = host.call("add-vmdevice", vm="t1", driver="upper")   # hot-added to the running VM
    done = wait_until(lambda: summary(host, "t1"), 20, what="the stream over the third-party device")
    assert done["completed"] == 40 and done["errors"] == 0 and done["duplicates"] == 0
    assert kvp(host, "t1")["device-stream-last"] == "HELLO 39"
    upper = driver(host, "upper")
    assert upper["State"] == "Running" and upper["Version"] == "2.1" and upper["ClassId"] == "upper"
    assert upper["PackageVersion"] == "2.1.0"
    [view] = host.call("get-vmdevice", vm="t1")
    assert view["InstanceId"] == dev["InstanceId"] and view["ChannelState"] == "Open"
    assert driver(host, "echo")["State"] == "Stopped"   # other drivers stay unloaded

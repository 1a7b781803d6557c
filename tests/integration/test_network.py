"""Networking (issue 12): real TCP/IP between real network stacks across hvemu's virtual switch.

One host for the module, three VMs whose program is a shell on COM1 (`GuestShell`): the tools
run inside each partition's network namespace, as they would in a VM. Every frame crosses
VMBus and the netvsp driver host. Internal and External switches need root (a host TAP, a
packet socket): they skip with the reason without it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from tests.conftest import start_host, stop_host, short_home, wait_until
from hypervisor.runtime.errors import HvError

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="Internal/External switches need root (host TAP, packet socket)")
TOOLS = [t for t in ("ping", "iperf3", "tcpdump", "ip") if subprocess.run(["which", t], capture_output=True).returncode]
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(TOOLS), reason=f"missing tools {TOOLS} (scripts/bootstrap.sh installs them)")]
NET = "10.231.7"            # addresses only inside namespaces these tests create
GT = f"/tmp/hvemu-net-{uuid.uuid4().hex[:8]}"   # files in the guests' /tmp (private once sandboxed)


class GuestShell:
    """A guest whose program is /bin/sh on COM1: run a command, get (status, output)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        wait_until(lambda: self._connect(path), 10, what=f"COM1 at {path}")
        self.buf = b""
        self.n = 0

    def _connect(self, path) -> bool:
        try:
            self.sock.connect(str(path))
            return True
        except OSError:
            return False

    def run(self, cmd: str, timeout: float = 30.0) -> tuple[int, str]:
        self.n += 1
        marker = f"__END{self.n}__"
        self.sock.sendall(f"{cmd}\necho {marker}$?\n".encode())
        pattern = re.compile(re.escape(marker).encode() + rb"(\d+)\n")
        deadline = time.monotonic() + timeout
        while not pattern.search(self.buf):
            left = deadline - time.monotonic()
            assert left > 0, f"{cmd!r} did not finish in {timeout} s: {self.buf[-500:]!r}"
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            assert chunk, "COM1 closed"
            self.buf += chunk
        m = pattern.search(self.buf)
        out, self.buf = self.buf[:m.start()].decode(errors="replace"), self.buf[m.end():]
        return int(m.group(1)), out

    def ok(self, cmd: str, timeout: float = 30.0) -> str:
        rc, out = self.run(cmd, timeout)
        assert rc == 0, f"{cmd!r} exited {rc}: {out[-1500:]}"
        return out

    def close(self):
        self.sock.close()


def adapter(host, vm) -> dict:
    return host.call("get-vmnetworkadapter", vm=vm)[0]


def wait_address(host, vm, ip, timeout=20.0, shell=None):
    try:
        wait_until(lambda: ip in adapter(host, vm)["IPAddresses"], timeout, interval=0.2,
                   what=f"{vm} to report {ip}")
    except AssertionError:
        inside = shell.run("ip -br addr", 10)[1] if shell is not None else "?"
        raise AssertionError(f"{vm} did not report {ip}: inside {inside!r}; host pool "
                             f"{host.call('get-vmkvp', vm=vm, pool='host')}; guest pool "
                             f"{host.call('get-vmkvp', vm=vm)}") from None


@pytest.fixture(scope="module")
def net(request, tmp_path_factory):
    """Switch 'lan' (Private) with VMs a (.1), b (.2) and m (the mirror, no address)."""
    host = start_host(short_home(), "--host-memory", "2GB", "--root-reserve", "256MB")
    tmp = tmp_path_factory.mktemp("net")
    shells = {}
    try:
        host.hvctl("new-vmswitch", "lan", "--switch-type", "Private")
        for vm, ip in (("a", f"{NET}.1/24"), ("b", f"{NET}.2/24"), ("m", None)):
            host.new_vm(vm, guest="command:/bin/sh")
            host.hvctl("set-vmcomport", vm, "--number", "1", "--path", str(tmp / f"{vm}.sock"))
            host.hvctl("add-vmnetworkadapter", vm, "--switch-name", "lan")
            if ip:
                host.hvctl("set-vmnetworkadapter", vm, "--ip-address", ip)
        host.start("a", "b", "m")
        for vm in ("a", "b", "m"):
            shells[vm] = GuestShell(tmp / f"{vm}.sock")
        wait_address(host, "a", f"{NET}.1")
        wait_address(host, "b", f"{NET}.2")
        shells["b"].ok("iperf3 -s >/dev/null 2>&1 &")
        shells["b"].ok("for i in $(seq 100); do ss -ltn | grep -q :5201 && break; sleep 0.1; done")
        yield host, shells, tmp
    finally:
        for s in shells.values():
            try:
                s.run(f"rm -rf {GT}-*", 10)
            except (AssertionError, OSError):
                pass
            s.close()
        stop_host(host, request)


def test_private_switch_ping_and_iperf3(net):
    host, sh, _ = net
    out = sh["a"].ok(f"ping -c 3 -i 0.2 -W 2 {NET}.2")
    assert "3 received" in out
    out = sh["a"].ok(f"iperf3 -c {NET}.2 -t 1 -J", timeout=30)
    result = json.loads(out[out.index("{"):])
    assert result["end"]["sum_received"]["bytes"] > 1 << 20
    a = adapter(host, "a")
    assert a["Status"] == "Ok" and a["SwitchName"] == "lan" and a["MacAddress"].startswith("00155D")
    assert a["PacketsSent"] > 100 and a["BytesSent"] > 1 << 20
    inside = sh["a"].ok("ip -o link show eth0")
    assert a["MacAddress"].lower() in inside.replace(":", "")


def test_vlan_10_cannot_reach_vlan_20(net):
    host, sh, _ = net
    try:
        host.call("set-vmnetworkadaptervlan", vm="a", access=True, vlan_id=10)
        host.call("set-vmnetworkadaptervlan", vm="b", access=True, vlan_id=20)
        assert adapter(host, "a")["VlanId"] == 10
        sh["a"].ok("ip neigh flush dev eth0")
        rc, out = sh["a"].run(f"ping -c 2 -i 0.2 -W 1 {NET}.2")
        assert rc != 0 and "0 received" in out
        host.call("set-vmnetworkadaptervlan", vm="b", access=True, vlan_id=10)
        sh["a"].ok("ip neigh flush dev eth0")      # forget the failed resolution
        sh["a"].ok(f"ping -c 2 -i 0.2 -W 2 {NET}.2")
    finally:
        host.call("set-vmnetworkadaptervlan", vm="a", untagged=True)
        host.call("set-vmnetworkadaptervlan", vm="b", untagged=True)


def test_mirror_destination_captures_the_source_traffic(net):
    host, sh, _ = net
    pcap, log = f"{GT}-mirror.pcap", f"{GT}-tcpdump.log"   # the guest's own /tmp
    host.call("set-vmnetworkadapter", vm="a", port_mirroring="Source")
    host.call("set-vmnetworkadapter", vm="m", port_mirroring="Destination")
    try:
        sh["m"].ok(f"rm -f {pcap}; tcpdump -Z root -i eth0 -U -n -w {pcap} -c 4 icmp >{log} 2>&1 &")
        rc, text = sh["m"].run(f"for i in $(seq 100); do grep -q listening {log} && break; "
                               f"sleep 0.1; done; grep -q listening {log} || {{ cat {log}; false; }}")
        assert rc == 0, text
        sh["a"].ok(f"ping -c 2 -i 0.2 -W 2 {NET}.2")
        sh["m"].ok("wait", timeout=10)          # tcpdump ends after 4 packets
        out = sh["m"].ok(f"tcpdump -Z root -n -r {pcap}")
        assert f"{NET}.1 > {NET}.2: ICMP echo request" in out
        assert f"{NET}.2 > {NET}.1: ICMP echo reply" in out
    finally:
        host.call("set-vmnetworkadapter", vm="a", port_mirroring="None")
        host.call("set-vmnetworkadapter", vm="m", port_mirroring="None")


def test_iperf3_survives_kill_of_the_switch_host(net):
    host, sh, _ = net
    before = next(d for d in host.call("get-vmhostdriver") if d["Name"] == "netvsp")
    host.call("set-vmnetworkadaptervlan", vm="a", access=True, vlan_id=7)
    host.call("set-vmnetworkadaptervlan", vm="b", access=True, vlan_id=7)
    try:
        out = f"{GT}-iperf.json"      # in the guest
        start = adapter(host, "a")["BytesSent"]
        sh["a"].ok(f"iperf3 -c {NET}.2 -t 4 -J >{out} 2>&1 &")
        try:
            wait_until(lambda: adapter(host, "a")["BytesSent"] > start + (8 << 20), 20,
                       interval=0.2, what="the stream to be running")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; iperf3 said: {sh['a'].run(f'cat {out}', 10)[1][-800:]!r}; "
                                 f"adapter {adapter(host, 'a')}") from None
        os.kill(before["ProcessId"], signal.SIGKILL)
        sh["a"].ok("wait", timeout=30)
        text = sh["a"].ok(f"cat {out}")
        result = json.loads(text[text.index("{"):])
        assert "error" not in result, result.get("error")
        assert result["end"]["sum_received"]["bytes"] > 1 << 20
        after = wait_until(lambda: next((d for d in host.call("get-vmhostdriver")
                                         if d["Name"] == "netvsp" and d["State"] == "Running"
                                         and d["Channels"] == 3), None), 10, what="netvsp back")
        assert after["ProcessId"] != before["ProcessId"] and after["Restarts"] > before["Restarts"]
        # its state came back: the VLAN still holds, and frames flow again
        assert adapter(host, "a")["VlanId"] == 7
        sh["a"].ok(f"ping -c 2 -i 0.2 -W 2 {NET}.2")
        rc, _ = sh["m"].run(f"ping -c 1 -W 1 {NET}.2")   # m is untagged: not in VLAN 7
        assert rc != 0
    finally:
        host.call("set-vmnetworkadaptervlan", vm="a", untagged=True)
        host.call("set-vmnetworkadaptervlan", vm="b", untagged=True)


@needs_root
def test_internal_switch_host_reaches_http_server(net):
    host, sh, _ = net
    sw = host.hvctl("new-vmswitch", "inner", "--switch-type", "Internal")[1]
    ifname = sw["HostInterfaceName"]
    assert sw["SwitchType"] == "Internal" and len(ifname) <= 15
    try:
        subprocess.run(["ip", "addr", "add", "10.231.8.1/24", "dev", ifname], check=True)
        host.call("connect-vmnetworkadapter", vm="b", switch_name="inner")
        host.call("set-vmnetworkadapter", vm="b", ip_address=["10.231.8.2/24"])
        wait_address(host, "b", "10.231.8.2", shell=sh["b"])
        sh["b"].ok(f"mkdir -p {GT}-www && echo 'hello from the VM' >{GT}-www/hello.txt")
        sh["b"].ok(f"cd {GT}-www && (python3 -m http.server 8088 --bind 10.231.8.2 >/dev/null 2>&1 &) ; cd /")

        def fetch():
            try:
                with urllib.request.urlopen("http://10.231.8.2:8088/hello.txt", timeout=3) as r:
                    return r.read()
            except OSError:
                return None
        assert wait_until(fetch, 20, interval=0.5, what="http.server through the Internal switch") \
            == b"hello from the VM\n"
    finally:
        sh["b"].run("pkill -f 'http.server 8088'")
        host.call("connect-vmnetworkadapter", vm="b", switch_name="lan")
        host.call("set-vmnetworkadapter", vm="b", ip_address=[f"{NET}.2/24"])
        host.call("remove-vmswitch", name="inner", force=True)
    assert subprocess.run(["ip", "link", "show", ifname], capture_output=True).returncode != 0


@needs_root
def test_external_switch_reaches_the_network_beyond_a_veth(net):
    host, sh, _ = net
    tag = uuid.uuid4().hex[:6]
    ns, near, far = f"hvnet{tag}", f"hvx{tag}a", f"hvx{tag}b"
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("ip", "netns", "add", ns)
    try:
        run("ip", "link", "add", near, "type", "veth", "peer", "name", far)
        run("ip", "link", "set", far, "netns", ns)
        run("ip", "-n", ns, "addr", "add", "10.231.9.1/24", "dev", far)
        run("ip", "-n", ns, "link", "set", far, "up")
        run("ip", "link", "set", near, "up")
        sw = host.hvctl("new-vmswitch", "outer", "--net-adapter-name", near)[1]
        assert sw["SwitchType"] == "External" and sw["NetAdapterName"] == near
        rc, out, err = host.hvctl("new-vmswitch", "outer2", "--net-adapter-name", near, check=False)
        assert rc == 1 and out["error"]["code"] == "InvalidState"
        host.call("connect-vmnetworkadapter", vm="a", switch_name="outer")
        host.call("set-vmnetworkadapter", vm="a", ip_address=["10.231.9.2/24"])
        wait_address(host, "a", "10.231.9.2", shell=sh["a"])
        assert "2 received" in sh["a"].ok("ping -c 2 -i 0.2 -W 2 10.231.9.1")
        out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", "10.231.9.2"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        host.call("connect-vmnetworkadapter", vm="a", switch_name="lan")
        host.call("set-vmnetworkadapter", vm="a", ip_address=[f"{NET}.1/24"])
        try:
            host.call("remove-vmswitch", name="outer", force=True)
        except Exception:  # noqa: BLE001 — cleanup; the interface goes below anyway
            pass
        subprocess.run(["ip", "link", "del", near], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_bad_input_is_refused_by_name_and_changes_nothing(net):
    host, _, _ = net

    def counters_off(rows):
        return [{k: x for k, x in d.items() if not k.startswith(("Packets", "Bytes", "Dropped"))}
                for d in rows]

    def state():
        return host.call("get-vmswitch"), counters_off(host.call("get-vmnetworkadapter", vm="a"))

    def refused(code, op, **args):
        before = state()
        with pytest.raises(HvError) as info:
            host.call(op, **args)
        assert info.value.code == code, (op, args, info.value)
        assert state() == before, (op, args)
        return info.value.message

    # through hvctl: exit status 1 and the error's name
    rc, out, _ = host.hvctl("connect-vmnetworkadapter", "a", "--switch-name", "nosuch", check=False)
    assert rc == 1 and out["error"]["code"] == "NotFound"
    rc, out, _ = host.hvctl("set-vmnetworkadaptervlan", "a", "--access", "--vlan-id", "4095", check=False)
    assert rc == 1 and out["error"]["code"] == "BadRequest"
    refused("AlreadyExists", "new-vmswitch", name="LAN", switch_type="Private")
    assert "--force" in refused("InvalidState", "remove-vmswitch", name="lan")
    refused("BadRequest", "set-vmnetworkadaptervlan", vm="a", access=True, vlan_id=0)
    refused("BadRequest", "set-vmnetworkadapter", vm="a", maximum_bandwidth=-1)
    refused("BadRequest", "set-vmnetworkadapter", vm="a", ip_address=["10.0.0.300/24"])
    refused("BadRequest", "set-vmnetworkadapter", vm="a", port_mirroring="Both")
    refused("InvalidState", "add-vmnetworkadapter", vm="a", name="second")     # running
    if ROOT:
        refused("NotFound", "new-vmswitch", name="ext", net_adapter_name="hvnosuch0")
    host.new_vm("off1")
    try:
        refused("BadRequest", "add-vmnetworkadapter", vm="off1", static_mac_address="00155D0A0B")
        refused("BadRequest", "add-vmnetworkadapter", vm="off1", static_mac_address="01005E000001")
        mac = host.call("get-vmnetworkadapter", vm="a")[0]["MacAddress"]
        refused("AlreadyExists", "add-vmnetworkadapter", vm="off1", static_mac_address=mac)
        row = host.call("add-vmnetworkadapter", vm="off1", static_mac_address="00:15:5d:01:02:03")
        assert row["MacAddress"] == "00155D010203" and row["Status"] == "Off"
        host.call("new-vmswitch", name="spare", switch_type="Private")
        host.call("connect-vmnetworkadapter", vm="off1", switch_name="spare")
        refused("InvalidState", "remove-vmswitch", name="spare")
        assert host.call("remove-vmswitch", name="spare", force=True)["disconnected"] == 1
        assert host.call("get-vmnetworkadapter", vm="off1")[0]["SwitchName"] is None
    finally:
        host.call("remove-vm", vm="off1", force=True)

"""Control ops for virtual switches and network adapters, registered in the one table
(parent/control/op_table.py `CONTROL_OPS`); names and keys as ../shared/CLI.md (Networking).

Configuration (durable): the host's switches in `<home>/switches.json` ([{id, name, type,
host_interface, net_adapter}], written atomically); a VM's adapters in its config as
`network_adapters` ([{instance_id, name, mac, static, switch, vlan, mirroring,
max_bandwidth, spoofing, ip_addresses, gateway}], in adapter order: the guest's eth<index>).

Where it goes:
- each adapter is a VMBus device of the `netvsp` driver (parent/vm_devices.py `net_devices`),
  with a stable instance id: its switch port;
- the whole switch configuration (`driver_config`) is pushed to the netvsp driver host on
  every change and each time it becomes ready (a restarted switch host gets its ports, VLANs,
  mirroring and limits back at once);
- addresses go to the guest through KVP (`NetworkAdapter.<MAC>.IPAddresses`,
  `.DefaultGateway`; the guest runtime applies them and reports what it has);
- an Internal switch's host interface is a persistent TAP vmms creates here (name derived
  from the switch, <= 15 characters), so it outlives the switch host's crashes.

Every argument is checked before anything changes; refusals are named errors.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import socket
import uuid
from typing import TYPE_CHECKING

from hypervisor.runtime.arg_checks import get_bool, get_str
from hypervisor.runtime.errors import HvError
from hypervisor.runtime.rpc_server import DEFERRED
from parent.control.op_table import control_op, vm_arg
from parent.vm_devices import ADAPTERS_KEY, adapters_of
from worker.vm_state import VmState
from worker.vmbus import netvsp_protocol as proto
from parent.config_store import write_atomic
from parent.network.host_ports import open_host_port
from worker import tap_device

if TYPE_CHECKING:
    from parent.vmms import Vmms, VmRecord

DRIVER = proto.DRIVER
SWITCHES_FILE = "switches.json"
SWITCH_TYPES = ("Private", "Internal", "External")
SWITCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,63}$")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+#-]{0,63}$")
DEFAULT_ADAPTER = "Network Adapter"
MAX_ADAPTERS = 8                     # synthetic adapters per VM, as Hyper-V
HYPERV_OUI = bytes.fromhex("00155D")
KVP_PREFIX = "NetworkAdapter."


# --- switches on disk ----------------------------------------------------------------------------

def switches(vmms) -> list[dict]:
    cached = vmms.__dict__.get("_vmswitches")
    if cached is None:
        path = vmms.home.root / SWITCHES_FILE
        try:
            cached = json.loads(path.read_text())
            if not isinstance(cached, list):
                cached = []
        except FileNotFoundError:
            cached = []
        except (OSError, ValueError) as exc:
            vmms.log.error("switches_unreadable", path=str(path), error=str(exc))
            cached = []
        vmms.__dict__["_vmswitches"] = cached
    return cached


def save_switches(vmms, items: list[dict]) -> None:
    write_atomic(vmms.home.root / SWITCHES_FILE, json.dumps(items, indent=1).encode())
    vmms.__dict__["_vmswitches"] = items


def switch_by_name(vmms, name: str) -> dict:
    for sw in switches(vmms):
        if sw["name"].lower() == name.lower():
            return sw
    raise HvError("NotFound", f"no virtual switch named {name!r}")


def switch_view(sw: dict) -> dict:
    return {"Name": sw["name"], "Id": sw["id"], "SwitchType": sw["type"],
            "NetAdapterName": sw.get("net_adapter"), "HostInterfaceName": sw.get("host_interface")}


def host_interface_name(name: str, sid: str) -> str:
    """An Internal switch's TAP: 'hv' + up to 8 of the name's letters/digits + '-' + 4 hex of
    its id (at most 15 characters, unique per switch)."""
    stem = re.sub(r"[^a-z0-9]", "", name.lower())[:8]
    return f"hv{stem}-{sid.replace('-', '')[:4]}"


# --- adapters --------------------------------------------------------------------------------------

def all_adapters(vmms):
    for rec in vmms.vms.values():
        for a in adapters_of(rec):
            yield rec, a


def driver_config(vmms) -> dict:
    ports = {}
    for _, a in all_adapters(vmms):
        ports[a["instance_id"]] = {"switch": a.get("switch"), "mac": a["mac"], "vlan": a.get("vlan"),
                                   "mirroring": a.get("mirroring") or "None",
                                   "max_bandwidth": int(a.get("max_bandwidth") or 0),
                                   "spoofing": bool(a.get("spoofing"))}
    return {"switches": switches(vmms), "ports": ports}


def host_port_fds(vmms) -> dict[str, int]:
    """vmms's own descriptor of each Internal/External switch's host side (opened once; the
    switch host gets duplicates with each configuration, so it needs no privilege itself)."""
    held = vmms.__dict__.setdefault("_vmswitch_ports", {})
    for sw in switches(vmms):
        if sw["type"] != "Private" and sw["id"] not in held:
            try:
                held[sw["id"]] = open_host_port(sw)
            except OSError as exc:
                vmms.log.warning("host_port_unavailable", switch=sw["name"], error=str(exc))
    return held


def release_host_port(vmms, sid: str) -> None:
    fd = vmms.__dict__.setdefault("_vmswitch_ports", {}).pop(sid, None)
    if fd is not None:
        os.close(fd)


def push(vmms) -> None:
    """The switch host's configuration, now (if it runs; else at its `ready`), with the host
    ports' descriptors."""
    drivers = getattr(vmms, "drivers", None)
    if drivers is None:
        return
    body = driver_config(vmms)
    held = host_port_fds(vmms)
    fds: list[int] = []
    specs = []
    for sw in body["switches"]:
        sw = dict(sw)
        if held.get(sw["id"]) is not None:
            sw["fd_index"] = len(fds)
            fds.append(held[sw["id"]])
        specs.append(sw)
    body["switches"] = specs
    drivers.send(DRIVER, {"t": "configure", "body": body}, fds)


def on_driver_state(vmms, name: str, state: str) -> None:
    if name == DRIVER and state == "Running":
        push(vmms)


def mac_arg(text: str) -> str:
    try:
        mac = proto.mac_bytes(text)
    except ValueError:
        raise HvError("BadRequest", f"invalid MAC address {text!r}: 12 hex digits, e.g. "
                                    "00155D0A0B0C (':' or '-' separators allowed)") from None
    if mac[0] & 1 or mac == bytes(6):
        raise HvError("BadRequest", f"invalid MAC address {text!r}: a static MAC must be a "
                                    "non-zero unicast address")
    return proto.mac_text(mac)


def new_dynamic_mac(vmms) -> str:
    used = {a["mac"] for _, a in all_adapters(vmms)}
    for _ in range(1000):
        mac = proto.mac_text(HYPERV_OUI + secrets.token_bytes(3))
        if mac not in used:
            return mac
    raise HvError("InvalidState", "no free dynamic MAC address in 00:15:5D")


def pick(rec, args: dict, verb: str) -> list[int]:
    """Indices of the adapters `name` selects (all of them without a name)."""
    adapters = adapters_of(rec)
    name = args.get("name")
    if name is None:
        if not adapters:
            raise HvError("NotFound", f"VM '{rec.name}' has no network adapter to {verb}")
        return list(range(len(adapters)))
    name = get_str(args, "name", max_len=64)
    found = [i for i, a in enumerate(adapters) if a["name"].lower() == name.lower()]
    if not found:
        raise HvError("NotFound", f"VM '{rec.name}' has no network adapter named {name!r}")
    return found


def save_adapters(vmms, rec, adapters: list[dict], kvp: dict | None = None) -> None:
    old, old_kvp = rec.config.get(ADAPTERS_KEY), rec.config.get("kvp_host")
    rec.config[ADAPTERS_KEY] = adapters
    if kvp is not None:
        rec.config["kvp_host"] = kvp
    try:
        vmms.save_config(rec)
    except BaseException:
        rec.config[ADAPTERS_KEY], rec.config["kvp_host"] = old, old_kvp
        raise


def adapter_view(vmms, rec, a: dict, guest_pool: dict | None, stats: dict) -> dict:
    port = (stats.get("ports") or {}).get(a["instance_id"]) if rec.worker is not None else None
    running = rec.worker is not None and rec.state == VmState.Running
    switch = next((s for s in switches(vmms) if s["id"] == a.get("switch")), None)
    status = ("Ok" if port is not None else "Disconnected" if switch is None or not running
              else "Degraded") if running else "Off"
    found = (guest_pool or {}).get(f"{KVP_PREFIX}{a['mac']}.IPAddresses")
    port = port or {}
    return {"VMName": rec.name, "VMId": rec.id, "Name": a["name"], "Id": a["instance_id"],
            "MacAddress": a["mac"], "DynamicMacAddressEnabled": not a.get("static"),
            "SwitchName": switch["name"] if switch else None,
            "SwitchId": switch["id"] if switch else None, "Status": status,
            "IPAddresses": [x for x in (found or "").split(",") if x],
            "VlanId": a.get("vlan"), "PortMirroringMode": a.get("mirroring") or "None",
            "MaximumBandwidth": int(a.get("max_bandwidth") or 0),
            "MacAddressSpoofing": "On" if a.get("spoofing") else "Off",
            "PacketsSent": port.get("rx_frames", 0), "BytesSent": port.get("rx_bytes", 0),
            "PacketsReceived": port.get("tx_frames", 0), "BytesReceived": port.get("tx_bytes", 0),
            "DroppedSpoofed": port.get("dropped_spoofed", 0),
            "DroppedBandwidth": port.get("dropped_rate", 0),
            "DroppedFull": port.get("dropped_full", 0)}


def driver_stats(vmms) -> dict:
    drv = vmms.drivers.drivers.get(DRIVER) if getattr(vmms, "drivers", None) else None
    return getattr(drv, "driver_stats", None) or {}


def need_root(kind: str) -> None:
    if os.geteuid() != 0:
        raise HvError("Unauthorized", f"an {kind} switch needs CAP_NET_ADMIN on the host "
                                      f"({'to create its host TAP' if kind == 'Internal' else 'for a packet socket on the host interface'}): "
                                      "run hvemu as root; Private switches work without it")


# --- switch ops ----------------------------------------------------------------------------------

@control_op("new-vmswitch")
def new_vmswitch(vmms, req):
    """Create a virtual switch (New-VMSwitch). Args: name, switch_type Private|Internal, or
    net_adapter_name IFACE (External, bridged onto that host interface). Answers the switch."""
    name = get_str(req.args, "name", max_len=64)
    if not SWITCH_NAME.match(name) or name != name.strip():
        raise HvError("BadRequest", f"invalid switch name {name!r}: 1-64 letters, digits, space "
                                    "and ._()+- starting with a letter or digit")
    iface = get_str(req.args, "net_adapter_name", None, max_len=15)
    kind = get_str(req.args, "switch_type", None, max_len=16)
    if iface is not None:
        if kind not in (None, "External"):
            raise HvError("BadRequest", "--net-adapter-name makes an External switch; it does "
                                        f"not go with --switch-type {kind}")
        kind = "External"
    if kind is None:
        raise HvError("BadRequest", "give --switch-type Private|Internal or --net-adapter-name IFACE")
    kind = next((t for t in SWITCH_TYPES if t.lower() == kind.lower()), None) or kind
    if kind not in SWITCH_TYPES or (kind == "External" and iface is None):
        raise HvError("BadRequest", f"switch type must be Private or Internal (External: give "
                                    f"--net-adapter-name), got {kind!r}")
    items = switches(vmms)
    if any(s["name"].lower() == name.lower() for s in items):
        raise HvError("AlreadyExists", f"a virtual switch named {name!r} already exists")
    sid = str(uuid.uuid4())
    sw = {"id": sid, "name": name, "type": kind, "host_interface": None, "net_adapter": None}
    if kind == "External":
        need_root(kind)
        try:
            socket.if_nametoindex(iface)
        except OSError:
            raise HvError("NotFound", f"no host network interface named {iface!r}") from None
        for other in items:
            if iface in (other.get("net_adapter"), other.get("host_interface")):
                raise HvError("InvalidState", f"host interface {iface!r} is already bound to "
                                              f"virtual switch {other['name']!r}")
        sw["net_adapter"] = iface
    elif kind == "Internal":
        need_root(kind)
        ifname = host_interface_name(name, sid)
        if tap_device.exists(ifname):
            raise HvError("AlreadyExists", f"host interface {ifname!r} already exists")
        try:
            tap_device.create_persistent(ifname)
        except OSError as exc:
            raise HvError("Unauthorized", f"cannot create host interface {ifname!r}: {exc}") from None
        sw["host_interface"] = ifname
    try:
        save_switches(vmms, items + [sw])
    except BaseException:
        if sw["host_interface"]:
            _delete_tap(vmms, sw["host_interface"])
        raise
    vmms.log.info("vmswitch_created", name=name, switch_id=sid, type=kind,
                  interface=sw["host_interface"] or sw["net_adapter"])
    if kind != "Private":
        try:
            vmms.drivers.ensure(DRIVER)      # the host side is served without any VM
        except HvError as err:
            vmms.log.warning("driver_unavailable", driver=DRIVER, error=err.message)
    push(vmms)
    return switch_view(sw)


def _delete_tap(vmms, ifname: str) -> None:
    try:
        tap_device.delete_persistent(ifname)
    except OSError as exc:
        vmms.log.warning("host_interface_not_deleted", interface=ifname, error=str(exc))


@control_op("get-vmswitch")
def get_vmswitch(vmms, req):
    """The host's virtual switches (all, or the one named)."""
    name = get_str(req.args, "name", None, max_len=64)
    if name is not None:
        return [switch_view(switch_by_name(vmms, name))]
    return [switch_view(s) for s in switches(vmms)]


@control_op("remove-vmswitch")
def remove_vmswitch(vmms, req):
    """Delete a switch. Refused while adapters are connected to it, unless force (which
    disconnects them first)."""
    sw = switch_by_name(vmms, get_str(req.args, "name", max_len=64))
    force = get_bool(req.args, "force", False)
    users = [(rec, a) for rec, a in all_adapters(vmms) if a.get("switch") == sw["id"]]
    if users and not force:
        names = ", ".join(f"'{a['name']}' of VM '{rec.name}'" for rec, a in users[:5])
        raise HvError("InvalidState", f"virtual switch {sw['name']!r} has connected adapters "
                                      f"({names}); disconnect them or use --force")
    for rec in {id(r): r for r, _ in users}.values():
        save_adapters(vmms, rec, [{**a, "switch": None} if a.get("switch") == sw["id"] else a
                                  for a in adapters_of(rec)])
    save_switches(vmms, [s for s in switches(vmms) if s["id"] != sw["id"]])
    push(vmms)
    release_host_port(vmms, sw["id"])
    if sw.get("host_interface"):
        _delete_tap(vmms, sw["host_interface"])
    vmms.log.info("vmswitch_removed", name=sw["name"], switch_id=sw["id"], disconnected=len(users))
    return {"removed": sw["name"], "disconnected": len(users)}


# --- adapter ops -----------------------------------------------------------------------------------

@control_op("add-vmnetworkadapter")
def add_vmnetworkadapter(vmms, req):
    """Add a network adapter to a VM (VM Off). Args: vm, switch_name (optional: connected at
    once), name (default 'Network Adapter'), static_mac_address (default: a dynamic MAC from
    00:15:5D, unique on this host)."""
    rec = vm_arg(vmms, req)
    name = get_str(req.args, "name", DEFAULT_ADAPTER, max_len=64)
    if not ADAPTER_NAME.match(name):
        raise HvError("BadRequest", f"invalid adapter name {name!r}")
    switch_name = get_str(req.args, "switch_name", None, max_len=64)
    sw = switch_by_name(vmms, switch_name) if switch_name is not None else None
    static = get_str(req.args, "static_mac_address", None, max_len=17)
    mac = mac_arg(static) if static is not None else None
    adapters = adapters_of(rec)
    if rec.worker is not None or rec.state != VmState.Off:
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}; add network "
                                      "adapters while it is Off")
    if rec.busy is not None:
        raise HvError("Busy", f"VM '{rec.name}' is busy with {rec.busy}; try again")
    if len(adapters) >= MAX_ADAPTERS:
        raise HvError("InvalidState", f"VM '{rec.name}' already has {MAX_ADAPTERS} network adapters")
    if any(a["name"].lower() == name.lower() for a in adapters):
        raise HvError("AlreadyExists", f"VM '{rec.name}' already has a network adapter named {name!r}")
    if mac is not None:
        for other, a in all_adapters(vmms):
            if a["mac"] == mac:
                raise HvError("AlreadyExists", f"MAC address {mac} is already used by adapter "
                                               f"'{a['name']}' of VM '{other.name}'")
    adapter = {"instance_id": str(uuid.uuid4()), "name": name, "mac": mac or new_dynamic_mac(vmms),
               "static": mac is not None, "switch": sw["id"] if sw else None, "vlan": None,
               "mirroring": "None", "max_bandwidth": 0, "spoofing": False,
               "ip_addresses": [], "gateway": None}
    save_adapters(vmms, rec, adapters + [adapter])
    push(vmms)
    vmms.log.info("network_adapter_added", vm_id=rec.id, name=name, mac=adapter["mac"])
    return adapter_view(vmms, rec, adapter, None, {})


@control_op("remove-vmnetworkadapter")
def remove_vmnetworkadapter(vmms, req):
    """Remove a VM's adapter (by name; all without one). VM Off."""
    rec = vm_arg(vmms, req)
    gone = pick(rec, req.args, "remove")
    if rec.worker is not None or rec.state != VmState.Off:
        raise HvError("InvalidState", f"VM '{rec.name}' is {rec.state.value}; remove network "
                                      "adapters while it is Off")
    if rec.busy is not None:
        raise HvError("Busy", f"VM '{rec.name}' is busy with {rec.busy}; try again")
    adapters = adapters_of(rec)
    kvp = {k: v for k, v in (rec.config.get("kvp_host") or {}).items()
           if not any(k.startswith(f"{KVP_PREFIX}{adapters[i]['mac']}.") for i in gone)}
    save_adapters(vmms, rec, [a for i, a in enumerate(adapters) if i not in gone], kvp)
    push(vmms)
    return [adapter_view(vmms, rec, adapters[i], None, {}) for i in gone]


def _change(vmms, req, verb: str, update) -> object:
    """Apply update(adapter) -> adapter to the selected adapters, save, push, answer them."""
    rec = vm_arg(vmms, req)
    chosen = pick(rec, req.args, verb)
    adapters = adapters_of(rec)
    for i in chosen:
        adapters[i] = update(dict(adapters[i]))
    save_adapters(vmms, rec, adapters)
    push(vmms)
    return [adapter_view(vmms, rec, adapters[i], None, driver_stats(vmms)) for i in chosen]


@control_op("connect-vmnetworkadapter")
def connect_vmnetworkadapter(vmms, req):
    """Connect a VM's adapter (by name; all without one) to a switch (also while it runs)."""
    sw = switch_by_name(vmms, get_str(req.args, "switch_name", max_len=64))
    return _change(vmms, req, "connect", lambda a: {**a, "switch": sw["id"]})


@control_op("disconnect-vmnetworkadapter")
def disconnect_vmnetworkadapter(vmms, req):
    """Disconnect a VM's adapter (by name; all without one) from its switch."""
    return _change(vmms, req, "disconnect", lambda a: {**a, "switch": None})


@control_op("set-vmnetworkadaptervlan")
def set_vmnetworkadaptervlan(vmms, req):
    """VLAN access mode: access + vlan_id 1-4094, or untagged."""
    untagged = get_bool(req.args, "untagged", False)
    access = get_bool(req.args, "access", False)
    if untagged == access:
        raise HvError("BadRequest", "give either --access --vlan-id N or --untagged")
    vlan = None
    if access:
        vlan = req.args.get("vlan_id")
        if vlan is None:
            raise HvError("BadRequest", "--access needs --vlan-id N (1-4094)")
        if isinstance(vlan, bool) or not isinstance(vlan, int) or not 1 <= vlan <= 4094:
            raise HvError("BadRequest", f"VLAN id must be an integer in 1-4094, got {vlan!r}")
    return _change(vmms, req, "set", lambda a: {**a, "vlan": vlan})


@control_op("set-vmnetworkadapter")
def set_vmnetworkadapter(vmms, req):
    """Change adapters (by name; all without one). Args: ip_address (list of CIDRs, applied
    in the guest through KVP; [] removes them), gateway, maximum_bandwidth (bits/s, 0 = none),
    port_mirroring None|Source|Destination, mac_address_spoofing On|Off."""
    rec = vm_arg(vmms, req)
    args = req.args
    changes: dict = {}
    if args.get("ip_address") is not None:
        ips = args["ip_address"]
        if isinstance(ips, str):
            ips = [ips]
        if not isinstance(ips, list) or len(ips) > 16:
            raise HvError("BadRequest", "ip_address must be a list of at most 16 CIDRs")
        out = []
        for ip in ips:
            try:
                if not isinstance(ip, str) or "/" not in ip:
                    raise ValueError
                out.append(str(ipaddress.ip_interface(ip)))
            except ValueError:
                raise HvError("BadRequest", f"invalid IP address {ip!r}: give address/prefix, "
                                            "e.g. 10.0.0.2/24") from None
        changes["ip_addresses"] = out
    if args.get("gateway") is not None:
        gw = args["gateway"]
        try:
            changes["gateway"] = str(ipaddress.ip_address(gw)) if gw != "" else None
        except (ValueError, TypeError):
            raise HvError("BadRequest", f"invalid gateway {gw!r}") from None
    if args.get("maximum_bandwidth") is not None:
        bw = args["maximum_bandwidth"]
        if isinstance(bw, bool) or not isinstance(bw, int):
            raise HvError("BadRequest", f"maximum_bandwidth must be an integer (bits/s), got {bw!r}")
        if bw < 0:
            raise HvError("BadRequest", f"maximum_bandwidth must not be negative, got {bw}")
        changes["max_bandwidth"] = bw
    if args.get("port_mirroring") is not None:
        mode = args["port_mirroring"]
        modes = {m.lower(): m for m in ("None", "Source", "Destination")}
        if not isinstance(mode, str) or mode.lower() not in modes:
            raise HvError("BadRequest", f"port_mirroring must be None, Source or Destination, got {mode!r}")
        changes["mirroring"] = modes[mode.lower()]
    if args.get("mac_address_spoofing") is not None:
        sp = args["mac_address_spoofing"]
        if not isinstance(sp, str) or sp.lower() not in ("on", "off"):
            raise HvError("BadRequest", f"mac_address_spoofing must be On or Off, got {sp!r}")
        changes["spoofing"] = sp.lower() == "on"
    if not changes:
        raise HvError("BadRequest", "nothing to change: give --ip-address, --gateway, "
                                    "--maximum-bandwidth, --port-mirroring or --mac-address-spoofing")
    chosen = pick(rec, args, "set")
    adapters = adapters_of(rec)
    kvp = dict(rec.config.get("kvp_host") or {})
    items: dict[str, str] = {}
    for i in chosen:
        a = adapters[i] = {**adapters[i], **changes}
        if "ip_addresses" in changes or "gateway" in changes:
            items[f"{KVP_PREFIX}{a['mac']}.IPAddresses"] = ",".join(a.get("ip_addresses") or [])
            items[f"{KVP_PREFIX}{a['mac']}.DefaultGateway"] = a.get("gateway") or ""
    kvp.update(items)
    save_adapters(vmms, rec, adapters, kvp if items else None)
    push(vmms)
    if items and rec.worker is not None:
        rec.worker.send("kvp-set", {"items": items}, lambda ok, res: None, 10.0)
    return [adapter_view(vmms, rec, adapters[i], None, driver_stats(vmms)) for i in chosen]


@control_op("get-vmnetworkadapter")
def get_vmnetworkadapter(vmms, req):
    """A VM's network adapters: Name, MacAddress, SwitchName, Status, IPAddresses (as the
    guest reports them), VlanId, PortMirroringMode, MaximumBandwidth, MacAddressSpoofing and
    the port's counters."""
    rec = vm_arg(vmms, req)
    adapters = adapters_of(rec)
    stats = driver_stats(vmms)
    if rec.worker is None or not adapters:
        return [adapter_view(vmms, rec, a, None, stats) for a in adapters]

    def done(ok, res):
        pool = res if ok and isinstance(res, dict) else {}
        vmms.server.reply(req, [adapter_view(vmms, rec, a, pool, driver_stats(vmms)) for a in adapters])
    rec.worker.send("kvp-get", {"pool": "guest"}, done, 5.0)
    return DEFERRED

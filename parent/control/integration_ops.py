"""Control ops for integration services, key-value pair exchange and COM ports, registered in
parent/control/op_table.py.

Configuration lives in the VM's config (durable, so the host KVP pool and COM ports survive
restarts of the VM and of the host): `integration_services` {name: enabled}, `kvp_host`
{key: value}, `com_ports` {"1": path, "2": path}. A running VM's worker gets each change
(worker ops in worker/worker_defs.py); what only the running guest knows (the guest KVP pool,
service status) comes from the worker. What a worker gets at launch is vmms's (`Vmms.launch`).
"""
from __future__ import annotations

from hypervisor.runtime.arg_checks import get_int, get_str
from hypervisor.runtime.errors import HvError
from parent.control.op_table import control_op, vm_arg
from parent.vm_devices import enabled_services
from worker.comport import check_path
from worker.integration.ic_defs import KVP_MAX_ITEMS, check_key, check_value, service_name


# --- integration services ------------------------------------------------------------------------

@control_op("get-vmintegrationservice")
def get_vmintegrationservice(vmms, req):
    """The VM's integration services: VMName, Name, Enabled, PrimaryStatusDescription,
    SecondaryStatusDescription (statuses only while it runs)."""
    rec = vm_arg(vmms, req)
    if rec.worker is None:
        return [{"VMName": rec.name, "Name": n, "Enabled": e, "PrimaryStatusDescription": None,
                 "SecondaryStatusDescription": None} for n, e in enabled_services(rec).items()]
    return vmms.worker_call(rec, req, "get-integration-services", {},
                   lambda res: [{"VMName": rec.name, **s} for s in res])


def _set_service(vmms, req, enabled: bool):
    rec = vm_arg(vmms, req)
    name = service_name(get_str(req.args, "name", max_len=64))
    rec.config["integration_services"] = {**enabled_services(rec), name: enabled}
    vmms.save_config(rec)
    if rec.worker is None:
        return get_vmintegrationservice(vmms, req)
    return vmms.worker_call(rec, req, "set-integration-service", {"name": name, "enabled": enabled},
                   lambda res: [{"VMName": rec.name, **s} for s in res])


@control_op("enable-vmintegrationservice")
def enable_vmintegrationservice(vmms, req):
    """Turn an integration service on (offered to the guest at once if it runs). Args: vm, name."""
    return _set_service(vmms, req, True)


@control_op("disable-vmintegrationservice")
def disable_vmintegrationservice(vmms, req):
    """Turn an integration service off (its channel is rescinded if the guest runs)."""
    return _set_service(vmms, req, False)


# --- key-value pair exchange -----------------------------------------------------------------------

@control_op("get-vmkvp")
def get_vmkvp(vmms, req):
    """Key → value items: pool `guest` (default; what the running guest published, {} when off)
    or `host` (what the host set; kept in the VM's configuration)."""
    rec = vm_arg(vmms, req)
    pool = get_str(req.args, "pool", "guest", max_len=8)
    if pool not in ("guest", "host"):
        raise HvError("BadRequest", f"pool must be guest or host, got {pool!r}")
    if pool == "host":
        return dict(rec.config.get("kvp_host") or {})
    if rec.worker is None:
        return {}
    return vmms.worker_call(rec, req, "kvp-get", {"pool": "guest"}, lambda res: res)


@control_op("set-vmkvp")
def set_vmkvp(vmms, req):
    """Set a host → guest item. Args: vm, key (≤ 512 bytes UTF-8), value (≤ 2048 bytes)."""
    rec = vm_arg(vmms, req)
    key = check_key(req.args.get("key"))
    value = check_value(req.args.get("value"))
    pool = dict(rec.config.get("kvp_host") or {})
    if key not in pool and len(pool) >= KVP_MAX_ITEMS:
        raise HvError("BadRequest", f"the host pool already holds {KVP_MAX_ITEMS} items")
    pool[key] = value
    rec.config["kvp_host"] = pool
    vmms.save_config(rec)
    if rec.worker is not None:
        return vmms.worker_call(rec, req, "kvp-set", {"items": {key: value}}, lambda res: {key: value})
    return {key: value}


@control_op("remove-vmkvp")
def remove_vmkvp(vmms, req):
    """Remove a host → guest item. Args: vm, key."""
    rec = vm_arg(vmms, req)
    key = check_key(req.args.get("key"))
    pool = dict(rec.config.get("kvp_host") or {})
    if key not in pool:
        raise HvError("NotFound", f"VM '{rec.name}' has no host KVP item {key!r}")
    del pool[key]
    rec.config["kvp_host"] = pool
    vmms.save_config(rec)
    if rec.worker is not None:
        return vmms.worker_call(rec, req, "kvp-remove", {"keys": [key]}, lambda res: {"removed": key})
    return {"removed": key}


# --- COM ports -------------------------------------------------------------------------------------

def _comport_views(rec) -> list[dict]:
    ports = rec.config.get("com_ports") or {}
    return [{"VMName": rec.name, "Name": f"COM {n}", "Number": n, "Path": ports.get(str(n), "")}
            for n in (1, 2)]


@control_op("set-vmcomport")
def set_vmcomport(vmms, req):
    """Connect COM1/COM2 to a Unix stream socket served by the worker. Args: vm, number (1|2),
    path (absolute; '' disconnects)."""
    rec = vm_arg(vmms, req)
    number = get_int(req.args, "number", lo=1, hi=2)
    path = check_path(get_str(req.args, "path", max_len=200))
    ports = rec.config.get("com_ports") or {}
    if path and any(p == path and n != str(number) for n, p in ports.items()):
        raise HvError("AlreadyExists", f"{path} is already COM{3 - number}")

    def save(_res=None):
        rec.config["com_ports"] = {**ports, str(number): path}
        vmms.save_config(rec)
        return _comport_views(rec)
    if rec.worker is None:
        return save()
    return vmms.worker_call(rec, req, "set-comport", {"number": number, "path": path}, save)


@control_op("get-vmcomport")
def get_vmcomport(vmms, req):
    """The VM's COM ports: VMName, Name, Number, Path."""
    return _comport_views(vm_arg(vmms, req))

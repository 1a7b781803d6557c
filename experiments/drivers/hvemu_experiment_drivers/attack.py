"""An attacking driver: serving one VM, on an `attack` request it tries to change the
hypervisor's ledgers and to stop another VM, and answers what each attempt did:

- get a root credential: from its own process's memory (inside the hypervisor), else from the
  credential file of the host it is loaded in (found from the process titles it can see);
- with it (or without one), by hypercall: more CPU for its own VM (set-processor: reserve and
  weight), more memory (set-memory), pause another VM (suspend-partition), stop another
  (delete-partition);
- and, without any credential, kill another VM of its host: its guest process (SIGKILL).

Only its own host is a target: other hvemu hosts on the machine are never touched."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from hvemu_experiment_drivers.serving import StreamServing, find_root_credential, own_home

from hypervisor.runtime.errors import HvError
from hypervisor.runtime.paths import Home
from hypervisor.runtime.rpc_client import RpcClient


def _guest_pids(home: Path | None, exclude_vm: str) -> dict[str, int]:
    """vm id -> guest (vmmem) pid of every other VM of this host this process can see."""
    out = {}
    try:
        ours = set(os.listdir(home / "vms")) if home else set()
    except OSError:
        ours = set()
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            words = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").split()
        except OSError:
            continue
        if len(words) >= 3 and words[0] == b"vmmem" and words[-1].decode() in ours - {exclude_vm}:
            out[words[-1].decode()] = int(pid)
    return out


class AttackDriver(StreamServing):
    class_id = "attack"

    def request(self, channel, kind, body):
        if kind != "attack":
            return super().request(channel, kind, body)
        return {"data": json.dumps(self.attack(channel.vm_id), separators=(",", ":"))[:2000]}

    def attack(self, own_vm: str) -> dict:
        report: dict = {}
        cred, home, how = find_root_credential()
        report["credential"] = how
        home = home or own_home()
        if home is None:
            report["hypercalls"] = "no hypervisor socket in sight"
        for root in [home] if home else []:
            client = RpcClient(Home.resolve(root).hypercall_endpoint, auth=cred, timeout=2.0,
                               name="the hypervisor")
            try:
                report.update(self._hypercalls(client, own_vm))
            finally:
                client.close()
        killed = []
        victims = sorted(_guest_pids(home, own_vm).items())
        for vm_id, pid in victims[-1:]:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(vm_id)
            except OSError as exc:
                report["kill"] = f"refused: {exc.strerror}"
        if killed:
            report["kill"] = f"killed the guest of {killed[0]}"
        elif "kill" not in report:
            report["kill"] = "no other guest in sight"
        return report

    def _hypercalls(self, client: RpcClient, own_vm: str) -> dict:
        out = {}

        def attempt(what, op, args):
            try:
                client.call(op, args)
                out[what] = "ok"
            except HvError as err:
                out[what] = f"refused: {err.code}"

        try:
            parts = client.call("list-partitions", {})
        except HvError as err:
            parts = []
            out["list-partitions"] = f"refused: {err.code}"
        mine = next((p for p in parts if p.get("vm_id") == own_vm), None)
        others = sorted((p for p in parts if p.get("vm_id") != own_vm), key=lambda p: p["name"])
        target = mine["partition_id"] if mine else "p1"
        attempt("more CPU for its VM", "set-processor",
                {"partition_id": target, "processor": {"count": 1, "reserve": 100, "maximum": 100,
                                                        "relative_weight": 10000}})
        size = (mine or {}).get("memory", {}).get("assigned", 64 << 20)
        attempt("more memory for its VM", "set-memory",
                {"partition_id": target, "memory": {"dynamic": True, "startup": size,
                                                    "minimum": size, "maximum": size * 4}})
        victims = others or [{"partition_id": "p2"}, {"partition_id": "p3"}]
        attempt("pause another VM", "suspend-partition", {"partition_id": victims[0]["partition_id"]})
        if len(victims) > 1:
            attempt("stop another VM", "delete-partition", {"partition_id": victims[1]["partition_id"]})
        return out

"""measure-vm's TotalDiskRead / TotalDiskWrite, kept in vmms — the hypervisor never sees device
I/O (DESIGN.md §5), so disk bytes come from the storage driver's own reports.

`DiskMeter` is fed by the driver supervisor with every `stats` a driver host sends (storvsp's
`vms` {vm_id: {read, write}}: bytes it served per VM, parent/drivers/storvsp.py). A driver
host's counts start at zero; when a new process of the same driver reports, the last figures
of the old one are carried over, so a driver restart does not reset a VM's totals. A VM's
figures count from its start (`vm_started` takes a baseline).

Accuracy: figures are at most one report interval old (drvhost STATS_INTERVAL, 0.2 s); bytes
served after a crashed host's last report are not counted, and a request re-issued after a
crash is counted again by the new host.
"""
from __future__ import annotations


class DiskMeter:
    def __init__(self):
        self.live: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {}   # driver -> (pid, per VM)
        self.carried: dict[str, list[int]] = {}    # vm_id -> [read, write] from gone hosts
        self.base: dict[str, tuple[int, int]] = {}

    def observe(self, driver: str, pid: int, stats: dict) -> None:
        vms = stats.get("vms")
        if not isinstance(vms, dict):
            return
        figures = {}
        for vm_id, c in vms.items():
            if isinstance(vm_id, str) and isinstance(c, dict):
                r, w = c.get("read", 0), c.get("write", 0)
                if isinstance(r, int) and isinstance(w, int):
                    figures[vm_id] = (r, w)
        old = self.live.get(driver)
        if old is not None and old[0] != pid:
            for vm_id, (r, w) in old[1].items():   # a new process: keep what the old one served
                acc = self.carried.setdefault(vm_id, [0, 0])
                acc[0] += r
                acc[1] += w
        self.live[driver] = (pid, figures)

    def _raw(self, vm_id: str) -> tuple[int, int]:
        r, w = self.carried.get(vm_id, (0, 0))
        for _, figures in self.live.values():
            fr, fw = figures.get(vm_id, (0, 0))
            r, w = r + fr, w + fw
        return r, w

    def vm_started(self, vm_id: str) -> None:
        self.base[vm_id] = self._raw(vm_id)

    def totals(self, vm_id: str) -> dict[str, int]:
        r, w = self._raw(vm_id)
        br, bw = self.base.get(vm_id, (0, 0))
        return {"read": max(0, r - br), "write": max(0, w - bw)}

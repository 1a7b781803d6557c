"""Parent-hosted drivers (DESIGN.md §5): the plugin API (`driver_api`: `Driver`, the
`DriverContext` a driver is constructed with, `DriverChannel`), the registry of installed
drivers (`registry`, entry-point group `hvemu.drivers`; vmms reads only its metadata) and the
built-in drivers: `echo` (a synthetic echo device, for tests and benchmarks) and `storvsp`
(storage: serves a VM's VHDX disks to the guest's block client). Each loaded driver runs in its
own `drvhost <driver>` process (parent/drvhost.py), started by vmms's supervisor
(parent/driver_supervisor.py) through the driver fork-server (parent/driver_forkserver.py)."""

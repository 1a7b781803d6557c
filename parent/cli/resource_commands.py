"""hvctl set-/get-vmprocessor, set-/get-vmmemory, measure-vm."""
from __future__ import annotations

import click

from parent.cli.main import cli
from parent.cli.output import format_uptime, print_json, print_object, print_table
from parent.cli.param_types import BOOL, SIZE


def show(g, obj) -> None:
    print_json(obj) if g.json else print_object(obj)


@cli.command("get-vmprocessor")
@click.argument("name")
@click.pass_obj
def get_vmprocessor(g, name):
    """A VM's CPU settings."""
    show(g, g.client.call("get-vmprocessor", vm=name))


@cli.command("set-vmprocessor")
@click.argument("name")
@click.option("--count", type=int, help="virtual processors (1..host logical CPUs; VM Off)")
@click.option("--reserve", type=int, help="guaranteed share of Count CPUs under contention, 0-100 %")
@click.option("--maximum", type=int, help="hard ceiling as a share of Count CPUs, 0-100 %")
@click.option("--relative-weight", type=int, help="share of spare time under contention, 1-10000")
@click.pass_obj
def set_vmprocessor(g, name, count, reserve, maximum, relative_weight):
    """CPU controls; reserve, maximum and weight apply live to a running VM."""
    show(g, g.client.call("set-vmprocessor", vm=name, count=count, reserve=reserve,
                          maximum=maximum, relative_weight=relative_weight))


@cli.command("get-vmmemory")
@click.argument("name")
@click.pass_obj
def get_vmmemory(g, name):
    """A VM's memory settings."""
    show(g, g.client.call("get-vmmemory", vm=name))


@cli.command("set-vmmemory")
@click.argument("name")
@click.option("--dynamic-memory-enabled", type=BOOL, help="true or false")
@click.option("--startup-bytes", type=SIZE, help="memory at start, e.g. 1GB (VM Off)")
@click.option("--minimum-bytes", type=SIZE, help="dynamic memory's floor, e.g. 256MB")
@click.option("--maximum-bytes", type=SIZE, help="dynamic memory's ceiling, e.g. 2GB")
@click.option("--buffer", type=int, help="5-2000 %")
@click.option("--priority", type=int, help="0-100")
@click.pass_obj
def set_vmmemory(g, name, dynamic_memory_enabled, startup_bytes, minimum_bytes, maximum_bytes,
                 buffer, priority):
    """Memory controls. While running only --maximum-bytes up, --minimum-bytes down,
    --buffer and --priority may change."""
    show(g, g.client.call("set-vmmemory", vm=name,
                          dynamic_memory_enabled=dynamic_memory_enabled,
                          startup_bytes=startup_bytes, minimum_bytes=minimum_bytes,
                          maximum_bytes=maximum_bytes, buffer=buffer, priority=priority))


MEASURE_COLUMNS = [("VMName", "VMName"), ("AvgCPU(% of host)", "AvgCPU"), ("AvgRAM(M)", "AvgRAM"),
                   ("MaxRAM(M)", "MaxRAM"), ("MinRAM(M)", "MinRAM"),
                   ("TotalDiskRead(M)", "TotalDiskRead"), ("TotalDiskWrite(M)", "TotalDiskWrite"),
                   ("MeteringDuration", "MeteringDuration")]
MB = lambda v: (v or 0) // (1 << 20)  # noqa: E731
MEASURE_FORMATS = {"AvgRAM": MB, "MaxRAM": MB, "MinRAM": MB, "TotalDiskRead": MB,
                   "TotalDiskWrite": MB, "MeteringDuration": format_uptime}


@cli.command("measure-vm")
@click.argument("name")
@click.pass_obj
def measure_vm(g, name):
    """Resource metering from the hypervisor's ledgers since the VM started, shown as Hyper-V's
    Measure-VM does: RAM and disk in MB; AvgCPU is percent of the whole host (Hyper-V shows
    MHz). --json keeps CLI.md's units: bytes, seconds (MeteringDuration too)."""
    m = g.client.call("measure-vm", vm=name)
    print_json(m) if g.json else print_table(MEASURE_COLUMNS, [m], MEASURE_FORMATS)

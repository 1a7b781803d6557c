"""hvctl set-/get-vmprocessor, set-/get-vmmemory, measure-vm."""
from __future__ import annotations

import click

from parent.cli.main import cli
from parent.cli.output import print_json, print_object


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


def _bool(value):
    if value is None:
        return None
    v = value.lower()
    if v not in ("true", "false", "1", "0", "yes", "no"):
        raise click.BadParameter(f"expected true or false, got {value!r}")
    return v in ("true", "1", "yes")


@cli.command("set-vmmemory")
@click.argument("name")
@click.option("--dynamic-memory-enabled", help="true or false")
@click.option("--startup-bytes")
@click.option("--minimum-bytes")
@click.option("--maximum-bytes")
@click.option("--buffer", type=int, help="5-2000 %")
@click.option("--priority", type=int, help="0-100")
@click.pass_obj
def set_vmmemory(g, name, dynamic_memory_enabled, startup_bytes, minimum_bytes, maximum_bytes,
                 buffer, priority):
    """Memory controls. While running only --maximum-bytes up, --minimum-bytes down,
    --buffer and --priority may change."""
    from hypervisor.runtime.sizes import parse_size
    size = lambda v: parse_size(v) if v is not None else None  # noqa: E731
    show(g, g.client.call("set-vmmemory", vm=name,
                          dynamic_memory_enabled=_bool(dynamic_memory_enabled),
                          startup_bytes=size(startup_bytes), minimum_bytes=size(minimum_bytes),
                          maximum_bytes=size(maximum_bytes), buffer=buffer, priority=priority))


@cli.command("measure-vm")
@click.argument("name")
@click.pass_obj
def measure_vm(g, name):
    """Resource metering from the hypervisor's ledgers."""
    show(g, g.client.call("measure-vm", vm=name))

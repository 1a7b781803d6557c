"""Integration services, host side (they run in vmwp and talk to the guest over VMBus):
heartbeat, shutdown, key-value pair exchange, time synchronization. The guest side is
worker/guest/integration.py; both use the definitions in `ic_defs`."""

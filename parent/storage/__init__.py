"""Storage in the parent partition: disk backends (VHDX first) that storage drivers serve to
guests over VMBus. `disk_backend` defines the interface; `vhdx` implements it for VHDX files."""

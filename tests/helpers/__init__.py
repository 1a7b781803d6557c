"""What several test modules need, written once: `host_views` (reading a running host: KVP
items, the hypervisor's partitions, driver hosts, the device-stream program's reports) and
`vhdx_files` (patching VHDX files, asking qemu-img about them). Fixtures and `wait_until` are in
tests/conftest.py; no test module imports another test module."""

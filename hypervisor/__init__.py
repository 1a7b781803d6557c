"""hvemu's bottom layer: the hypervisor daemon, plus the small runtime every process shares
(wire envelope, error codes, logging, paths). Imports nothing from `worker` or `parent`."""

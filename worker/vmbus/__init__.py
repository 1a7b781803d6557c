"""VMBus for hvemu: channels between a guest (the VSC) and a parent-hosted driver (the VSP).

The pure core, with no sockets, threads or sleeping:

- `ring`     — one ring buffer in shared memory, its writer and reader, and `ring_pair()`.
- `channel`  — a channel's lifecycle (offer, open, close, rescind) as a state machine.
- `messages` — msgpack control messages carried in ring packets, with transaction ids.
- `storvsp_protocol` — the storage VSC/VSP messages (the guest and the storvsp driver import it).
- `driver_protocol` — definitions of what a worker and a driver host say, and driver states.

The shells that drive them from event loops (DESIGN.md §5):

- `transport` — a channel's memfd region and eventfd doorbells, handed over as descriptors.
- `host_bus` — the worker's side of a VM's VMBus (offers to the guest, links to driver hosts).
- `driver_client` — a direct client of a driver host, for benchmarks and tests.
"""

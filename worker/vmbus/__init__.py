"""VMBus for hvemu: channels between a guest (the VSC) and a parent-hosted driver (the VSP).

The modules here are the pure core, with no sockets, threads or sleeping:

- `ring`     — one ring buffer in shared memory, its writer and reader, and `ring_pair()`.
- `channel`  — a channel's lifecycle (offer, open, close, rescind) as a state machine.
- `messages` — msgpack control messages carried in ring packets, with transaction ids.

The worker and the driver host drive these from their event loops (DESIGN.md §5).
"""

"""The small runtime every hvemu process shares (DESIGN.md §2).

`wire` (the envelope and pinned msgpack), `errors` (the one table of error codes),
`rpc_server` / `rpc_client` (ROUTER / DEALER with bounded waits), `paths` (a home's layout),
`pidfile`, `logging_setup`, `arg_checks`, `sizes`, `signal_wakeup`, `process_tree`.
It imports nothing of the hypervisor's ledgers, so any layer may use it.
"""

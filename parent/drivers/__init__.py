"""Parent-hosted drivers (DESIGN.md §5): the plugin API (`driver_api`), the registry of
installed drivers (`registry`, entry-point group `hvemu.drivers`) and the built-in drivers
(`echo`). Each loaded driver runs in its own `drvhost <driver>` process (parent/drvhost.py)."""

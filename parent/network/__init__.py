"""The virtual switch: its pure forwarding core and the host-side ports (TAP, packet socket)."""

"""`python -m worker.guest --fd N --name NAME --id VMID --parent PID [--sandbox JSON]`: a guest started by exec
(after a hard reset), for when its worker already holds a ZeroMQ context and must not fork."""
import argparse
import json
import socket

from worker.guest.runtime import guest_main

ap = argparse.ArgumentParser()
ap.add_argument("--fd", type=int, required=True)
ap.add_argument("--name", required=True)
ap.add_argument("--id", required=True)
ap.add_argument("--parent", type=int, required=True)
ap.add_argument("--sandbox", default="")
a = ap.parse_args()
guest_main(socket.socket(fileno=a.fd), a.name, a.id, a.parent,
           json.loads(a.sandbox) if a.sandbox else None)

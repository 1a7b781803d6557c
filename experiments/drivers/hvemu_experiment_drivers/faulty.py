"""A faulty update: serves normally; a host-triggered `fault` request stands for installing the
update, whose bug is an unhandled fault at the next request: the driver's process aborts (no
polite exception). Whatever process the driver runs in dies with it."""
from __future__ import annotations

import os
import resource

from hvemu_experiment_drivers.serving import StreamServing


class FaultyUpdateDriver(StreamServing):
    class_id = "faulty-update"

    def __init__(self, context=None):
        super().__init__(context)
        self.armed = False

    def request(self, channel, kind, body):
        if self.armed:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # no core file to clean up
            os.abort()
        if kind == "fault":
            self.armed = True
            return {"data": f"update applied in process {os.getpid()}; the next request faults"}
        return super().request(channel, kind, body)

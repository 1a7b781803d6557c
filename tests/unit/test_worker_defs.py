"""worker_defs is the table the worker's handlers are bound from: every op has exactly one
handler and every handler is listed, checked on the real classes without starting a worker."""
from __future__ import annotations

import pytest

from worker.virtual_devices import VirtualDevices
from worker.vmwp import Worker
from worker.worker_defs import WORKER_OPS, bind_worker_ops


def test_every_worker_op_has_one_handler_and_every_handler_is_listed():
    handlers = bind_worker_ops(Worker, VirtualDevices)
    assert set(handlers) == set(WORKER_OPS)
    assert handlers["set-guest"] is Worker.op_set_guest
    assert handlers["kvp-get"] is VirtualDevices.op_kvp_get


def test_an_unlisted_or_missing_handler_is_refused():
    class Extra:
        def op_not_in_the_table(self, req):
            return {}
    with pytest.raises(LookupError, match="op_not_in_the_table"):
        bind_worker_ops(Worker, VirtualDevices, Extra)
    with pytest.raises(LookupError, match="kvp-get"):
        bind_worker_ops(Worker)


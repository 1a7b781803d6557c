"""The worker–guest link keeps room for control messages behind a guest's console output
(worker/guest_link.py `bulk_room`): a flood of console bytes the worker has not read yet must
not make the guest's next VMBus open fail (a dropped open left a start waiting for a heartbeat
whose channel never opened)."""
from __future__ import annotations

from worker import guest_link
from worker.guest.runtime import CONSOLE_CHUNK
from worker.vmbus.host_bus import VMBUS
from worker.vmbus.messages import OPEN

CONSOLE = {"t": "console", "data": b"y\n" * (CONSOLE_CHUNK // 2)}
AN_OPEN = {"t": VMBUS, "kind": OPEN, "body": {"channel_id": 3, "versions": [1]}}


def _pair():
    worker_end, guest_end = guest_link.pair()
    return guest_link.GuestLink(worker_end), guest_link.GuestLink(guest_end, accept_fds=True)


def test_console_output_sent_only_while_bulk_room_leaves_the_open_its_room():
    worker, guest = _pair()
    sent = 0
    while guest.bulk_room(CONSOLE_CHUNK):   # the guest loop's rule: read output only while room
        assert guest.send(CONSOLE)
        sent += 1
        assert sent < 1000, "bulk_room never said no: the link would fill"
    assert sent >= 1
    assert guest.send(AN_OPEN), "the open found no room behind the console output"
    got = []
    while len(got) < sent + 1:
        msgs = worker.receive()
        assert msgs, "a message the guest sent is missing"
        got += msgs
    assert [m["t"] for m in got] == ["console"] * sent + [VMBUS]
    assert got[-1]["kind"] == OPEN
    assert guest.bulk_room(CONSOLE_CHUNK), "read by the worker, the room is back"


def test_without_the_rule_console_output_fills_the_link_and_an_open_is_dropped():
    """The hazard the rule prevents, shown: console bytes sent until the link refuses them
    leave no room, and the open is lost (send returns False, nothing is queued)."""
    worker, guest = _pair()
    for _ in range(1000):
        if not guest.send(CONSOLE):
            break
    else:
        raise AssertionError("the link never filled")
    assert not guest.bulk_room(CONSOLE_CHUNK)
    assert not guest.send(AN_OPEN)


def test_a_closed_link_has_no_room():
    worker, guest = _pair()
    guest.close()
    assert not guest.bulk_room(1)
    worker.close()

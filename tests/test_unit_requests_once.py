"""Two small defects of the review (issue 17, item 7): a repeated ``friend_add`` pushed
``friend_request`` again every time, and a very large integer ``req`` came back as a
float."""

from __future__ import annotations

from typing import Any

import pytest
from unit_support import Client, Services


def test_repeated_friend_add_pushes_one_request(services: Services) -> None:
    alice, bob = Client(services).signup("alice"), Client(services).signup("bob")
    for _ in range(5):
        reply = alice.ok({"type": "friend_add", "to": bob.id})
        assert reply["status"] == "requested"
    pushes = [f for f in bob.conn.take() if f["type"] == "friend_request"]
    assert len(pushes) == 1
    bob.ok({"type": "friend_decline", "from": alice.id})
    alice.ok({"type": "friend_add", "to": bob.id})  # a new request after a decline
    assert [f["type"] for f in bob.conn.take()] == ["friend_request"]


@pytest.mark.parametrize("req", [2**53 + 1, -(2**53) - 1, 10**30, 1e300])
def test_a_req_number_past_2_to_53_is_refused(services: Services, req: Any) -> None:
    reply = Client(services).request({"type": "ping", "req": req})
    assert reply is not None and reply["type"] == "error", reply
    assert reply["code"] == "bad_field" and reply["field"] == "req"
    assert "req" not in reply


@pytest.mark.parametrize("req", [2**53, -(2**53), 0, 1.5, "x" * 10, None, True])
def test_other_req_scalars_are_echoed_exactly(services: Services, req: Any) -> None:
    reply = Client(services).request({"type": "ping", "req": req})
    assert reply == {"type": "pong", "req": req}

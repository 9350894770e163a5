"""Robot sessions against the real server: pinned task, switching, hints, one keep-alive connection."""

from __future__ import annotations

import httpx

from nettailor_client import CallRecord, Client, TaskSession
from nettailor_client._calls import NEXT_TASK_HEADER

from .conftest import png


def test_session_switches_and_records(client: Client) -> None:
    frame = png()
    with client.task("alpha") as t:
        assert isinstance(t, TaskSession)
        assert t.predict(frame).task_id == "alpha"
        assert t.predict(frame).task_id == "alpha"
        assert t.switch("beta") is t
        assert t.predict(frame).task_id == "beta"
        t.switch("beta")  # the same task: not a switch
        t.predict(frame)
    recs = list(t.records)
    assert all(isinstance(r, CallRecord) and r.latency_ms > 0 and r.server_ms > 0 for r in recs)
    assert [(r.task_id, r.switched) for r in recs] == [("alpha", True), ("alpha", False), ("beta", True),
                                                       ("beta", False)]
    assert t.last is recs[-1]
    assert client.predict("gamma", frame).task_id == "gamma"  # leaving the session keeps the client open


def test_hint_goes_on_the_next_request_only(live_server) -> None:
    sent: list[str | None] = []
    real = httpx.HTTPTransport()

    class Spy(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request.headers.get(NEXT_TASK_HEADER))
            return real.handle_request(request)

    with Client(live_server.url, transport=Spy(), retries=0) as c, c.task("alpha") as t:
        t.hint_next("beta")
        t.predict(png())
        t.switch("beta").predict(png())
        t.hint_next("gamma", prefetch=True)  # POST /prefetch at once
        t.predict(png())
    assert sent == ["beta", None, None, None]
    assert [r.hinted for r in t.records] == ["beta", None, None]


def test_one_keep_alive_connection(client: Client) -> None:
    frame = png()
    with client.task("alpha") as t:
        for task in ["alpha", "beta", "gamma"] * 3:
            t.switch(task)
            t.hint_next("alpha")
            t.predict(frame)
    pool = client._http._transport._pool  # type: ignore[attr-defined]
    assert len(pool.connections) == 1

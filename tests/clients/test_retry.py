"""Overload answers are retried with backoff, honouring Retry-After, up to the caller's limit.

The wait times are checked over ``httpx.MockTransport``: a real server cannot be made to answer 429
with a chosen Retry-After on a chosen attempt.  The last tests hammer a real server whose queue
holds one sample, which is not deterministic in *which* requests are refused, only in the outcome.
"""

from __future__ import annotations

import email.utils
import time

import anyio
import httpx
import pytest

from nettailor_client import AsyncClient, Client, Overloaded, Retry, TaskUnavailable, Unavailable
from nettailor_client.errors import parse_retry_after

from .conftest import png

OK = {"task_id": "t", "version": 1, "pack_version": "1", "predictions": [{"index": 0, "label": "a", "prob": 1.0}],
      "timings_ms": {"decode": 0.1, "queue": 0.1, "infer": 0.1, "total": 0.3}}


def _scripted(*answers: httpx.Response):  # type: ignore[no-untyped-def]
    """A transport that plays ``answers`` in order, then succeeds; it counts the requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        i = len(seen) - 1
        return answers[i] if i < len(answers) else httpx.Response(200, json=OK)

    return httpx.MockTransport(handler), seen


def _overloaded(status: int = 429, retry_after: str | None = None, code: str | None = "overloaded") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": code, "detail": "queue full"} if code else {"detail": "busy"}
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    waits: list[float] = []
    monkeypatch.setattr("nettailor_client.client.time.sleep", waits.append)
    return waits


def test_retry_after_is_honoured(sleeps: list[float]) -> None:
    transport, seen = _scripted(_overloaded(429, "2"), _overloaded(503, "1"))
    with Client("http://nt", transport=transport, retries=3) as c:
        assert c.predict("t", b"\x89PNG\r\n\x1a\n").task_id == "t"
    assert len(seen) == 3
    assert sleeps == [2.0, 1.0]
    # The image went out again, whole, on every attempt.
    assert all(b'name="file"' in r.content and b"\x89PNG\r\n\x1a\n" in r.content for r in seen)


def test_exponential_backoff_without_retry_after(sleeps: list[float]) -> None:
    transport, seen = _scripted(*[_overloaded(429)] * 3)
    with Client("http://nt", transport=transport, retries=Retry(max_retries=3, backoff=0.1, jitter=0)) as c:
        c.predict("t", b"img")
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])
    assert len(seen) == 4


def test_retry_after_is_capped(sleeps: list[float]) -> None:
    transport, _ = _scripted(_overloaded(429, "3600"))
    with Client("http://nt", transport=transport, retries=Retry(max_retries=1, max_delay=5)) as c:
        c.predict("t", b"img")
    assert sleeps == [5.0]


def test_gives_up_after_the_limit(sleeps: list[float]) -> None:
    transport, seen = _scripted(*[_overloaded(503, "1")] * 10)
    with Client("http://nt", transport=transport, retries=2) as c, pytest.raises(Overloaded) as info:
        c.predict("t", b"img")
    assert len(seen) == 3
    assert sleeps == [1.0, 1.0]
    assert (info.value.status, info.value.retry_after) == (503, 1.0)


def test_retries_zero_raises_at_once(sleeps: list[float]) -> None:
    transport, seen = _scripted(_overloaded(429, "1"))
    with Client("http://nt", transport=transport, retries=0) as c, pytest.raises(Overloaded):
        c.predict("t", b"img")
    assert (len(seen), sleeps) == (1, [])


def test_bare_503_is_retried_but_task_unavailable_is_not(sleeps: list[float]) -> None:
    transport, seen = _scripted(_overloaded(503, None, code=None))
    with Client("http://nt", transport=transport, retries=1) as c:
        c.predict("t", b"img")
    assert len(seen) == 2

    transport, seen = _scripted(httpx.Response(503, json={"error": "task_unavailable", "detail": "rotten"},
                                               headers={"Retry-After": "1"}))
    with Client("http://nt", transport=transport, retries=3) as c, pytest.raises(TaskUnavailable):
        c.predict("t", b"img")
    assert len(seen) == 1


def test_http_date_retry_after() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(when) <= 31
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_async_client_retries(monkeypatch) -> None:
    waits: list[float] = []

    async def fake_sleep(s: float) -> None:
        waits.append(s)

    monkeypatch.setattr("nettailor_client.async_client.anyio.sleep", fake_sleep)
    transport, seen = _scripted(_overloaded(429, "1"), _overloaded(429, None))

    async def go() -> None:
        async with AsyncClient("http://nt", transport=transport,
                               retries=Retry(max_retries=2, backoff=0.5, jitter=0)) as c:
            assert (await c.predict("t", b"img")).task_id == "t"

    anyio.run(go)
    assert waits == [1.0, 1.0]  # Retry-After first, then backoff 0.5 * 2**1
    assert len(seen) == 3


async def _hammer(url: str, retries: Retry, n: int) -> list[object]:
    frame = png()
    results: list[object] = []
    async with AsyncClient(url, retries=retries, timeout=60) as c:
        async def one() -> None:
            try:
                results.append(await c.predict("alpha", frame))
            except (Overloaded, Unavailable) as e:
                results.append(e)

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
    return results


@pytest.mark.anyio
async def test_overloaded_real_server(overloaded_server: str) -> None:
    """A queue of one and many concurrent robots: without retries some are refused with Overloaded and
    its Retry-After; with retries every request gets its prediction."""
    refused = await _hammer(overloaded_server, Retry(max_retries=0), 24)
    assert all(isinstance(r, Overloaded) or getattr(r, "task_id", None) == "alpha" for r in refused)
    overloaded = [r for r in refused if isinstance(r, Overloaded)]
    if not overloaded:  # pragma: no cover - a very fast executor can drain a queue of one
        pytest.skip("the server was never overloaded on this machine")
    assert all(e.code == "overloaded" and e.retry_after is not None and e.retry_after >= 0 for e in overloaded)

    served = await _hammer(overloaded_server, Retry(max_retries=200, backoff=0.01, max_delay=0.05), 24)
    assert all(getattr(r, "task_id", None) == "alpha" for r in served), served

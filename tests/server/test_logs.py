"""Request ids and JSON logs in-process: server/logs.py, and the drain middleware's answers."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.logs import ACCESS_LOGGER, JsonFormatter, RequestLogMiddleware, uvicorn_log_config

from .conftest import image_bytes


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the nettailor loggers write through a JSON handler, formatted as they are emitted."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(n) for n in (ACCESS_LOGGER, "test.app")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    yield stream
    for lg, (level, propagate) in zip(loggers, saved):
        lg.removeHandler(handler)
        lg.setLevel(level)
        lg.propagate = propagate


def _records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_request_id_is_honoured_else_generated_and_always_echoed(client) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "trace-0af7651916cd43dd"})
    assert r.headers["x-request-id"] == "trace-0af7651916cd43dd"
    a, b = client.get("/healthz").headers["x-request-id"], client.get("/healthz").headers["x-request-id"]
    assert a != b and len(a) == 32
    for bad in (b"has spaces", b"x" * 129, "\u00e9t\u00e9".encode(), b"a\x7fb"):
        rid = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert rid.encode() != bad and len(rid) == 32  # replaced, not echoed into headers and logs
    assert client.get("/v1/tasks/absent").headers["x-request-id"]  # errors carry it too


def test_json_access_record_has_the_request_id_task_version_and_timings(serve, store, make_pack,
                                                                        json_lines) -> None:
    store.register("digits", make_pack("digits").to_bytes())
    with serve(log_format="json") as c:
        r = c.post("/v1/tasks/digits/predict", content=image_bytes(), headers={"X-Request-ID": "req-1"})
        assert r.status_code == 200
        r2 = c.post("/v1/predict?tasks=digits", content=image_bytes())
        assert r2.status_code == 200
        assert c.get("/v1/tasks/nope").status_code == 404
        c.get("/readyz")
    recs = [r for r in _records(json_lines) if r["logger"] == ACCESS_LOGGER]
    one, multi, missing, ready = recs
    assert one["request_id"] == "req-1" and one["task"] == "digits" and one["version"] == 1
    assert one["status"] == 200 and one["method"] == "POST" and one["path"] == "/v1/tasks/digits/predict"
    assert set(one["timings_ms"]) == {"decode", "queue", "infer", "total"} and one["duration_ms"] > 0
    assert one["level"] == "info" and one["msg"] == '"POST /v1/tasks/digits/predict" 200'
    assert multi["task"] == "digits" and multi["version"] == {"digits": 1}
    assert multi["request_id"] == r2.headers["x-request-id"]
    assert missing["status"] == 404 and missing["task"] == "nope" and "version" not in missing
    assert ready["level"] == "debug"  # probes and scrapes stay out of the info log


def test_text_format_writes_no_access_records_of_its_own(client, json_lines) -> None:
    client.get("/healthz")
    assert _records(json_lines) == []  # uvicorn's access log covers text mode


def test_app_logs_inside_a_request_carry_its_id(json_lines) -> None:
    app = FastAPI()
    log = logging.getLogger("test.app")

    @app.get("/work")
    async def work() -> dict:
        log.warning("working on it", extra={"fields": {"step": 3}})
        return {}

    app.add_middleware(RequestLogMiddleware)
    with TestClient(app) as c:
        rid = c.get("/work").headers["x-request-id"]
    log.info("outside any request")
    inside, outside = _records(json_lines)
    assert inside["request_id"] == rid and inside["msg"] == "working on it" and inside["step"] == 3
    assert inside["level"] == "warning" and inside["logger"] == "test.app" and inside["ts"].endswith("+00:00")
    assert "request_id" not in outside


def test_exceptions_are_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    out = json.loads(line)
    assert out["msg"] == "failed here" and "ValueError: boom" in out["exc"]


def test_uvicorn_log_config() -> None:
    from uvicorn.config import LOGGING_CONFIG

    assert uvicorn_log_config("text", "info") is LOGGING_CONFIG
    cfg = uvicorn_log_config("json", "warning")
    logging.config.dictConfig({**cfg, "root": {"handlers": [], "level": "WARNING"}})  # valid for dictConfig
    assert cfg["root"]["level"] == "WARNING" and cfg["formatters"]["json"]["()"] is JsonFormatter


def test_draining_app_reports_not_ready_and_closes_connections(client) -> None:
    assert client.get("/readyz").status_code == 200
    client.app.state.drain.begin()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "draining" and r.headers["connection"] == "close"
    assert r.headers["x-request-id"]
    r = client.get("/healthz")
    assert r.status_code == 200 and r.headers["connection"] == "close"  # still serving, moving clients away

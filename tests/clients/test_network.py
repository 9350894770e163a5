"""A client that survives the network: connection retries, waiting for readiness, reconnecting sessions."""

from __future__ import annotations

import socket
import threading

import pytest

from nettailor_client import AsyncClient, Client, Retry, ServerUnreachable, Timeout

from .conftest import TOKEN, _create_app, _fill_store, png


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """A real server on a fixed port that can be stopped and started again (a replica restarting)."""

    def __init__(self, root, port: int) -> None:
        self.root, self.port = root, port
        self.server = self.thread = None

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(_create_app(self.root), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_connections_are_retried_by_the_transport():
    with Client("http://127.0.0.1:1") as c:
        assert c._http._transport._pool._retries == 3  # httpx.HTTPTransport(retries=Retry.connect)
    with Client("http://127.0.0.1:1", retries=Retry(connect=0)) as c:
        assert c._http._transport._pool._retries == 0
        with pytest.raises(ServerUnreachable):
            c.health()


def test_wait_ready(live_server):
    with Client(live_server.url) as c:
        assert c.wait_ready(10)["status"] == "ready"
    with Client(f"http://127.0.0.1:{_free_port()}", retries=Retry(connect=0)) as c, \
            pytest.raises(Timeout, match=r"not ready after 0\.3 s"):
        c.wait_ready(0.3, interval=0.05)


@pytest.mark.anyio
async def test_async_wait_ready(live_server):
    async with AsyncClient(live_server.url) as c:
        assert (await c.wait_ready(10))["status"] == "ready"


def test_a_session_reconnects_after_the_server_restarts(backbone, tmp_path):
    root = tmp_path / "store"
    _fill_store(root, backbone)
    server = _Server(root, _free_port())
    server.start()
    frame = png()
    # A generous read timeout: this tests reconnection, not speed (a throttled machine took over 10 s).
    with Client(f"http://127.0.0.1:{server.port}", token=TOKEN, retries=Retry(connect=0), timeout=120) as c:
        c.wait_ready(60)
        session = c.task("alpha")
        first = session.predict(frame)
        server.stop()  # the robot's connection drops; a new replica comes up a moment later
        restart = threading.Timer(0.5, server.start)
        restart.start()
        try:
            again = session.predict(frame)
        finally:
            restart.join()
            server.stop()
        assert session.reconnects == 1
        assert again.predictions == first.predictions
        session.reconnect_timeout = 0  # a robot that would rather fail fast
        with pytest.raises(ServerUnreachable):
            session.predict(frame)


def test_ready_command(live_server, capsys):
    from nettailor_client.cli import EXIT_OK, EXIT_UNREACHABLE, main

    assert main(["ready", "--url", live_server.url, "--wait", "10", "--json"]) == EXIT_OK
    assert '"status": "ready"' in capsys.readouterr().out
    assert main(["ready", "--url", f"http://127.0.0.1:{_free_port()}", "--wait", "0", "--retries", "0"]) == (
        EXIT_UNREACHABLE)

"""The fault campaign's harness: a private redis-server (AOF, temp dir, free port) that tests may kill
and restart, and server replicas as real processes (``python -m nettailor serve``).

Never the shared Redis on 6379: everything here may be killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "fault-campaign-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, what: str, seconds: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class RedisServer:
    """redis-server with AOF (appendfsync always: an acknowledged write survives kill -9) in ``dir``."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("the fault suite needs redis-server on PATH (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        _wait(up, "redis-server to start")

    def kill(self) -> None:
        """kill -9: no shutdown, no final fsync."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Replica:
    base: str
    proc: subprocess.Popen
    log: Path

    def rss_bytes(self, kind: str = "VmRSS") -> int:
        """Resident memory from /proc, the replica and its descendants (the executor process) summed:
        ``VmRSS`` (all), ``RssAnon`` (heap and other private memory) or ``RssFile`` (pages of mapped
        files: the libraries' code, faulted in as new code paths run)."""
        total, todo = 0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):  # the process ended
                continue
            total += next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith(f"{kind}:"))
        return total

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


@contextmanager
def replica(store_url: str, log_dir: Path, *, wait_ready: bool = True, **env: str) -> Iterator[Replica]:
    """``python -m nettailor serve`` as a real process on a free port."""
    port = free_port()
    # The executor process on, as `nettailor serve` runs by default (tests/conftest.py turns it off).
    full_env = dict(os.environ, NETTAILOR_EXECUTOR_PROCESS="1", NETTAILOR_STORE=store_url, NETTAILOR_TOKEN=TOKEN,
                    NETTAILOR_DEVICE="cpu",
                    NETTAILOR_BATCH_WINDOW_MS="1", NETTAILOR_BACKBONE_POLL_S="0.2", OMP_NUM_THREADS="1", **env)
    log = log_dir / f"replica-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nettailor", "serve", "--host", "127.0.0.1", "--port",
                                 str(port), "--log-level", "warning"], cwd=ROOT, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
    rep = Replica(f"http://127.0.0.1:{port}", proc, log)

    def alive() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the replica exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            httpx.get(f"{rep.base}/healthz", timeout=1)
            return True
        except httpx.HTTPError:
            return False

    try:
        _wait(alive, "the replica to answer /healthz", 600)
        if wait_ready:
            _wait(rep.ready, "the replica to be ready", 300)
        yield rep
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


__all__ = ["AUTH", "TOKEN", "RedisServer", "Replica", "free_port", "replica"]

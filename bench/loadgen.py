"""Shared pieces of the serving benchmarks: a cheap closed-loop HTTP load generator, server processes,
and CPU and memory accounting from /proc.

The load generator speaks HTTP/1.1 over keep-alive connections with pre-built request bytes (in the
manner of ``wrk``), on uvloop when it is installed: on a 2-core machine every core the generator
burns is taken from the server, so it must stay cheap, and its CPU is reported beside every point.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Conn", "Load", "ProcStats", "closed_loop", "free_port", "new_loop", "proc_stats", "start_server",
           "stop_server", "summarise_latencies", "wait_ready"]

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is in the serve extra
        return asyncio.new_event_loop()


class Conn:
    """One keep-alive HTTP/1.1 connection: ``await conn.post(path, body)`` -> (status, body bytes)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self._r, self._w = await asyncio.open_connection(self.host, self.port)
        sock = self._w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def post(self, path: str, body: bytes, ctype: str = "image/png") -> tuple[int, bytes]:
        if self._w is None:
            await self._open()
        assert self._r is not None and self._w is not None
        self._w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self._r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k == "content-length":
                length = int(v)
            elif k == "connection" and v.strip().lower() == "close":
                close = True
        data = await self._r.readexactly(length)
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._r = self._w = None


@dataclass
class Load:
    """What a closed loop measured."""

    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)


async def closed_loop(conc: int, seconds: float, one: Callable[[int, random.Random], Awaitable[bool]],
                      seed: int) -> Load:
    """``conc`` clients each call ``one(client, rng)`` (True: success) in a loop for ``seconds``."""
    load = Load()
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            ok = await one(k, rng)
            if ok:
                load.latencies.append(time.perf_counter() - t0)
                load.requests += 1
            else:
                load.errors += 1
                await asyncio.sleep(0.01)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(conc)))
    load.wall_s = time.perf_counter() - t0
    return load


def summarise_latencies(latencies: list[float]) -> dict[str, float]:
    arr = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


@dataclass(frozen=True)
class ProcStats:
    cpu_s: float  # user + system seconds of the process and its descendants
    rss_mb: float
    rss_file_mb: float = 0.0  # of which mapped files (the spill tier's tasks, shared with the page cache)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(c) for c in task.read_text().split()]
    return out


def proc_stats(pid: int) -> ProcStats:
    """CPU seconds and resident memory of ``pid`` and every descendant (worker processes included)."""
    cpu, rss, rss_file = 0.0, 0.0, 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _TICK
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("RssFile:"):
                    rss_file += int(line.split()[1]) / 1024
            todo += _children(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return ProcStats(cpu, rss, rss_file)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; its log: {getattr(proc, 'log_path', '?')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start_server(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """The server's output goes to a log file (a pipe nobody reads would fill and stall it)."""
    fd, log_path = tempfile.mkstemp(prefix="nettailor-bench-", suffix=".log")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=fd)
    os.close(fd)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()

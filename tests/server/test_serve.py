"""``nettailor serve`` as a real process: graceful drain under load, TLS, JSON logs, flag errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from nettailor.cli import main

from .conftest import TOKEN, image_bytes
from .test_replicas import _free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    proc: subprocess.Popen
    base: str
    log: Path
    verify: ssl.SSLContext | bool = True

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@contextmanager
def nettailor_serve(store_root: Path, tmp_path: Path, *flags: str, scheme: str = "http",
                    verify: ssl.SSLContext | bool = True, **env: str) -> Iterator[Served]:
    port = _free_port()
    log = tmp_path / f"serve-{port}.log"
    full_env = dict(os.environ, NETTAILOR_STORE=str(store_root), NETTAILOR_TOKEN=TOKEN, NETTAILOR_DEVICE="cpu",
                    OMP_NUM_THREADS="1", **env)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nettailor", "serve", "--host", "127.0.0.1", "--port",
                                 str(port), *flags], cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    served = Served(proc, f"{scheme}://127.0.0.1:{port}", log, verify)
    try:
        deadline = time.monotonic() + 300  # a generous bound: CI machines are shared
        while True:
            if proc.poll() is not None:
                pytest.fail(f"nettailor serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{served.base}/readyz", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "nettailor serve did not become ready"
            time.sleep(0.2)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@dataclass
class Load:
    """Closed-loop clients, each request on a new connection (so a refused connection is visible as such),
    and a readiness poller that plays the load balancer: once /readyz fails, each client sends one last
    request (the ones a balancer still routes while it reacts), then stops."""

    base: str
    clients: int = 6
    results: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, outcome)
    readiness: list[tuple[float, int | str, str]] = field(default_factory=list)  # (time, status, body status)
    removed: threading.Event = field(default_factory=threading.Event)

    def _client(self, k: int) -> None:
        img = image_bytes(seed=k)
        last = False
        while not last:
            last = self.removed.is_set()
            t0 = time.monotonic()
            try:
                r = httpx.post(f"{self.base}/v1/tasks/digits/predict", content=img, timeout=60)
                outcome = "ok" if r.status_code == 200 else f"status {r.status_code}: {r.text[:200]}"
            except httpx.ConnectError:
                outcome = "refused"
            except httpx.HTTPError as e:
                outcome = f"failed: {e!r}"
            self.results.append((t0, time.monotonic(), outcome))
            if outcome == "refused":
                return

    def _poller(self) -> None:
        while not self.removed.is_set():
            try:
                r = httpx.get(f"{self.base}/readyz", timeout=30)
                self.readiness.append((time.monotonic(), r.status_code, r.json()["status"]))
                if r.status_code == 503:
                    self.removed.set()
            except httpx.HTTPError as e:
                self.readiness.append((time.monotonic(), "error", repr(e)))
                return
            time.sleep(0.05)

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(k,)) for k in range(self.clients)]
        self.threads.append(threading.Thread(target=self._poller))
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.removed.set()
        for t in self.threads:
            t.join(120)


def test_sigterm_under_load_drains_without_failing_a_request(store, make_pack, tmp_path) -> None:
    store.register("digits", make_pack("digits").to_bytes())
    # A 250 ms batch window keeps several requests in flight at any moment.  The drain period only has
    # to outlast each client's last request after /readyz turned 503.
    with nettailor_serve(store.root, tmp_path, NETTAILOR_DRAIN_S="8", NETTAILOR_BATCH_WINDOW_MS="250") as srv, \
            Load(srv.base) as load:
        while sum(1 for *_, o in load.results if o == "ok") < 12:
            assert not any(o != "ok" for *_, o in load.results), load.results
            time.sleep(0.05)
        t_term = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        rc = srv.proc.wait(120)
    failed = [r for r in load.results if r[2] != "ok"]
    assert failed == [], f"{len(failed)} of {len(load.results)} requests failed: {failed[:5]}"
    in_flight = [r for r in load.results if r[0] < t_term < r[1]]
    during_drain = [r for r in load.results if r[0] > t_term]
    assert in_flight, "no request was in flight at SIGTERM: the test proved nothing"
    assert len(during_drain) >= load.clients, "each client's last request, sent while draining, is served"
    before = [s for t, s, _ in load.readiness if t < t_term]
    after = [(s, body) for t, s, body in load.readiness if t > t_term]
    assert before and set(before) == {200}
    assert after and after[-1] == (503, "draining")  # the poller stops at the first 503
    assert rc == 0, srv.log.read_text()[-2000:]
    text = srv.log.read_text()
    assert "SIGTERM: /readyz reports draining" in text and "drain period over" in text
    print(f"drain: {len(load.results)} requests, {len(in_flight)} in flight at SIGTERM, "
          f"{len(during_drain)} sent during the drain, 0 failed")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return key, cert


def test_tls_and_json_logs_on_a_real_server(store, make_pack, tmp_path) -> None:
    store.register("digits", make_pack("digits").to_bytes())
    key, cert = _self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))  # trusts this certificate only
    with nettailor_serve(store.root, tmp_path, "--ssl-keyfile", str(key), "--ssl-certfile", str(cert),
                         scheme="https", verify=trust, NETTAILOR_LOG_FORMAT="json", NETTAILOR_DRAIN_S="0.2") as srv:
        r = httpx.post(f"{srv.base}/v1/tasks/digits/predict", content=image_bytes(), verify=trust,
                       headers={"X-Request-ID": "tls-req-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "tls-req-1"
        assert r.json()["version"] == 1
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(srv.base.replace("https://", "http://") + "/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):  # nor does a client that does not trust the certificate
            httpx.get(f"{srv.base}/healthz", timeout=5)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
    records = srv.records()  # every line is one JSON object, uvicorn's own messages included
    assert any(rec["logger"] == "uvicorn.error" and "https://" in rec["msg"] for rec in records)
    (access,) = [rec for rec in records if rec.get("request_id") == "tls-req-1"]
    assert access["logger"] == "nettailor.access" and access["status"] == 200 and access["task"] == "digits"
    assert access["version"] == 1 and access["timings_ms"]["total"] > 0 and access["duration_ms"] > 0


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--ssl-keyfile", "key.pem"], "--ssl-keyfile and --ssl-certfile go together"),
    (["serve", "--ssl-keyfile", "nope.pem", "--ssl-certfile", "nope.pem"], "nope.pem: no such file"),
])
def test_tls_flag_errors_are_clear(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_workers_flag_is_gone(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--workers", "2"])
    assert "--workers" in capsys.readouterr().err

"""A real NetTailor server for the SDK tests: a DirStore with the tiny backbone and real packs,
served by uvicorn on a loopback port in a thread (so the CLI and the example can reach it too)."""

from __future__ import annotations

import io
import json
import random
import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockstore import Backbone, DirStore, Plan, Preprocess, TailoredNet, TaskPack

TOKEN = "secret"
TASKS = {"alpha": 3, "beta": 4, "gamma": 5}
# Limits small enough to trip with test images, large enough for the 32 px frames.
MAX_UPLOAD_BYTES = 200_000
MAX_PIXELS = 100_000


def build_pack(backbone: Backbone, task_id: str, num_classes: int = 3, version: str = "1") -> TaskPack:
    net = TailoredNet(backbone, Plan.full(backbone.spec, 3, bottleneck=backbone.bottleneck), num_classes).eval()
    return TaskPack.from_net(net, task_id, [f"{task_id}-{i}" for i in range(num_classes)], Preprocess(size=32),
                             version=version, metrics={"val_acc": 0.9, "test_acc": 0.89})


def with_format(pack: bytes, fmt: str) -> bytes:
    """The same safetensors blob with another ``format`` metadata tag."""
    (n,) = struct.unpack("<Q", pack[:8])
    header = json.loads(pack[8:8 + n])
    header["__metadata__"]["format"] = fmt
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + pack[8 + n:]


def png(size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    img = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class LiveServer:
    url: str
    store: DirStore
    root: Path
    backbone: Backbone
    make_pack: Callable[..., TaskPack]


def _serve(app, name: str) -> Iterator[str]:  # type: ignore[no-untyped-def]
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"the test server {name} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _create_app(root: Path, **overrides):  # type: ignore[no-untyped-def]
    try:
        from server.app import create_app
        from server.settings import Settings
    except ImportError as e:  # the server is written in parallel: say so instead of erroring
        pytest.skip(f"server.app is not importable yet: {e}")
    settings = Settings(store=str(root), token=TOKEN, device="cpu", **overrides)
    return create_app(settings)


def _fill_store(root: Path, backbone: Backbone) -> DirStore:
    store = DirStore(root, poll_interval=0.05)
    store.put_backbone(backbone.to_bytes())
    for task_id, n in TASKS.items():
        store.register(task_id, build_pack(backbone, task_id, n).to_bytes())
    return store


@pytest.fixture(scope="session")
def live_server(backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("client-store")
    store = _fill_store(root, backbone)
    app = _create_app(root, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_PIXELS, batch_window_ms=0.0)
    for url in _serve(app, "nettailor-test-server"):
        yield LiveServer(url, store, root, backbone, lambda *a, **k: build_pack(backbone, *a, **k))


@pytest.fixture(scope="session")
def overloaded_server(backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose queue holds one sample: concurrent requests get 503 overloaded."""
    root = tmp_path_factory.mktemp("client-store-overloaded")
    _fill_store(root, backbone)
    app = _create_app(root, max_queue=1, max_batch=1, batch_window_ms=0.0)
    yield from _serve(app, "nettailor-overloaded-server")


@pytest.fixture
def client(live_server: LiveServer) -> Iterator:  # type: ignore[type-arg]
    from nettailor_client import Client

    with Client(live_server.url, token=TOKEN, retries=0) as c:
        yield c


@pytest.fixture(scope="session")
def cli_exe() -> str:
    """The installed console script (``pip install -e clients``), next to this interpreter."""
    exe = Path(sys.executable).with_name("nettailor-client")
    found = str(exe) if exe.exists() else shutil.which("nettailor-client")
    if not found:
        pytest.fail("nettailor-client is not installed: run .venv/bin/pip install -e ./clients --no-deps")
    return found


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"

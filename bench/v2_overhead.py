"""Server CPU per request: the Open Inference Protocol (/v2 infer) against /v1 predict, same images.

A real uvicorn server (one process, a directory store holding one task) answers the same requests
in both protocols, sent one at a time over one keep-alive connection from this process.  The
server's CPU time (user + system, from /proc/<pid>/stat, every thread of it) is read around each
block of requests; blocks of each kind are interleaved round by round, in alternating order, so
that load from other processes hits them alike.  Kinds:

* ``v1``        - ``POST /v1/tasks/{id}/predict``, the image as the raw body;
* ``v2_bytes``  - ``POST /v2/models/{id}/infer``, the image as a BYTES tensor with the binary data
                  extension (what tritonclient sends by default), both outputs back as binary;
* ``v2_json``   - the same request with the base64 image and both outputs in JSON;
* ``v1_batch`` / ``v2_batch`` - eight images in one request (predict_batch against BYTES [8]).

Run:  .venv/bin/python bench/v2_overhead.py [--rounds 6] [--requests 50] [--arch resnet18] [--out FILE]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

import torch  # noqa: E402

from blockstore import Backbone, BackboneConfig, DirStore, Plan, Preprocess, TailoredNet, TaskPack  # noqa: E402
from blockstore.testing import randomize  # noqa: E402

TOKEN = "bench"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _image(seed: int) -> bytes:
    img = Image.effect_noise((64, 48), 40 + seed).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _v2_body(blobs: list[bytes], binary: bool) -> tuple[bytes, dict[str, str]]:
    """The body tritonclient.http builds (binary) or its JSON twin."""
    if binary:
        raw = b"".join(struct.pack("<I", len(b)) + b for b in blobs)
        head = json.dumps({"inputs": [{"name": "image", "shape": [len(blobs)], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True, "top_k": 5}}).encode()
        return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                            "Content-Type": "application/octet-stream"}
    head = json.dumps({"inputs": [{"name": "image", "shape": [len(blobs)], "datatype": "BYTES",
                                   "data": [base64.b64encode(b).decode() for b in blobs]}],
                       "parameters": {"top_k": 5}}).encode()
    return head, {"Content-Type": "application/json"}


def _serve(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, NETTAILOR_STORE=str(root), NETTAILOR_TOKEN=TOKEN, NETTAILOR_DEVICE="cpu",
               NETTAILOR_BATCH_WINDOW_MS="0", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", help="backbone architecture (default resnet18, the demo's)")
    ap.add_argument("--stem", default="3x3s2", help="backbone stem (default 3x3s2)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    ap.add_argument("--requests", type=int, default=50, help="requests per kind per round (default 50)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(arch=args.arch, stem=args.stem, input_size=32, num_classes=10)).freeze().eval()
    with tempfile.TemporaryDirectory() as tmp:
        store = DirStore(Path(tmp) / "store")
        store.put_backbone(bb.to_bytes())
        net = randomize(TailoredNet(bb, Plan.full(bb.spec, 3, bottleneck=bb.bottleneck), 10), 0)
        store.register("bench", TaskPack.from_net(net, "bench", [f"c{i}" for i in range(10)],
                                                  Preprocess(size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                                                             channels=3)).to_bytes())
        proc, base = _serve(Path(tmp) / "store")
        try:
            figures = _measure(base, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(10)
    result = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared with other agents)",
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "backbone": f"{args.arch} {args.stem} 32 px, one task keeping every block", **figures}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _measure(base: str, pid: int, args: argparse.Namespace) -> dict:
    imgs = [_image(i) for i in range(8)]
    http = httpx.Client(base_url=base, timeout=30)
    one_bin, one_json, eight_bin = _v2_body(imgs[:1], True), _v2_body(imgs[:1], False), _v2_body(imgs, True)
    files = [("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(imgs)]

    def ok(r: httpx.Response) -> None:
        if r.status_code != 200:
            raise SystemExit(f"{r.request.url}: {r.status_code} {r.text[:300]}")

    kinds: dict[str, Callable[[], None]] = {
        "v1": lambda: ok(http.post("/v1/tasks/bench/predict", content=imgs[0],
                                   headers={"Content-Type": "image/png"})),
        "v2_bytes": lambda: ok(http.post("/v2/models/bench/infer", content=one_bin[0], headers=one_bin[1])),
        "v2_json": lambda: ok(http.post("/v2/models/bench/infer", content=one_json[0], headers=one_json[1])),
        "v1_batch": lambda: ok(http.post("/v1/tasks/bench/predict_batch", files=files)),
        "v2_batch": lambda: ok(http.post("/v2/models/bench/infer", content=eight_bin[0], headers=eight_bin[1])),
    }
    for call in kinds.values():  # warm up: pack cache, first-call paths
        for _ in range(10):
            call()
    cpu = dict.fromkeys(kinds, 0.0)
    wall = dict.fromkeys(kinds, 0.0)
    order = list(kinds)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            c0, t0 = _cpu_seconds(pid), time.perf_counter()
            for _ in range(args.requests):
                kinds[name]()
            wall[name] += time.perf_counter() - t0
            cpu[name] += _cpu_seconds(pid) - c0
    n = args.rounds * args.requests
    per = {k: {"server_cpu_ms_per_request": round(1000 * cpu[k] / n, 3),
               "wall_ms_per_request": round(1000 * wall[k] / n, 3)} for k in kinds}
    ratio = {
        "v2_bytes_vs_v1": round(cpu["v2_bytes"] / cpu["v1"], 3),
        "v2_json_vs_v1": round(cpu["v2_json"] / cpu["v1"], 3),
        "v2_batch_vs_v1_batch": round(cpu["v2_batch"] / cpu["v1_batch"], 3),
    }
    return {"requests_per_kind": n, "per_request": per, "server_cpu_ratio": ratio}


if __name__ == "__main__":
    main()

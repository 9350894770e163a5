"""Folder prediction through a real ``nettailor serve``: batched requests vs one request per file.

    python bench/client_folder_bench.py [--images 2000] [--batch-size 32] [--concurrency 4] \\
        [--out bench/results/client_folder_bench.json]

It builds a store in a temporary folder (a ResNet-18 with the 3x3 stride-2 stem at 32 px and one task
with seeded tensors: the figures measure the serving path, not accuracy), writes N MNIST test digits as
PNG files, starts ``python -m nettailor serve`` on a free port, then times the installed CLI twice:

* ``nettailor-client predict TASK DIR --batch-size B --concurrency C`` (predict_batch, C in flight);
* ``nettailor-client predict TASK DIR --batch-size 1 --concurrency 1`` (one request per file, in turn,
  as the CLI did before).

Both runs must return the same top-1 label for every file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from blockstore import Backbone, BackboneConfig, DirStore, Plan, Preprocess, TailoredNet, TaskPack
from blockstore.testing import randomize
from trainer.datasets import _read_idx, mnist_dir


def build_store(root: Path) -> None:
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig("resnet18", "3x3s2", 32, 10)).freeze().eval()
    store = DirStore(root)
    store.put_backbone(bb.to_bytes())
    net = randomize(TailoredNet(bb, Plan.full(bb.spec, 3, bottleneck=False), 10), seed=1)
    pack = TaskPack.from_net(net, "digits", [str(i) for i in range(10)], Preprocess(32, (0.5,), (0.5,), 1))
    store.register("digits", pack.to_bytes())


def write_digits(folder: Path, n: int) -> None:
    images = _read_idx(mnist_dir() / "t10k-images-idx3-ubyte.gz")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(images[i % len(images)]).save(buf, format="PNG")
        (folder / f"{i:05d}.png").write_bytes(buf.getvalue())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(cli: list[str], url: str, folder: Path, batch: int, concurrency: int) -> tuple[float, list[str]]:
    argv = [*cli, "--url", url, "--timeout", "600", "predict", "digits", str(folder), "--batch-size", str(batch),
            "--concurrency", str(concurrency), "--top-k", "1", "--format", "csv", "--quiet"]
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr}")
    return seconds, [row["label"] for row in csv.DictReader(io.StringIO(r.stdout))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="files in the folder (default 2000)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per request (default 32)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/client_folder_bench.json"),
                    help="JSON result (default bench/results/client_folder_bench.json)")
    args = ap.parse_args()
    exe = shutil.which("nettailor-client")
    cli = [exe] if exe else [sys.executable, "-m", "nettailor_client.cli"]
    with tempfile.TemporaryDirectory(prefix="nt-folder-bench-") as tmp:
        root = Path(tmp)
        build_store(root / "store")
        write_digits(root / "digits", args.images)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = os.environ | {"NETTAILOR_STORE": str(root / "store"), "NETTAILOR_TOKEN": "bench",
                            "NETTAILOR_DEVICE": "cpu"}
        server = subprocess.Popen([sys.executable, "-m", "nettailor", "serve", "--port", str(port),
                                   "--log-level", "warning"], env=env)
        try:
            subprocess.run([*cli, "--url", url, "ready", "--wait", "300"], check=True, capture_output=True)
            run_cli(cli, url, root / "digits", args.batch_size, args.concurrency)  # warm the pack cache
            batched_s, batched = run_cli(cli, url, root / "digits", args.batch_size, args.concurrency)
            single_s, single = run_cli(cli, url, root / "digits", 1, 1)
        finally:
            server.terminate()
            server.wait(30)
    if batched != single or len(batched) != args.images:
        raise SystemExit("the two runs disagree on some labels")
    result = {
        "bench": "client_folder_bench", "command": " ".join(sys.argv), "machine": platform.node(),
        "cpus": os.cpu_count(), "note": "2-core machine shared with other agents: compare the ratio, measured "
                                        "side by side in one run",
        "model": "resnet18, 3x3s2 stem, 32 px, full plan (seeded task tensors)", "images": args.images,
        "batched": {"batch_size": args.batch_size, "concurrency": args.concurrency, "seconds": round(batched_s, 2),
                    "images_per_s": round(args.images / batched_s, 1)},
        "one_request_per_file": {"seconds": round(single_s, 2), "images_per_s": round(args.images / single_s, 1)},
        "speedup": round(single_s / batched_s, 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

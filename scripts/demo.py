"""The end-to-end demo: universal blocks -> tailored tasks -> store -> server -> client.

    make demo                       # everything, on the embedded directory store
    make demo DEMO_ARGS=--keep-serving
    NETTAILOR_STORE=redis://127.0.0.1:6379/0 make demo

Steps: check the environment and data; pre-train the universal backbone with the default recipe of
`nettailor pretrain` (Fashion-MNIST plus generated colour shapes, on 60k images) or reuse it; tailor
three MNIST tasks of different difficulty with default budgets (or reuse them); publish them to the
store; start `nettailor serve`; query every task with the SDK on real test images, run the robot
example; print a summary (a task outside its tolerance is flagged there) and stop the server (unless
--keep-serving).

Choice of stem: the ImageNet stem (7x7 stride 2 + max-pool) trains about 3x faster at 32 px than
the 3x3 stride-2 stem on this 2-core CPU, which is what fits the demo's 15-minute budget.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# Everything that decides what the cached artefacts are; change it and they are rebuilt.
# The default recipe of `nettailor pretrain` (grey Fashion-MNIST and colour shapes, augmented, 3 passes),
# on 60k of its 95k training images to fit the demo's budget.
PRETRAIN = ["--arch", "resnet18", "--stem", "imagenet", "--dataset", "fashion+shapes", "--train-limit", "60000",
            "--val-limit", "2000", "--test-limit", "2000", "--batch-size", "128"]
TAILOR = ["--train-limit", "4000", "--val-limit", "1000", "--test-limit", "2000"]
QUICK_PRETRAIN = ["--arch", "resnet10", "--stem", "imagenet", "--dataset", "fashion", "--train-limit", "2000",
                  "--val-limit", "500", "--test-limit", "500", "--batch-size", "128", "--steps", "40"]
QUICK_TAILOR = ["--train-limit", "600", "--val-limit", "300", "--test-limit", "300", "--teacher-steps", "30",
                "--student-steps", "40", "--finetune-steps", "20", "--sweep", "0,2"]


class DemoError(Exception):
    """A step failed; the message says which and what to do."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None,
                    help="store URL or directory (default NETTAILOR_STORE, else the embedded .nettailor/store)")
    ap.add_argument("--tasks", default="mnist-01,mnist-parity,mnist",
                    help="data sets to tailor, easiest first (default mnist-01,mnist-parity,mnist)")
    ap.add_argument("--work", type=Path, default=ROOT / ".nettailor" / "demo", help="cache of the demo's artefacts")
    ap.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--keep-serving", action="store_true", help="leave the server running at the end")
    ap.add_argument("--train-only", action="store_true",
                    help="pre-train, tailor and publish, then stop (the docker-compose trainer service)")
    ap.add_argument("--fresh", action="store_true", help="ignore cached artefacts and retrain everything")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration (ResNet-10, a few hundred images)")
    ap.add_argument("--eval-images", type=int, default=200, help="test images per task sent over HTTP (default 200)")
    return ap


def step(n: int, total: int, text: str) -> float:
    print(f"\n\033[1m[{n}/{total}] {text}\033[0m", flush=True)
    return time.perf_counter()


def run(cmd: list[str], what: str, env: dict | None = None) -> None:
    print("  $ " + " ".join(Path(c).name if c == PY else c for c in cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise DemoError(f"{what} failed (exit code {proc.returncode}); see the messages above")


def key_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_environment() -> None:
    missing = []
    for mod in ("torch", "torchvision", "fastapi", "uvicorn", "nettailor_client", "trainer", "server"):
        try:
            __import__(mod)
        except ImportError as e:
            missing.append(f"{mod} ({e})")
    if missing:
        raise DemoError("missing Python packages: " + ", ".join(missing) + ". Run `make setup` (scripts/setup.sh).")
    from trainer.datasets import mnist_dir

    fashion = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    try:
        mnist = mnist_dir()
    except Exception as e:
        raise DemoError(f"MNIST is not installed ({e}); run `make setup`") from None
    if not fashion.is_file():
        raise DemoError(f"{fashion} is missing: install the Debian package dataset-fashion-mnist (make setup does)")
    print(f"  python {sys.version.split()[0]}, MNIST at {mnist}, Fashion-MNIST at {fashion.parent}")


def ensure_backbone(args: argparse.Namespace, store_url: str, pretrain: list[str]) -> str:
    from blockstore import Backbone, open_store

    blob, meta = args.work / "backbone.safetensors", args.work / "backbone.json"
    key = key_of(pretrain)
    if not args.fresh and blob.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        store = open_store(store_url)
        try:
            bid = store.put_backbone(blob.read_bytes())
        finally:
            store.close()
        print(f"  reusing the cached universal backbone {bid[:12]}... ({blob})")
        return bid
    run([PY, "-m", "nettailor", "pretrain", *pretrain, "--store", store_url, "--out", str(blob)], "pre-training")
    bid = Backbone.from_bytes(blob.read_bytes()).backbone_id
    meta.write_text(json.dumps({"key": key, "backbone_id": bid}))
    return bid


def ensure_pack(args: argparse.Namespace, dataset: str, backbone_id: str, store_url: str, tailor: list[str]) -> Path:
    from blockstore import read_pack_info

    out = args.work / "packs" / f"{dataset}.pack"
    meta = out.with_suffix(".json")
    key = key_of(tailor, backbone_id)
    if not args.fresh and out.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key \
            and read_pack_info(out.read_bytes()).backbone_id == backbone_id:
        print(f"  {dataset}: reusing {out}")
        return out
    run([PY, "-m", "nettailor", "tailor", "--dataset", dataset, *tailor, "--store", store_url,
         "--work-dir", str(args.work / "work" / dataset), "--out", str(out),
         "--report-dir", str(ROOT / "runs" / dataset)], f"tailoring {dataset}")
    meta.write_text(json.dumps({"key": key}))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store_url: str, port: int, token: str) -> subprocess.Popen:
    import httpx

    # One local server behind no balancer: nothing to drain on SIGTERM (server/drain.py).
    env = {**os.environ, "NETTAILOR_STORE": store_url, "NETTAILOR_TOKEN": token, "NETTAILOR_DRAIN_S": "0"}
    cmd = [PY, "-m", "nettailor", "serve", "--host", "127.0.0.1", "--port", str(port)]
    print(f"  $ NETTAILOR_TOKEN=... python -m nettailor serve --host 127.0.0.1 --port {port}")
    log = open(ROOT / ".nettailor" / "demo-server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = (ROOT / ".nettailor" / "demo-server.log").read_text(errors="replace")[-2000:]
            raise DemoError(f"the server exited with code {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise DemoError("the server did not become ready within 90 s; see .nettailor/demo-server.log")


def test_images(dataset: str, n: int) -> tuple[list[bytes], list[str]]:
    """The first ``n`` test images of ``dataset`` as PNG files, with their true labels."""
    import numpy as np
    from PIL import Image

    from trainer.datasets import load_raw

    raw = load_raw(dataset, size=32, cache_dir=ROOT / ".nettailor" / "cache")
    images, labels = raw.test.images[:n], raw.test.labels[:n]
    out = []
    for img in images:
        arr = img.numpy()
        buf = io.BytesIO()
        Image.fromarray(arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out, [raw.classes[int(y)] for y in labels]


def query(url: str, token: str, tasks: list[str], n_images: int) -> dict[str, dict]:
    from nettailor_client import Client

    results: dict[str, dict] = {}
    with Client(url, token=token, timeout=60) as client:
        listed = {t.task_id for t in client.list_tasks()}
        missing = set(tasks) - listed
        if missing:
            raise DemoError(f"the server does not list {sorted(missing)}")
        frames = {}
        for task in tasks:
            pngs, truth = test_images(task, n_images)
            frames[task] = pngs[0]
            correct = 0
            for i in range(0, len(pngs), 32):
                batch = client.predict_batch(task, pngs[i : i + 32], top_k=1)
                correct += sum(r[0].label == t for r, t in zip(batch.results, truth[i : i + 32]))
            results[task] = {"http_acc": correct / len(pngs), "http_images": len(pngs)}
        # Switch latency: a robot cycling through the tasks, one frame each, on one connection.
        same: list[float] = []
        switch: dict[str, list[float]] = {t: [] for t in tasks}
        with client.task(tasks[0]) as session:
            for _ in range(3):
                session.predict(frames[tasks[0]])
            for _ in range(15):
                t0 = time.perf_counter()
                session.predict(frames[session.task_id])
                same.append((time.perf_counter() - t0) * 1000)
            for _ in range(10):
                for task in tasks:
                    session.switch(task)
                    t0 = time.perf_counter()
                    session.predict(frames[task])
                    switch[task].append((time.perf_counter() - t0) * 1000)
        for task in tasks:
            results[task]["switch_ms"] = sorted(switch[task])[len(switch[task]) // 2]
        results["_same_task_ms"] = {"p50": sorted(same)[len(same) // 2]}
    return results


def summary(tasks: list[str], packs: dict[str, Path], served: dict[str, dict]) -> None:
    from blockstore import TaskPack

    rows = []
    warnings: list[str] = []
    for task in tasks:
        m = TaskPack.from_bytes(packs[task].read_bytes()).metrics
        s = served.get(task, {})
        rows.append([
            task,
            f"{100 * m['test_acc']:.2f}% / {100 * m['teacher_test_acc']:.2f}%",
            f"{100 * s['http_acc']:.1f}%" if "http_acc" in s else "-",
            f"{m['params'] / 1e6:.2f}M / {m['backbone_params'] / 1e6:.2f}M",
            f"{m['flops'] / 1e6:.1f}M / {m['backbone_flops'] / 1e6:.1f}M",
            f"{m['blocks_kept']}/{m['blocks_total']}",
            f"{100 * m['blocks_params_removed']:.0f}%",
            "yes" if m.get("within_tolerance") else "NO",
            f"{s['switch_ms']:.1f} ms" if "switch_ms" in s else "-",
        ])
        if not m.get("within_tolerance"):
            warnings.append(f"{task}: {m.get('warning', 'not within tolerance of its teacher')}")
    head = ["task", "test acc tailored / teacher", "acc over HTTP", "params / full", "FLOPs / full",
            "blocks", "block params removed", "within tol.", "switch p50"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    print("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  " + line)
    for r in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if "_same_task_ms" in served:
        print(f"\n  same-task request p50: {served['_same_task_ms']['p50']:.1f} ms (client-side, over HTTP)")
    print("  params: the universal blocks a task keeps plus its own tensors, next to the whole backbone;")
    print("  FLOPs: the tailored network next to the full network with the same classifier.")
    figs = [ROOT / "runs" / t / f"{t}-architecture.png" for t in tasks]
    print("  architecture figures: " + ", ".join(str(f.relative_to(ROOT)) for f in figs if f.exists()))
    for w in warnings:  # a task outside its tolerance is never a quiet success
        print(f"\n  \033[33mWARNING\033[0m {w}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    store_url = args.store or os.environ.get("NETTAILOR_STORE") or str(ROOT / ".nettailor" / "store")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    pretrain, tailor = (QUICK_PRETRAIN, QUICK_TAILOR) if args.quick else (PRETRAIN, TAILOR)
    args.work.mkdir(parents=True, exist_ok=True)
    total = 4 if args.train_only else 7
    t_start = time.perf_counter()
    proc = None
    try:
        step(1, total, "environment and offline data")
        check_environment()
        t0 = step(2, total, f"universal blocks (store: {store_url})")
        backbone_id = ensure_backbone(args, store_url, pretrain)
        print(f"  backbone {backbone_id[:12]}... ready ({time.perf_counter() - t0:.0f} s)")
        t0 = step(3, total, f"tailoring {', '.join(tasks)}")
        packs = {t: ensure_pack(args, t, backbone_id, store_url, tailor) for t in tasks}
        print(f"  {len(packs)} packs ready ({time.perf_counter() - t0:.0f} s)")
        step(4, total, "publishing the packs")
        for t, path in packs.items():
            run([PY, "-m", "nettailor", "publish", str(path), "--store", store_url], f"publishing {t}")
        if args.train_only:
            print(f"\ndone in {time.perf_counter() - t_start:.0f} s")
            return 0
        step(5, total, "starting the server")
        token = os.environ.get("NETTAILOR_TOKEN") or secrets.token_urlsafe(16)
        port = args.port or free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(store_url, port, token)
        print(f"  serving on {url} (docs at {url}/docs)")
        step(6, total, "querying with the client SDK, then the robot example")
        served = query(url, token, tasks, args.eval_images)
        run([PY, "clients/examples/robot.py", "--url", url, "--tasks", ",".join(tasks), "--frames", "4"],
            "the robot example")
        step(7, total, "summary")
        summary(tasks, packs, served)
        print(f"\ndone in {time.perf_counter() - t_start:.0f} s")
        if args.keep_serving:
            print(f"the server keeps running on {url} (pid {proc.pid}); operator token: {token}")
            print(f"  try: nettailor-client --url {url} tasks")
            proc = None
        return 0
    except DemoError as e:
        print(f"\n\033[31mdemo failed:\033[0m {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            print("server stopped")


if __name__ == "__main__":
    sys.exit(main())

"""Serving benchmark: NetTailor's block-wise mixed-task batching against one full model per task.

Workload, in the manner of the multi-adapter serving studies (S-LoRA, Punica):
  * N registered tasks, N in {1, 5, 20, 100};
  * request popularity Zipf (alpha = 1) or uniform over the tasks;
  * closed-loop concurrency C in {1, 8, 32}: C clients each send a request and wait for the answer;
  * real HTTP (httpx) against real uvicorn processes on 127.0.0.1, Redis as the store.
Systems, measured in the same run:
  (a) this server (``nettailor serve``);
  (b) ``bench/baseline_server.py``: one full fine-tuned ResNet per task, an LRU of m models,
      per-model batching with the same window and batch cap;
  (c) the single-task upper bound: this server with N = 1.
Tasks use a ResNet-18 (3x3 stride-2 stem, 32 px) with random weights and seeded random plans that
keep about 60% of the blocks (throughput depends on shapes and plans, not on weight values).

Run:  .venv/bin/python bench/serve_bench.py            (about 15 minutes; --quick for a 2-minute smoke run)
Writes bench/out/serve_bench.json and bench/out/serve_bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockstore import Backbone, BackboneConfig, Preprocess, RedisStore, TailoredNet, TaskPack  # noqa: E402
from blockstore.testing import random_plan, randomize  # noqa: E402

CONFIG = BackboneConfig(arch="resnet18", stem="3x3s2", input_size=32, num_classes=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(url: str, path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def png_frames(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def metric_sum(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def closed_loop(url: str, tasks: list[str], dist: str, conc: int, seconds: float, frames: list[bytes],
                      seed: int) -> dict:
    rng = random.Random(seed)
    if dist == "zipf":
        weights = [1.0 / (i + 1) for i in range(len(tasks))]
    else:
        weights = [1.0] * len(tasks)
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client(k: int) -> None:
            nonlocal errors
            r = random.Random(seed * 1000 + k)
            while time.perf_counter() < stop_at:
                task = r.choices(tasks, weights)[0]
                body = frames[r.randrange(len(frames))]
                t0 = time.perf_counter()
                resp = await client.post(f"/v1/tasks/{task}/predict", content=body,
                                         headers={"content-type": "image/png"})
                if resp.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
                    await asyncio.sleep(0.01)

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(conc)))
        wall = time.perf_counter() - t0
    del rng
    arr = np.array(lat) * 1000 if lat else np.array([float("nan")])
    return {"requests": len(lat), "errors": errors, "throughput_rps": len(lat) / wall,
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL (keys get a unique prefix)")
    ap.add_argument("--tasks", default="1,5,20,100", help="comma-separated task counts N")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated closed-loop concurrency C")
    ap.add_argument("--dists", default="zipf,uniform", help="request popularity: zipf and/or uniform")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per point")
    ap.add_argument("--m", type=int, default=4, help="baseline: full models kept in memory")
    ap.add_argument("--window-ms", type=float, default=2.0, help="batch collection window (both systems)")
    ap.add_argument("--max-batch", type=int, default=32, help="largest batch (both systems)")
    ap.add_argument("--systems", default="nettailor,baseline", help="which systems to run (default both)")
    ap.add_argument("--quick", action="store_true", help="smoke run: N in {1,20}, C=32, zipf, 3 s")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "serve_bench.json"), help="JSON output path")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.concurrency, args.dists, args.seconds, args.warmup = "1,20", "32", "zipf", 3.0, 1.0
    ns = [int(x) for x in args.tasks.split(",")]
    cs = [int(x) for x in args.concurrency.split(",")]
    dists = args.dists.split(",")
    torch.manual_seed(0)
    bb = Backbone(CONFIG).freeze().eval()
    spec = bb.spec
    prefix = f"ntbench-{uuid.uuid4().hex[:8]}:"
    rds = redis.Redis.from_url(args.redis)
    frames = png_frames(64)
    results: list[dict] = []
    rng = random.Random(0)
    task_ids = [f"task-{i:03d}" for i in range(max(ns))]
    print(f"[bench] building {len(task_ids)} task packs and full per-task models", flush=True)
    packs = []
    for i, tid in enumerate(task_ids):
        net = randomize(TailoredNet(bb, random_plan(spec, rng), 10), seed=i, scale=0.05)
        packs.append(TaskPack.from_net(net, tid, [str(k) for k in range(10)], Preprocess(size=32)).to_bytes())
    pack_mb = float(np.mean([len(p) for p in packs])) / 2**20
    full_model = bb.to_bytes()  # each task's full model has this size; contents do not change timing
    try:
        for n in ns:
            tasks = task_ids[:n]
            store = RedisStore(args.redis, prefix=f"{prefix}n{n}:")
            store.put_backbone(bb.to_bytes())
            for tid, data in zip(tasks, packs):
                store.register(tid, data)
            for tid in tasks:
                rds.set(f"{prefix}base{n}:model:{tid}", full_model)
            systems = {
                "nettailor": ([sys.executable, "-m", "nettailor", "serve", "--host", "127.0.0.1"],
                              {"NETTAILOR_STORE": f"{args.redis}?prefix={prefix}n{n}:", "NETTAILOR_TOKEN": "bench",
                               "NETTAILOR_MAX_BATCH": str(args.max_batch),
                               "NETTAILOR_BATCH_WINDOW_MS": str(args.window_ms),
                               "NETTAILOR_MAX_QUEUE": "4096", "NETTAILOR_DEVICE": "cpu"}, "/readyz"),
                "baseline": ([sys.executable, "bench/baseline_server.py", "--redis", args.redis,
                              "--prefix", f"{prefix}base{n}:", "--m", str(args.m),
                              "--window-ms", str(args.window_ms), "--max-batch", str(args.max_batch)], {}, "/healthz"),
            }
            for system, (cmd, env, ready) in systems.items():
                if system not in args.systems.split(","):
                    continue
                port = free_port()
                proc = start([*cmd, "--port", str(port)], env)
                url = f"http://127.0.0.1:{port}"
                try:
                    wait_ready(url, ready, proc)
                    idle_rss = rss_mb(proc.pid)
                    for dist in dists:
                        for c in cs:
                            asyncio.run(closed_loop(url, tasks, dist, c, args.warmup, frames, seed=1))
                            before = httpx.get(url + "/metrics").text if system == "nettailor" else ""
                            point = asyncio.run(closed_loop(url, tasks, dist, c, args.seconds, frames, seed=2))
                            if system == "nettailor":
                                after = httpx.get(url + "/metrics").text
                                mixed = metric_sum(after, "nettailor_batch_mixed_samples_total") - metric_sum(
                                    before, "nettailor_batch_mixed_samples_total")
                                total = metric_sum(after, "nettailor_batch_samples_total") - metric_sum(
                                    before, "nettailor_batch_samples_total")
                                point["cross_task_share"] = mixed / total if total else 0.0
                            point.update(system=system, tasks=n, dist=dist, concurrency=c, rss_mb=rss_mb(proc.pid),
                                         idle_rss_mb=idle_rss)
                            results.append(point)
                            print(f"[bench] {system:9s} N={n:3d} {dist:7s} C={c:2d}: "
                                  f"{point['throughput_rps']:7.1f} req/s  p50 {point['p50_ms']:6.1f} ms  "
                                  f"p99 {point['p99_ms']:6.1f} ms  rss {point['rss_mb']:.0f} MB", flush=True)
                finally:
                    stop(proc)
    finally:
        keys = list(rds.scan_iter(match=f"{prefix}*"))
        for i in range(0, len(keys), 500):
            rds.delete(*keys[i : i + 500])

    summary = summarise(results)
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {**vars(args), "backbone": CONFIG.__dict__, "mean_pack_mb": pack_mb,
                   "full_model_mb": len(full_model) / 2**20},
        "results": results,
        "summary": summary,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    plot(results, path.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    print(f"[bench] wrote {path} and {path.with_suffix('.png')}")


def _find(results: list[dict], **kw) -> dict | None:
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def summarise(results: list[dict]) -> dict:
    s: dict = {}
    ns = sorted({r["tasks"] for r in results})
    cmax = max(r["concurrency"] for r in results)
    dist = "zipf" if any(r["dist"] == "zipf" for r in results) else results[0]["dist"]
    upper = _find(results, system="nettailor", tasks=1, dist=dist, concurrency=cmax)
    for n in ns:
        a = _find(results, system="nettailor", tasks=n, dist=dist, concurrency=cmax)
        b = _find(results, system="baseline", tasks=n, dist=dist, concurrency=cmax)
        if a and upper:
            b = b or {"throughput_rps": float("nan")}
            s[f"N={n} {dist} C={cmax}"] = {
                "nettailor_rps": a["throughput_rps"], "baseline_rps": b["throughput_rps"],
                "single_task_rps": upper["throughput_rps"],
                "vs_single_task": a["throughput_rps"] / upper["throughput_rps"],
                "vs_baseline": a["throughput_rps"] / b["throughput_rps"],
                "cross_task_share": a.get("cross_task_share"),
            }
    one = [r["rss_mb"] for r in results if r["system"] == "nettailor" and r["tasks"] == 1]
    many = [r["rss_mb"] for r in results if r["system"] == "nettailor" and r["tasks"] == max(ns)]
    if one and many:
        s["rss"] = {"nettailor_1_task_mb": max(one), f"nettailor_{max(ns)}_tasks_mb": max(many),
                    "ratio": max(many) / max(one)}
    return s


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = sorted({r["dist"] for r in results})
    fig, axes = plt.subplots(1, len(dists), figsize=(6 * len(dists), 4.2), squeeze=False)
    for ax, dist in zip(axes[0], dists):
        for system, style in (("nettailor", "-o"), ("baseline", "--s")):
            for n in sorted({r["tasks"] for r in results}):
                pts = sorted((r["concurrency"], r["throughput_rps"]) for r in results
                             if r["system"] == system and r["tasks"] == n and r["dist"] == dist)
                if pts:
                    ax.plot(*zip(*pts), style, label=f"{system} N={n}")
        ax.set_title(f"throughput, {dist} popularity")
        ax.set_xlabel("closed-loop concurrency C")
        ax.set_ylabel("requests / s")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Worker processes or replicas?  Throughput of one server process, of uvicorn's ``--workers 2``, and of
two single-process replicas, side by side on this machine, and what each shows at ``/metrics``.

Every configuration serves the same store (Redis, a unique key prefix): a ResNet-18 (3x3 stride-2 stem,
32 px) with random weights and N tasks with seeded random plans, as in ``bench/serve_bench.py``.  A
closed loop of C clients (httpx, real HTTP on 127.0.0.1) sends one PNG per request, Zipf task
popularity; for two replicas the clients alternate between them (what a load balancer does).
Configurations are measured in interleaved rounds (A B C D, A B C D, ...) so that the other load on a
shared machine hits all of them alike; the figures to read are the ratios within a round (the summary
gives their median) and the servers' CPU time per request (from /proc, all processes of a configuration),
which the machine's other load disturbs less than wall-clock throughput.

``uvicorn --workers`` is used directly (not ``nettailor serve``), so this benchmark runs whatever the
CLI offers.  After each point it reads ``/metrics`` a few times and compares the request counter with
the requests sent: with several workers each scrape sees one worker's registry.

Run:  .venv/bin/python bench/workers_bench.py        (about 4 minutes; writes bench/out/workers_bench.json)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import redis
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve_bench import CONFIG, free_port, metric_sum, png_frames, rss_mb, start, stop, wait_ready  # noqa: E402

from blockstore import Backbone, Preprocess, RedisStore, TailoredNet, TaskPack  # noqa: E402
from blockstore.testing import random_plan, randomize  # noqa: E402

# name -> (processes, uvicorn workers per process, torch threads per worker or None for torch's default)
CONFIGS: dict[str, tuple[int, int, int | None]] = {
    "1 process": (1, 1, None),
    "1 process, 1 thread": (1, 1, 1),
    "--workers 2": (1, 2, None),
    "--workers 2, 1 thread each": (1, 2, 1),
    "2 replicas, 1 thread each": (2, 1, 1),
}


async def load(urls: list[str], tasks: list[str], conc: int, seconds: float, frames: list[bytes]) -> dict:
    weights = [1.0 / (i + 1) for i in range(len(tasks))]
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    clients = [httpx.AsyncClient(base_url=u, timeout=60, limits=httpx.Limits(max_connections=conc))
               for u in urls]

    async def one(k: int) -> None:
        nonlocal errors
        r, client = random.Random(k), clients[k % len(clients)]
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            resp = await client.post(f"/v1/tasks/{r.choices(tasks, weights)[0]}/predict",
                                     content=frames[r.randrange(len(frames))], headers={"content-type": "image/png"})
            if resp.status_code == 200:
                lat.append(time.perf_counter() - t0)
            else:
                errors += 1

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one(k) for k in range(conc)))
    finally:
        for c in clients:
            await c.aclose()
    wall = time.perf_counter() - t0
    arr = np.array(lat) * 1000 if lat else np.array([float("nan")])
    return {"requests": len(lat), "errors": errors, "throughput_rps": len(lat) / wall,
            "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its children (uvicorn's workers are children of its supervisor)."""
    total = rss_mb(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += tree_rss_mb(int(child))
    return total


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += tree_cpu_s(int(child))
    return total


def scrape_counts(urls: list[str], scrapes: int) -> list[float]:
    """nettailor_requests_total as each of ``scrapes`` scrapes per URL sees it (summed over the URLs)."""
    return [sum(metric_sum(httpx.get(u + "/metrics", timeout=10).text, "nettailor_requests_total") for u in urls)
            for _ in range(scrapes)]


def run_config(name: str, store_url: str, tasks: list[str], args: argparse.Namespace, frames: list[bytes]) -> dict:
    procs_n, workers, threads = CONFIGS[name]
    env = {"NETTAILOR_STORE": store_url, "NETTAILOR_TOKEN": "bench", "NETTAILOR_DEVICE": "cpu",
           "NETTAILOR_MAX_QUEUE": "4096"}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    procs, urls = [], []
    try:
        for _ in range(procs_n):
            port = free_port()
            procs.append(start([sys.executable, "-m", "uvicorn", "--factory", "server.app:create_app",
                                "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                "--log-level", "warning"], env))
            urls.append(f"http://127.0.0.1:{port}")
        for p, u in zip(procs, urls):
            wait_ready(u, "/readyz", p, timeout=600)  # a shared machine can be very slow
        asyncio.run(load(urls, tasks, args.concurrency, args.warmup, frames))
        before = scrape_counts(urls, 1)[0]
        cpu0 = sum(tree_cpu_s(p.pid) for p in procs)
        point = asyncio.run(load(urls, tasks, args.concurrency, args.seconds, frames))
        cpu_s = sum(tree_cpu_s(p.pid) for p in procs) - cpu0
        seen = [c - before for c in scrape_counts(urls, args.scrapes)]
        point.update(config=name, processes=procs_n, workers=workers, torch_threads=threads,
                     server_cpu_ms_per_request=1000 * cpu_s / max(point["requests"], 1),
                     metrics_counted=seen, rss_mb=sum(tree_rss_mb(p.pid) for p in procs))
        return point
    finally:
        for p in procs:
            stop(p)


def summarise(results: list[dict]) -> dict:
    """Per configuration: the median over complete rounds of throughput relative to '1 process' in the
    same round, and the median server CPU per request (less sensitive to the machine's other load)."""
    out: dict = {}
    rounds = [rnd for rnd in sorted({r["round"] for r in results})
              if sum(r["round"] == rnd for r in results) == len(CONFIGS)]
    out["complete_rounds"] = len(rounds)
    for name in CONFIGS:
        ratios, cpu = [], []
        for rnd in rounds:
            base = next(r for r in results if r["round"] == rnd and r["config"] == "1 process")
            point = next(r for r in results if r["round"] == rnd and r["config"] == name)
            ratios.append(point["throughput_rps"] / base["throughput_rps"])
            cpu.append(point["server_cpu_ms_per_request"])
        out[name] = {"throughput_vs_1_process_median": round(float(np.median(ratios)), 3),
                     "per_round": [round(x, 3) for x in ratios],
                     "server_cpu_ms_per_request_median": round(float(np.median(cpu)), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL (keys get a unique prefix)")
    ap.add_argument("--tasks", type=int, default=5, help="registered tasks N (default 5)")
    ap.add_argument("--concurrency", type=int, default=16, help="closed-loop clients C (default 16)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per point (default 3)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the configurations (default 2)")
    ap.add_argument("--scrapes", type=int, default=6, help="/metrics scrapes after each point (default 6)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "workers_bench.json"), help="JSON output path")
    args = ap.parse_args()
    torch.manual_seed(0)
    bb = Backbone(CONFIG).freeze().eval()
    prefix = f"ntbench-{uuid.uuid4().hex[:8]}:"
    store = RedisStore(args.redis, prefix=prefix)
    rng = random.Random(0)
    tasks = [f"task-{i:03d}" for i in range(args.tasks)]
    frames = png_frames(64)
    results: list[dict] = []
    try:
        store.put_backbone(bb.to_bytes())
        for i, tid in enumerate(tasks):
            net = randomize(TailoredNet(bb, random_plan(bb.spec, rng), 10), seed=i, scale=0.05)
            pack = TaskPack.from_net(net, tid, [str(k) for k in range(10)], Preprocess(size=32))
            store.register(tid, pack.to_bytes())
        for rnd in range(args.rounds):
            for name in CONFIGS:
                point = run_config(name, f"{args.redis}?prefix={prefix}", tasks, args, frames)
                point.update(round=rnd, load_average_1m=os.getloadavg()[0])
                results.append(point)
                write(results, args)
                print(f"[bench] round {rnd} {name:28s} {point['throughput_rps']:7.1f} req/s"
                      f"  cpu {point['server_cpu_ms_per_request']:5.2f} ms/req  p50 {point['p50_ms']:6.1f} ms"
                      f"  p99 {point['p99_ms']:6.1f} ms  rss {point['rss_mb']:.0f} MB  sent {point['requests']}"
                      f"  /metrics counted {sorted(set(point['metrics_counted']))}", flush=True)
    finally:
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        store.close()
    print(json.dumps(write(results, args), indent=2))
    print(f"[bench] wrote {args.out}")


def write(results: list[dict], args: argparse.Namespace) -> dict:
    summary = summarise(results)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__, "note": "2 cores shared with other agents' jobs; see "
                       "load_average_1m per point"},
           "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "config": {**vars(args), "backbone": CONFIG.__dict__},
           "results": results, "summary": summary}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return summary


if __name__ == "__main__":
    main()

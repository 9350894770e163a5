"""Serving benchmark: served throughput beside the limit the same machine can compute.

Workload, in the manner of the multi-adapter serving studies (S-LoRA, Punica):
  * N registered tasks, N in {1, 20, 100, 1000};
  * request popularity Zipf (alpha = 1) or uniform over the tasks;
  * closed-loop concurrency C in {8, 32}: C clients each send a 32x32 PNG and wait for the answer;
  * real HTTP against a real ``nettailor serve`` process on 127.0.0.1 (default settings, queue 4096),
    Redis as the store, with a cheap keep-alive load generator (bench/loadgen.py).
Reported per point: requests/s, p50/p99, server CPU (cores, process and descendants), load-generator
CPU, server RSS, the share of samples batched with other tasks.
The limit, measured in the same run (before and after the served points, best of both): the
in-process executor rate for the same packs and batch cap (bench/executor_bench.py), mixed over 20
tasks and one task at a time, with torch's threads for the machine (the reference: the served
throughput is reported as a fraction of its mixed rate), again with the intra-op threads the
served executor runs with (``@server_threads``: one on two cores, the event loop needs the other),
and as two threads of one intra-op thread each running batches side by side (``@2_lanes``, as the
executor process's lanes; ``served_n20_vs_executor_mixed_best`` divides by the fastest of the three);
and, for the largest N above 20, the rate for batches drawn Zipf over all its tasks (``zipf_nN``,
N's own limit: a batch there reads the weights of many more tasks).
Optionally (``--systems nettailor,baseline``, N <= ``--baseline-max-tasks``) the per-task-model
baseline ``bench/baseline_server.py``.  Tasks: ResNet-18 (ImageNet stem, 32 px) with seeded random
plans keeping about 60% of the blocks (1.4 MB per pack).

Run:  .venv/bin/python bench/serve_bench.py            (about 8 minutes; --quick for about 3)
      .venv/bin/python bench/serve_bench.py --quick --rounds 3   (the targets' ratios as medians of three
      interleaved rounds, each round's in summary_rounds: one round's swing by 0.15 on a shared machine)
Writes bench/out/serve_bench.json (and .png).  Profile the server at one point:
      .venv/bin/python bench/serve_bench.py --quick --tasks 20 --profile
(py-spy records the server process for the measured seconds: bench/out/serve_profile.svg, and
 serve_profile.txt, the top functions by own time).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
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
sys.path.insert(0, str(ROOT / "bench"))

from executor_bench import build_packs, executor_rates, make_backbone  # noqa: E402
from loadgen import (  # noqa: E402
    Conn,
    closed_loop,
    free_port,
    new_loop,
    proc_stats,
    start_server,
    stop_server,
    summarise_latencies,
    wait_ready,
)

from blockstore import RedisStore  # noqa: E402
from server.executor import executor_parallelism  # noqa: E402


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


async def _point(port: int, tasks: list[str], dist: str, conc: int, seconds: float, frames: list[bytes],
                 seed: int, pid: int) -> dict:
    cum = np.cumsum([1.0 / (i + 1) if dist == "zipf" else 1.0 for i in range(len(tasks))]).tolist()
    conns = [Conn("127.0.0.1", port) for _ in range(conc)]
    paths = [f"/v1/tasks/{t}/predict" for t in tasks]

    phases: dict[str, float] = {}
    answered = 0

    async def one(k: int, rng: random.Random) -> bool:
        nonlocal answered
        path = rng.choices(paths, cum_weights=cum)[0]
        status, body = await conns[k].post(path, frames[rng.randrange(len(frames))])
        if status == 200:
            answered += 1
            for name, ms in json.loads(body)["timings_ms"].items():
                phases[name] = phases.get(name, 0.0) + ms
        return status == 200

    s0, c0, t0 = proc_stats(pid), time.process_time(), _thread_cpu(pid)
    load = await closed_loop(conc, seconds, one, seed)
    s1, c1, t1 = proc_stats(pid), time.process_time(), _thread_cpu(pid)
    busiest = sorted(((t1[k] - t0.get(k, 0.0)) / load.wall_s for k in t1), reverse=True)[:4]
    for c in conns:
        await c.close()
    # Where a request's time goes, from the server's own timings: decode (and preprocessing), waiting
    # for the executor, the executor call; "outside" is the client's latency less the server's total
    # (HTTP parsing, the event loop's queue, the response), the mean over all answered requests.
    mean = {f"{name}_ms": v / max(1, answered) for name, v in phases.items()}
    lat = summarise_latencies(load.latencies)
    if "total_ms" in mean and load.latencies:
        mean["outside_ms"] = 1000.0 * sum(load.latencies) / len(load.latencies) - mean["total_ms"]
    return {"requests": load.requests, "errors": load.errors, "throughput_rps": load.requests / load.wall_s,
            **lat, "server_cores": (s1.cpu_s - s0.cpu_s) / load.wall_s,
            "loadgen_cores": (c1 - c0) / load.wall_s, "rss_mb": s1.rss_mb, "rss_file_mb": s1.rss_file_mb,
            "server_phases_ms": mean,
            "server_thread_cores": busiest}


async def _prime(port: int, tasks: list[str], frame: bytes, conc: int = 8) -> float:
    """Ask for every task once, ``conc`` at a time, in a shuffled order: the server then stands as after
    a while in service, every task loaded once (and, with the spill tier, kept on local disk).  Seconds."""
    order = random.Random(3).sample(tasks, len(tasks))
    conns = [Conn("127.0.0.1", port) for _ in range(conc)]
    t0 = time.perf_counter()

    async def worker(k: int) -> None:
        for tid in order[k::conc]:
            status, body = await conns[k].post(f"/v1/tasks/{tid}/predict", frame)
            if status != 200:
                raise RuntimeError(f"priming {tid}: HTTP {status}: {body[:200]!r}")

    try:
        await asyncio.gather(*(worker(k) for k in range(conc)))
    finally:
        for c in conns:
            await c.close()
    return time.perf_counter() - t0


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each of the server's threads (/proc), to tell the event loop from the executor."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _measure(port: int, pid: int, args: argparse.Namespace, tasks: list[str], dist: str, c: int,
             frames: list[bytes], metrics_url: str | None) -> dict:
    loop = new_loop()
    primed = None
    try:
        if args.prime:
            primed = loop.run_until_complete(_prime(port, tasks, frames[0]))
        loop.run_until_complete(_point(port, tasks, dist, c, args.warmup, frames, 1, pid))
        before = httpx.get(metrics_url).text if metrics_url else ""
        profiler = _profile(pid, args) if args.profile else None
        point = loop.run_until_complete(_point(port, tasks, dist, c, args.seconds, frames, 2, pid))
        if profiler is not None:
            profiler.wait()
            raw = Path(args.out).with_name("serve_profile.txt")
            if raw.is_file():
                point["profile"] = summarise_profile(raw)
                print(json.dumps(point["profile"]["phase_share"], indent=1), flush=True)
    finally:
        loop.close()
    point["prime_s"] = primed
    if metrics_url:
        after = httpx.get(metrics_url).text
        tot = metric_sum(after, "nettailor_batch_samples_total") - metric_sum(before, "nettailor_batch_samples_total")
        mixed = metric_sum(after, "nettailor_batch_mixed_samples_total") - metric_sum(
            before, "nettailor_batch_mixed_samples_total")
        point["cross_task_share"] = mixed / tot if tot else 0.0
        point["mean_batch"] = tot / max(1.0, metric_sum(after, "nettailor_batch_size_count")
                                         - metric_sum(before, "nettailor_batch_size_count"))
        def delta(name: str) -> float:
            return metric_sum(after, name) - metric_sum(before, name)

        # Cold loads: how often a request missed the pack cache, and what one load cost.
        hits, misses, loads = (delta("nettailor_cache_hits_total"), delta("nettailor_cache_misses_total"),
                               delta("nettailor_pack_load_seconds_count"))
        point["cache_miss_share"] = misses / max(1.0, hits + misses)
        point["pack_loads_per_s"] = loads / args.seconds
        point["pack_load_mean_ms"] = 1000.0 * delta("nettailor_pack_load_seconds_sum") / max(1.0, loads)
        point["spill_load_share"] = delta('nettailor_pack_load_seconds_count{source="spill"}') / max(1.0, loads)
    return point


def _profile(pid: int, args: argparse.Namespace) -> subprocess.Popen:
    """py-spy over the server for the measured seconds (all threads, native frames off)."""
    out = Path(args.out).with_name("serve_profile")
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy") or "py-spy"
    # --nonblocking: py-spy reads the stacks without pausing the server (a blocking 200 Hz record
    # cut the served rate to a fifth); its own messages go to serve_profile.log.
    with open(out.with_suffix(".log"), "wb") as log:
        return subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
                                 "--rate", "100", "--nonblocking", "--subprocesses",  # the executor process too
                                 *(["--gil"] if args.profile_gil else []),
                                 "--format", "raw", "--output",
                                 str(out.with_suffix(".txt"))], stdout=log, stderr=subprocess.STDOUT)


_PHASES = (  # first match wins, checked from the innermost frame outwards
    ("executor", ("server/executor.py", "server/kernels.py")),
    ("decode", ("server/images.py",)),
    ("preprocess", ("_preprocess", "blockstore/preprocess.py")),
    ("response", ("_top_k", "serialize_response", "jsonable_encoder", "pydantic", "_json_response")),
    ("batcher hand-off", ("server/batching.py",)),
    ("metrics", ("prometheus_client", "server/metrics.py")),
    ("pack cache", ("server/cache.py", "server/loading.py", "server/admission.py")),
)


_IDLE = ("Condition.wait", "Event.wait", "Runner.run (asyncio/runners.py", "select (selectors.py",
         "_worker (concurrent/futures/thread.py")  # leaf frames of a thread that waits


def summarise_profile(raw: Path) -> dict:
    """py-spy's collapsed stacks -> share of busy samples per phase, and the top functions by own time.

    Samples whose innermost frame is a wait (a condition, the event loop's poll) are idle, not busy."""
    phases: dict[str, int] = {}
    own: dict[str, int] = {}
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        if any(k in frames[-1] for k in _IDLE):
            idle += n
            continue
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        phase = next((name for f in reversed(frames) for name, keys in _PHASES if any(k in f for k in keys)),
                     "http + event loop")
        phases[phase] = phases.get(phase, 0) + n
    top = sorted(own.items(), key=lambda kv: -kv[1])[:25]
    total = max(total, 1)
    return {"busy_samples": total, "idle_samples": idle,
            "phase_share": {k: v / total for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
            "top_own": [(f, c / total) for f, c in top]}


def _server_env(args: argparse.Namespace) -> dict[str, str]:
    """The ``--server-env KEY=VALUE`` settings."""
    return dict(kv.split("=", 1) for kv in args.server_env)


def _systems(args: argparse.Namespace, n: int, prefix: str) -> dict:
    env = {"NETTAILOR_STORE": f"{args.redis}?prefix={prefix}n{n}:", "NETTAILOR_TOKEN": "bench",
           "NETTAILOR_MAX_BATCH": str(args.max_batch), "NETTAILOR_BATCH_WINDOW_MS": str(args.window_ms),
           "NETTAILOR_MAX_QUEUE": "4096", "NETTAILOR_DEVICE": args.device, "NETTAILOR_SPILL_DIR": str(args.spill_dir)}
    env.update(_server_env(args))
    out = {"nettailor": ([sys.executable, "-m", "nettailor", "serve", "--host", "127.0.0.1"], env, "/readyz")}
    if "baseline" in args.systems.split(",") and n <= args.baseline_max_tasks:
        out["baseline"] = ([sys.executable, "bench/baseline_server.py", "--redis", args.redis, "--prefix",
                            f"{prefix}base{n}:", "--m", str(args.m), "--window-ms", str(args.window_ms),
                            "--max-batch", str(args.max_batch)], {}, "/healthz")
    return out


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL (keys get a unique prefix)")
    ap.add_argument("--stem", default="imagenet", help="backbone stem (default imagenet, as in issue 11)")
    ap.add_argument("--tasks", default="1,20,100,1000", help="comma-separated task counts N")
    ap.add_argument("--concurrency", default="8,32", help="comma-separated closed-loop concurrency C")
    ap.add_argument("--dists", default="zipf", help="request popularity: zipf and/or uniform")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per point")
    ap.add_argument("--executor-seconds", type=float, default=2.0, help="seconds per executor workload and round")
    ap.add_argument("--m", type=int, default=4, help="baseline: full models kept in memory")
    ap.add_argument("--window-ms", type=float, default=2.0, help="batch collection window (both systems)")
    ap.add_argument("--max-batch", type=int, default=32, help="largest batch (both systems, and the executor rate)")
    ap.add_argument("--systems", default="nettailor", help="nettailor and/or baseline")
    ap.add_argument("--baseline-max-tasks", type=int, default=100, help="largest N the baseline runs at (each "
                    "task stores a 43 MB model in Redis)")
    ap.add_argument("--device", default="cpu", help="NETTAILOR_DEVICE for the server and the executor rate")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the server (repeatable), e.g. NETTAILOR_TORCH_THREADS=1")
    ap.add_argument("--profile", action="store_true", help="record the server with py-spy at every point")
    ap.add_argument("--profile-gil", action="store_true", help="with --profile: only samples of the thread "
                    "holding the GIL (their count against rate x seconds is the GIL's busy share)")
    ap.add_argument("--prime", action=argparse.BooleanOptionalAction, default=True,
                    help="before each point's warm-up, ask for every task once, as a server in service has "
                         "(--no-prime: a freshly started server, whose first loads of each task fall in the "
                         "measured seconds at N = 1,000)")
    ap.add_argument("--rounds", type=int, default=1, help="serve every point this many times, interleaved "
                    "(N = 1, 20, 1000, then again); the summary is each target ratio's median over the rounds, "
                    "each round's own in summary_rounds (one round's ratios swung by 0.15 on the shared machine)")
    ap.add_argument("--quick", action="store_true", help="N in {1,20,1000}, C=32, zipf, 4 s per point")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "serve_bench.json"), help="JSON output path")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.quick:
        args.tasks = "1,20,1000" if args.tasks == ap.get_default("tasks") else args.tasks
        args.concurrency, args.seconds, args.warmup, args.executor_seconds = "32", 4.0, 2.0, 1.0
    return args


def main() -> None:
    args = _args()
    ns = [int(x) for x in args.tasks.split(",")]
    cs = [int(x) for x in args.concurrency.split(",")]
    bb = make_backbone(args.stem)
    task_ids = [f"task-{i:04d}" for i in range(max(ns))]
    print(f"[bench] building {len(task_ids)} task packs", flush=True)
    packs = build_packs(bb, task_ids)
    pack_mb = float(np.mean([len(p) for p in packs])) / 2**20
    limit_packs = packs[:20]

    machine_threads = torch.get_num_threads()
    # the intra-op threads the served executor runs with: `nettailor serve`'s default, or as --server-env sets it
    server_threads = executor_parallelism(0, int(_server_env(args).get("NETTAILOR_TORCH_THREADS", 0)))[1]

    def limit() -> dict:
        """The executor's rates at the machine's thread count (the reference), at the server's own, and
        as two lanes of one thread each."""
        r = _rates(bb, limit_packs, args, machine_threads, machine_threads)
        own = _rates(bb, limit_packs, args, server_threads, machine_threads)
        r.update({f"{k}@server_threads": v for k, v in own.items() if k in ("mixed", "one", "zipf")})
        lanes = _rates(bb, limit_packs, args, 1, machine_threads, lanes=2)  # two batches side by side
        r.update({f"{k}@2_lanes": v for k, v in lanes.items() if k in ("mixed", "one")})
        print(f"[bench] executor: {json.dumps({k: round(v) for k, v in r.items()})}", flush=True)
        return r

    args.spill_dir = Path(tempfile.mkdtemp(prefix="ntbench-spill-"))  # the server's spill tier, measured per point
    rates = [limit()]
    prefix = f"ntbench-{uuid.uuid4().hex[:8]}:"
    rds = redis.Redis.from_url(args.redis)
    frames = png_frames(64)
    results: list[dict] = []
    try:
        for rnd, n in ((rnd, n) for rnd in range(args.rounds) for n in ns):
            systems = _systems(args, n, prefix)
            if rnd == 0:  # the tasks stay registered for the later rounds; each server starts afresh
                store = RedisStore(args.redis, prefix=f"{prefix}n{n}:")
                store.put_backbone(bb.to_bytes())
                for tid, data in zip(task_ids[:n], packs):
                    store.register(tid, data)
                store.close()
            if "baseline" in systems and rnd == 0:
                full = bb.to_bytes()
                for tid in task_ids[:n]:
                    rds.set(f"{prefix}base{n}:model:{tid}", full)
            for system, (cmd, env, ready) in systems.items():
                port = free_port()
                proc = start_server([*cmd, "--port", str(port)], env)
                url = f"http://127.0.0.1:{port}"
                try:
                    wait_ready(url + ready, proc)
                    idle = proc_stats(proc.pid).rss_mb
                    for dist in args.dists.split(","):
                        for c in cs:
                            point = _measure(port, proc.pid, args, task_ids[:n], dist, c, frames,
                                             url + "/metrics" if system == "nettailor" else None)
                            point.update(system=system, tasks=n, dist=dist, concurrency=c, idle_rss_mb=idle,
                                         spill_mb=_dir_mb(args.spill_dir), round=rnd)
                            results.append(point)
                            print(f"[bench] round {rnd + 1}/{args.rounds} {system:9s} N={n:4d} {dist:7s} C={c:2d}: "
                                  f"{point['throughput_rps']:7.1f} "
                                  f"req/s  p50 {point['p50_ms']:6.1f}  p99 {point['p99_ms']:6.1f} ms  server "
                                  f"{point['server_cores']:.2f} cores  loadgen {point['loadgen_cores']:.2f}  rss "
                                  f"{point['rss_mb']:.0f} MB  spill {point['spill_mb']:.0f} MB  "
                                  f"errors {point['errors']}", flush=True)
                finally:
                    stop_server(proc)
    finally:
        shutil.rmtree(args.spill_dir, ignore_errors=True)
        keys = list(rds.scan_iter(match=f"{prefix}*"))
        for i in range(0, len(keys), 500):
            rds.delete(*keys[i : i + 500])
    rates.append(limit())
    executor = {k: max(r[k] for r in rates) for k in rates[0]}
    big = max(ns)
    if big > 20:  # the limit beside N = big's result: batches drawn Zipf over all its tasks
        executor.update(_zipf_limit(bb, packs[:big], args, machine_threads, server_threads))
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "loadavg_at_end": os.getloadavg(),
                    "note": "shared with other agents: compare ratios from one run, not absolute figures"},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {**vars(args), "spill_dir": str(args.spill_dir), "mean_pack_mb": pack_mb,
                   "executor_threads": machine_threads, "server_executor_threads": server_threads},
        "executor_img_per_s": executor, "executor_runs": rates,
        "results": results,
        **summarise_rounds(results, executor, args.rounds),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    plot(results, path.with_suffix(".png"))
    print(json.dumps(out["summary"], indent=2))
    print(f"[bench] wrote {path}")


def _rates(bb, packs: list[bytes], args: argparse.Namespace, threads: int,  # type: ignore[no-untyped-def]
           machine_threads: int, lanes: int = 1) -> dict[str, float]:
    """bench/executor_bench.py's images per second for ``packs`` (one round, the server's batch cap) with
    ``threads`` intra-op threads (and ``lanes`` threads running batches side by side), then torch back
    at the machine's."""
    torch.set_num_threads(threads)
    try:
        return executor_rates(bb, packs, batch=args.max_batch, seconds=args.executor_seconds, rounds=1,
                              device=args.device, lanes=lanes)["img_per_s"]
    finally:
        torch.set_num_threads(machine_threads)


def _zipf_limit(bb, packs: list[bytes], args: argparse.Namespace, machine_threads: int,  # type: ignore[no-untyped-def]
                server_threads: int) -> dict[str, float]:
    """The in-process executor's rate for batches drawn Zipf over all ``packs`` (as N = len(packs)
    serves them), at the machine's threads and at the server's."""
    n, out = len(packs), {}
    for threads, suffix in ((machine_threads, ""), (server_threads, "@server_threads")):
        out[f"zipf_n{n}{suffix}"] = _rates(bb, packs, args, threads, machine_threads)["zipf"]
    print(f"[bench] executor, Zipf over {n} tasks: {json.dumps({k: round(v) for k, v in out.items()})}", flush=True)
    return out


def _find(results: list[dict], **kw) -> dict | None:
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def summarise(results: list[dict], executor: dict) -> dict:
    """The issue's target ratios, each from this run."""
    nt = [r for r in results if r["system"] == "nettailor"]
    for r in nt:
        r["vs_executor_mixed"] = r["throughput_rps"] / executor["mixed"]
    s: dict = {"executor_mixed_vs_one": executor["mixed"] / executor["one"],
               "executor_mixed_vs_one_task0": executor["mixed"] / executor["one-task0"],
               "server_cores_max": max((r["server_cores"] for r in nt), default=float("nan"))}
    cmax = max((r["concurrency"] for r in nt), default=0)
    ns = sorted({r["tasks"] for r in nt})
    dist = "zipf" if any(r["dist"] == "zipf" for r in nt) else (nt[0]["dist"] if nt else "zipf")
    at = {n: _find(nt, tasks=n, dist=dist, concurrency=cmax) for n in ns}
    if at.get(20):
        s["served_n20_vs_executor_mixed"] = at[20]["throughput_rps"] / executor["mixed"]
        if "mixed@server_threads" in executor:  # the same, against the executor as the server runs it
            s["served_n20_vs_executor_mixed_at_server_threads"] = (at[20]["throughput_rps"]
                                                                   / executor["mixed@server_threads"])
        best = max(v for k, v in executor.items() if k.split("@")[0] == "mixed")
        s["executor_mixed_best"] = best  # the fastest way this run found to compute mixed batches
        s["served_n20_vs_executor_mixed_best"] = at[20]["throughput_rps"] / best
        if at.get(1):
            s["n20_vs_n1"] = at[20]["throughput_rps"] / at[1]["throughput_rps"]
        big = max(ns)
        if big > 20 and at.get(big):
            s[f"n{big}_vs_n20"] = {k: at[big][k] / at[20][k] for k in ("throughput_rps", "p99_ms", "rss_mb")}
    big = max(ns, default=0)
    if at.get(big) and f"zipf_n{big}" in executor:  # N = big against its own limit
        s[f"served_n{big}_vs_executor_zipf_n{big}"] = at[big]["throughput_rps"] / executor[f"zipf_n{big}"]
        s[f"served_n{big}_vs_executor_zipf_n{big}_at_server_threads"] = (
            at[big]["throughput_rps"] / executor[f"zipf_n{big}@server_threads"])
        if "zipf@server_threads" in executor:  # the executor's own N = big over N = 20: what bounds n{big}_vs_n20
            s[f"executor_zipf_n{big}_vs_n20_at_server_threads"] = (executor[f"zipf_n{big}@server_threads"]
                                                                   / executor["zipf@server_threads"])
    for n in ns:
        b = _find(results, system="baseline", tasks=n, dist=dist, concurrency=cmax)
        if b and at.get(n):
            s[f"n{n}_vs_baseline"] = at[n]["throughput_rps"] / b["throughput_rps"]
    return s


def summarise_rounds(results: list[dict], executor: dict, rounds: int) -> dict:
    """``summary``: :func:`summarise` of the one round, or each ratio's median over the rounds (the
    executor's limit is the best of its runs, as with one round); ``summary_rounds``: each round's."""
    each = [summarise([r for r in results if r.get("round", 0) == k], executor) for k in range(rounds)]
    if rounds == 1:
        return {"summary": each[0]}
    return {"summary": _median(each), "summary_rounds": each}


def _median(dicts: list[dict]) -> dict:
    """Key by key, the median of the numbers (nested dicts likewise); a key missing from a round is left out."""
    out: dict = {}
    for k in dicts[0]:
        vals = [d[k] for d in dicts if k in d]
        if len(vals) < len(dicts):
            continue
        out[k] = _median(vals) if isinstance(vals[0], dict) else float(np.median(vals))
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = sorted({r["dist"] for r in results})
    fig, axes = plt.subplots(1, len(dists), figsize=(6 * len(dists), 4.2), squeeze=False)
    for ax, dist in zip(axes[0], dists):
        for system, style in (("nettailor", "-o"), ("baseline", "--s")):
            for n in sorted({r["tasks"] for r in results}):
                pts = sorted((r["concurrency"], r["throughput_rps"]) for r in results  # the first round
                             if r["system"] == system and r["tasks"] == n and r["dist"] == dist
                             and r.get("round", 0) == 0)
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

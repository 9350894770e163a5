"""In-process executor rate: the limit the server's throughput is measured against.

The same packs and batch cap as ``bench/serve_bench.py`` (ResNet-18, 32 px, seeded random plans
keeping about 60% of the blocks), run through :class:`server.executor.Executor` in a loop, with no
HTTP.  Workloads, interleaved round by round so that load from other processes hits them alike:

* ``mixed``      - every batch holds rows of 20 tasks (rows cycle over the tasks);
* ``zipf``       - every batch draws its rows' tasks from Zipf(1) over the 20 tasks;
* ``one``        - every batch holds one task, cycling over the same 20 tasks batch by batch (the
                   same plans as ``mixed``: the ratio mixed / one is the cost of mixing alone);
* ``one-task0``  - every batch holds task 0 only (the issue's "one task");
* ``full``       - the plain torchvision network with the same stem, for scale.

Each workload reports the best of ``--rounds`` rounds of ``--seconds`` (the machine is shared: the
best round is the least disturbed one).  ``--kernels looped,grouped`` compares the two cross-task
kernels (server/kernels.py) side by side.

Run:  .venv/bin/python bench/executor_bench.py [--quick] [--device cuda] [--kernels looped,grouped]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockstore import Backbone, BackboneConfig, Preprocess, TailoredNet, TaskPack  # noqa: E402
from blockstore.testing import random_plan, randomize  # noqa: E402
from server.executor import Executor, PreparedTask  # noqa: E402

__all__ = ["build_packs", "executor_rates", "make_backbone", "write_result"]

WORKLOADS = ("mixed", "zipf", "one", "one-task0", "full")


def make_backbone(stem: str, arch: str = "resnet18") -> Backbone:
    torch.manual_seed(0)
    return Backbone(BackboneConfig(arch=arch, stem=stem, input_size=32, num_classes=10)).freeze().eval()


def build_packs(bb: Backbone, task_ids: list[str]) -> list[bytes]:
    """Pack bytes per task id, each with its own seeded random plan and tensors (no two tasks share
    content, as no two real tasks would)."""
    rng = random.Random(0)
    out = []
    for i, tid in enumerate(task_ids):
        net = randomize(TailoredNet(bb, random_plan(bb.spec, rng, bottleneck=bb.bottleneck), 10), seed=i, scale=0.05)
        out.append(TaskPack.from_net(net, tid, [str(k) for k in range(10)], Preprocess(size=32)).to_bytes())
    return out


def write_result(out_path: str | Path, body: dict, **machine: object) -> dict:
    """Write a bench result as JSON: the machine (platform, cores, Python, torch, load, and ``machine``'s
    extra fields), the command line, then ``body``; the written dict."""
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__, "loadavg": os.getloadavg(), **machine},
           "command": " ".join([Path(sys.executable).name, *sys.argv]), **body}
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return out


def _rows(workload: str, batch: int, ntasks: int, k: int, rng: random.Random) -> list[int]:
    if workload == "mixed":
        return [(k * batch + i) % ntasks for i in range(batch)]
    if workload == "zipf":
        return rng.choices(range(ntasks), [1.0 / (i + 1) for i in range(ntasks)], k=batch)
    if workload == "one":
        return [k % ntasks] * batch
    return [0] * batch


def executor_rates(bb: Backbone, packs: list[bytes], *, batch: int = 32, seconds: float = 2.0, rounds: int = 3,
                   kernels: tuple[str | None, ...] = (None,), device: str = "cpu",
                   dense: tuple[bool, ...] = (True,), lanes: int = 1) -> dict:
    """Images per second per workload (and kernel, and dense-convolution setting), best of ``rounds``;
    the workloads and variants interleave.  ``lanes``: threads each running batches, side by side (as
    the executor process's lanes, server.engine)."""
    dev = torch.device(device)
    bb = bb.to(dev)
    tasks = [PreparedTask.from_pack(TaskPack.from_bytes(p), bb, version=1) for p in packs]
    xs = torch.randn(batch, 3, 32, 32)
    executors = {}
    for k in kernels:
        for d in dense:
            ex = Executor(bb, kernel=k, dense_convs=d)
            executors[(k or ex.kernel) + ("" if d else "+conv")] = ex
    rng = random.Random(1)
    best: dict[str, float] = {}
    xd = xs.to(dev).contiguous(memory_format=torch.channels_last)  # the full net's input, as the executor runs it

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def measure(name: str, step) -> None:  # type: ignore[no-untyped-def]
        step(0)
        sync()
        done = [0] * lanes
        t0 = time.perf_counter()

        def loop(j: int) -> None:
            k = 1 + j
            while time.perf_counter() - t0 < seconds:
                step(k)
                done[j], k = done[j] + batch, k + lanes

        threads = [threading.Thread(target=loop, args=(j,)) for j in range(1, lanes)]
        for t in threads:
            t.start()
        loop(0)
        for t in threads:
            t.join()
        sync()
        best[name] = max(best.get(name, 0.0), sum(done) / (time.perf_counter() - t0))

    for _ in range(rounds):
        for variant, ex in executors.items():
            for w in WORKLOADS[:-1]:
                name = w if len(executors) == 1 else f"{w}/{variant}"
                measure(name, lambda k, w=w, ex=ex: ex.run([(tasks[j], xs[i]) for i, j in
                                                              enumerate(_rows(w, batch, len(tasks), k, rng))]))
        with torch.inference_mode():
            measure("full", lambda k: bb.net(xd))
    return {"img_per_s": best, "batch": batch, "tasks": len(tasks), "kernels": list(executors),
            "device": str(dev), "torch_threads": torch.get_num_threads(), "lanes": lanes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stem", default="imagenet", help="backbone stem (default imagenet, as in the issue)")
    ap.add_argument("--arch", default="resnet18", help="backbone architecture (default resnet18)")
    ap.add_argument("--tasks", type=int, default=20, help="tasks mixed in a batch (default 20)")
    ap.add_argument("--batch", type=int, default=32, help="rows per executor call (the server's batch cap)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per workload and round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; each workload reports its best round")
    ap.add_argument("--kernels", default="", help="comma-separated cross-task kernels to compare "
                    "(looped, grouped); default the device's own")
    ap.add_argument("--dense", default="on", help="on, off or on,off: frozen convolutions on tiny maps as matrix "
                    "products (server/denseconv.py), or as convolutions ('+conv' in the names)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--lanes", type=int, default=1, help="threads running batches side by side (default 1)")
    ap.add_argument("--quick", action="store_true", help="one round of 1 s per workload")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "executor_bench.json"), help="JSON output path")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    bb = make_backbone(args.stem, args.arch)
    packs = build_packs(bb, [f"task-{i:03d}" for i in range(args.tasks)])
    kernels = tuple(args.kernels.split(",")) if args.kernels else (None,)
    dense = tuple(d == "on" for d in args.dense.split(","))
    res = executor_rates(bb, packs, batch=args.batch, seconds=args.seconds, rounds=args.rounds,
                         kernels=kernels, device=args.device, dense=dense, lanes=args.lanes)
    r = res["img_per_s"]
    for k in res["kernels"]:
        sfx = "" if len(res["kernels"]) == 1 else f"/{k}"
        res[f"ratios{sfx}"] = {"mixed_vs_one": r[f"mixed{sfx}"] / r[f"one{sfx}"],
                               "mixed_vs_one_task0": r[f"mixed{sfx}"] / r[f"one-task0{sfx}"],
                               "zipf_vs_one": r[f"zipf{sfx}"] / r[f"one{sfx}"]}
    out = write_result(args.out, {"config": vars(args), **res},
                       device=torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu")
    print(json.dumps({k: v for k, v in out.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()

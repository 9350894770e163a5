"""The pack cache's hit rate under Zipf popularity, without serving: the real :class:`server.cache.PackCache`
(its LRU order, admission and eviction) driven by a request trace, so that a change to the policy is
compared on the same trace, exactly, instead of through the served benchmark's noise.

* N tasks whose sizes are the bytes of bench/serve_bench.py's packs (ResNet-18, ImageNet stem, seeded
  random plans: 0.2-2.8 MB, 1.4 MB on average; a folded task is within 2% of its pack), each in a
  random popularity rank;
* a trace of every task once (as serve_bench's priming), then ``--requests`` drawn Zipf(``--alpha``);
* a load is a task's description with its size (no tensors, no store: the records come from a table,
  since the policy is what is measured), and the hit rate is counted after the priming, per span
  of the trace (a served run of 30 s is about 7,000 requests at N = 1,000); ``--shift``: halfway,
  the ranks go to other tasks, as when a fleet's robots change missions;
* ``--sample``: the eviction's sample (:class:`server.admission.Policy`), repeatable; 1 is LRU with
  admission by popularity per byte.

Beside them, the best a static cache of that budget can do: the most popular tasks per byte.

Run:  .venv/bin/python bench/cache_policy_sim.py            (about a minute; writes bench/out/cache_policy_sim.json)
"""

from __future__ import annotations

import argparse
import bisect
import json
import platform
import random
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from executor_bench import build_packs, make_backbone  # noqa: E402

from blockstore import Preprocess, TailoredNet, TaskPack  # noqa: E402
from blockstore.testing import random_plan, randomize  # noqa: E402
from server.admission import Policy  # noqa: E402
from server.cache import PackCache  # noqa: E402
from server.metrics import Metrics  # noqa: E402
from server.prepared import PreparedTask, new_uid  # noqa: E402


class _Record:
    def __init__(self, task_id: str) -> None:
        self.version, self.sha256 = 1, f"{task_id:0>64}"[-64:]


class _Records:
    """Only what PackCache reads from a store on a miss: the task's current version and digest, and
    the digests marked corrupt (none)."""

    def get_record(self, task_id: str) -> _Record:
        return _Record(task_id)

    def corrupt_digests(self) -> dict[str, str]:
        return {}


def _template() -> PreparedTask:
    """One real task's description (a tiny backbone), copied for every task with its own size."""
    bb = make_backbone("3x3s2", arch="resnet18")
    net = randomize(TailoredNet(bb, random_plan(bb.spec, random.Random(0)), 3), 0)
    pack = TaskPack.from_net(net, "template", ["a", "b", "c"], Preprocess(size=32))
    return PreparedTask.from_pack(pack, bb, version=1).description()


def simulate(sizes: list[int], ranks: list[int], args: argparse.Namespace, sample: int,
             template: PreparedTask) -> dict:

    def prepare(task_id: str, version: int, sha256: str, trusted: bool) -> PreparedTask:
        return replace(template, task_id=task_id, nbytes=sizes[int(task_id)], uid=new_uid())

    cache = PackCache(_Records(), None, args.capacity_mb * 2**20, Metrics(), prepare=prepare,  # type: ignore[arg-type]
                      policy=Policy(sample))
    weights = [1 / (k + 1) ** args.alpha for k in range(len(sizes))]
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    rng = random.Random(args.seed + 1)
    shifted = ranks[:]
    random.Random(args.seed + 2).shuffle(shifted)
    def draw(i: int) -> str:
        order = shifted if args.shift and i >= args.requests // 2 else ranks
        return str(order[bisect.bisect_left(cum, rng.random() * total)])

    trace = [str(t) for t in range(len(sizes))] + [draw(i) for i in range(args.requests)]
    hits, last, out = 0, 0, {}
    marks = sorted({int(m) for m in args.marks.split(",") if 0 < int(m) < args.requests} | {args.requests})
    for i, tid in enumerate(trace):
        before = cache.loads
        cache.lease(tid).release()
        if i >= len(sizes):
            n = i - len(sizes) + 1
            hits += cache.loads == before
            if n in marks:
                out[f"{last}-{n}"] = hits / (n - last)
                hits, last = 0, n
    cache.close()
    return {"sample": sample, "hit_rate": out, "entries": len(cache.cached_tasks())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--capacity-mb", type=int, default=256, help="the cache's budget (the server's default)")
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--marks", default="1500,3000,7000,15000,22500",
                    help="report the hit rate of each span of requests between these marks")
    ap.add_argument("--shift", action="store_true", help="halfway, the popularity ranks move to other tasks "
                    "(does the cache adapt, or keep what was popular?)")
    ap.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent")
    ap.add_argument("--sample", type=int, action="append", help="eviction sample(s); default 1 and the server's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "cache_policy_sim.json"))
    args = ap.parse_args()
    samples = args.sample or sorted({1, Policy().sample})
    print(f"[sim] sizing {args.tasks} packs as bench/serve_bench.py builds them", flush=True)
    packs = build_packs(make_backbone("imagenet"), [f"task-{i:04d}" for i in range(args.tasks)])
    sizes = [len(p) for p in packs]
    ranks = list(range(args.tasks))
    random.Random(args.seed).shuffle(ranks)  # popularity rank k -> task ranks[k], whatever its size
    popularity = {t: 1 / (k + 1) ** args.alpha for k, t in enumerate(ranks)}
    budget, used, ideal = args.capacity_mb * 2**20, 0, 0.0
    for t in sorted(range(args.tasks), key=lambda t: -popularity[t] / sizes[t]):
        if used + sizes[t] <= budget:
            used += sizes[t]
            ideal += popularity[t]
    runs, template = [], _template()
    for sample in samples:
        r = simulate(sizes, ranks, args, sample, template)
        rates = json.dumps({k: round(v, 4) for k, v in r["hit_rate"].items()})
        print(f"[sim] sample {sample:3d}: hit rate per span of requests {rates}, {r['entries']} tasks held", flush=True)
        runs.append(r)
    out = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "config": vars(args),
           "mean_pack_mb": sum(sizes) / len(sizes) / 2**20, "static_best_hit_rate": ideal / sum(popularity.values()),
           "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"[sim] the best static cache of {args.capacity_mb} MiB: hit rate {out['static_best_hit_rate']:.4f}")
    print(f"[sim] wrote {args.out}")


if __name__ == "__main__":
    main()

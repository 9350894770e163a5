"""Two forms of a dense convolution's product on the CPU, timed side by side: ``x @ M`` and ``(M^T x^T)^T``.

server.denseconv runs a frozen convolution on a tiny map as one matrix product.  Which form is
faster depends on the matrix's size (MKL streams a large ``M`` that is not in the cache at half
speed in ``x @ M`` with few rows), and this script measures it: for each shape, ``--mats`` matrices
are used in turn (as a batch's many frozen layers are, so that a large one is not in the cache),
the two forms interleave, and each reports its median over ``--reps`` calls, transposition copies
included.  ``--hot`` uses one matrix again and again instead.

Run:  .venv/bin/python bench/dense_forms.py [--threads 1] [--rows 16] [--out bench/out/dense_forms.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from executor_bench import write_result  # noqa: E402

from server.denseconv import TRANSPOSED_BYTES, TRANSPOSED_MIN_WIDTH, product, transposed_on_cpu  # noqa: E402

SHAPES = ((512, 512), (256, 512), (1024, 512), (512, 1024), (2304, 256), (1024, 768), (768, 1024),
          (1024, 1024), (2048, 512), (512, 2048), (4096, 256), (1536, 1024), (2048, 1024), (2048, 2048))


def _median_us(f, reps: int) -> float:  # type: ignore[no-untyped-def]
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


def measure(k: int, n: int, rows: int, mats: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(k, n, generator=g) for _ in range(mats)]
    wts = [w.t().contiguous() for w in ws]
    x = torch.randn(rows, k, generator=g)
    i = [0]

    def plain() -> torch.Tensor:  # both forms as server.denseconv runs them
        i[0] = (i[0] + 1) % mats
        return product(x, ws[i[0]], False)

    def transposed() -> torch.Tensor:
        i[0] = (i[0] + 1) % mats
        return product(x, wts[i[0]], True)

    assert torch.allclose(product(x, ws[0], False), product(x, wts[0], True), atol=1e-3)
    for f in (plain, transposed):  # warm-up
        for _ in range(mats):
            f()
    a, b = [], []
    for _ in range(3):  # interleaved thirds
        a.append(_median_us(plain, reps // 3))
        b.append(_median_us(transposed, reps // 3))
    us_plain, us_t = statistics.median(a), statistics.median(b)
    nbytes = k * n * 4
    return {"k": k, "n": n, "mb": nbytes / 2**20, "x_at_m_us": us_plain, "transposed_us": us_t,
            "ratio": us_t / us_plain, "server_uses_transposed": transposed_on_cpu(k, n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as served)")
    ap.add_argument("--rows", type=int, default=16, help="rows of x (a served batch is about 16)")
    ap.add_argument("--mats", type=int, default=12, help="matrices used in turn per shape")
    ap.add_argument("--hot", action="store_true", help="one matrix, used again and again")
    ap.add_argument("--reps", type=int, default=150, help="calls per form and shape")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "dense_forms.json"), help="JSON output path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for k, n in SHAPES:
            r = measure(k, n, args.rows, 1 if args.hot else args.mats, args.reps)
            rows.append(r)
            print(f"[dense] {k:5d} x {n:5d} ({r['mb']:4.1f} MiB): x @ M {r['x_at_m_us']:7.1f} us, transposed "
                  f"{r['transposed_us']:7.1f} us, ratio {r['ratio']:.2f}"
                  f"{'  (served transposed)' if r['server_uses_transposed'] else ''}", flush=True)
    config = {**vars(args), "transposed_bytes": TRANSPOSED_BYTES, "transposed_min_width": TRANSPOSED_MIN_WIDTH}
    write_result(args.out, {"config": config, "shapes": rows},
                 note="shared with other agents: compare the two forms of one run, not absolute figures")
    print(f"[dense] wrote {args.out}")


if __name__ == "__main__":
    main()

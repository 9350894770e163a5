"""What verifying a digest costs: SHA-256 of stored bytes, in ms per MB (the check every cold load does).

    .venv/bin/python bench/digest_cost.py [--mb 64] [--reps 5] [--out bench/results/digest_cost.json]

Hashes random buffers of several sizes (a 4.7 MB ResNet-18 pack is the largest case the README quotes)
and prints the best and median ms per MB (1 MB = 10^6 bytes), with the machine and the command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import ssl
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64.0, help="largest buffer, in MB (default 64)")
    ap.add_argument("--reps", type=int, default=5, help="timed hashes per size (default 5)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    sizes = sorted({1.0, 4.7, args.mb})
    rows = []
    for mb in sizes:
        data = os.urandom(int(mb * 1e6))
        hashlib.sha256(data).digest()  # warm
        times = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            hashlib.sha256(data).digest()
            times.append(time.perf_counter() - t0)
        rows.append({"mb": mb, "best_ms_per_mb": min(times) * 1e3 / mb,
                     "median_ms_per_mb": statistics.median(times) * 1e3 / mb})
    out = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.machine(),
           "processor": platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "openssl": ssl.OPENSSL_VERSION, "load_average": os.getloadavg(), "results": rows}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""A robot's perception loop: every frame runs through several tasks in turn, switching task each time.

    python clients/examples/robot.py --url http://127.0.0.1:8000 --tasks door-state,person-count,floor \\
        --frames 20 [--images DIR] [--no-hint]

Each request is a task switch.  Before each one the robot hints which task comes next
(``X-NetTailor-Next-Task``), so the server can prefetch that pack.  It prints one row per frame with
the robot-side latency of each switch in milliseconds (the server's own total in brackets), then
p50/p95/max per task.  It exits 1 if any request fails, 2 on bad arguments.

Needs only nettailor-client; generated frames also need Pillow (or pass --images).
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
from pathlib import Path

from nettailor_client import Client, NetTailorError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def load_frames(images: str | None, frames: int, size: int, seed: int) -> list[bytes]:
    if images:
        files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SystemExit(f"robot: no JPEG/PNG/WebP files in {images}")
        return [files[i % len(files)].read_bytes() for i in range(frames)]
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit("robot: generating frames needs Pillow; install it or pass --images DIR") from None
    rng = random.Random(seed)
    out = []
    for _ in range(frames):
        buf = io.BytesIO()
        Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Cycle through tasks frame by frame and print each switch's latency.")
    ap.add_argument("--url", default=None, help="server base URL (default: $NETTAILOR_URL or http://127.0.0.1:8000)")
    ap.add_argument("--token", default=None, help="operator token (not needed to predict; default $NETTAILOR_TOKEN)")
    ap.add_argument("--tasks", required=True, help="comma-separated task ids to cycle through, e.g. a,b,c")
    ap.add_argument("--frames", type=int, default=10, help="frames to process (default: 10)")
    ap.add_argument("--images", default=None, help="directory of frames; default: generate random frames")
    ap.add_argument("--size", type=int, default=32, help="side of generated frames in pixels (default: 32)")
    ap.add_argument("--seed", type=int, default=0, help="seed of generated frames (default: 0)")
    ap.add_argument("--no-hint", action="store_true", help="do not announce the next task to the server")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: 30)")
    ap.add_argument("--reconnect-timeout", type=float, default=30.0,
                    help="after a dropped connection, wait this long for the server to be ready again; "
                         "0 fails at once (default: 30)")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or args.frames < 1:
        ap.error("need at least one task and one frame")
    frames = load_frames(args.images, args.frames, args.size, args.seed)

    lat: dict[str, list[float]] = {t: [] for t in tasks}
    width = max(12, *(len(t) + 2 for t in tasks))
    print("frame  " + "  ".join(t.rjust(width) for t in tasks) + "  label(s)")
    try:
        with Client(args.url, token=args.token, timeout=args.timeout) as client:
            session = client.task(tasks[0])
            session.reconnect_timeout = args.reconnect_timeout
            step = 0
            for f, frame in enumerate(frames):
                cells, labels = [], []
                for task in tasks:
                    session.switch(task)
                    step += 1
                    if not args.no_hint:
                        session.hint_next(tasks[step % len(tasks)])
                    pred = session.predict(frame, top_k=1)
                    rec = session.last
                    assert rec is not None
                    lat[task].append(rec.latency_ms)
                    cells.append(f"{rec.latency_ms:.1f} [{rec.server_ms:.1f}]".rjust(width))
                    labels.append(pred.top.label)
                print(f"{f:5d}  " + "  ".join(cells) + "  " + ",".join(labels), flush=True)
    except NetTailorError as e:
        print(f"robot: {type(e).__name__}: {e}", file=sys.stderr)
        return 1

    print("\nswitch latency ms (robot side)   p50      p95      max")
    for task in tasks:
        xs = lat[task]
        print(f"  {task:<30} {statistics.median(xs):7.1f}  {percentile(xs, 0.95):7.1f}  {max(xs):7.1f}")
    allx = [x for xs in lat.values() for x in xs]
    print(f"  {'all (' + str(len(allx)) + ' switches)':<30} {statistics.median(allx):7.1f}  "
          f"{percentile(allx, 0.95):7.1f}  {max(allx):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

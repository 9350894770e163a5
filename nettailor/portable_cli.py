"""``nettailor export`` and ``nettailor predict``: a task used with no server.

* ``export``: one task (a pack file, or a task id in a store) as ONNX and torch.export files
  (:mod:`trainer.portable`).
* ``predict``: images, folders or a stream of paths through a pack in this process, with the server's
  own decoding, preprocessing and executor (:mod:`server.local`), printed in the same formats as
  ``nettailor-client predict`` (the client's :mod:`nettailor_client.folder` writers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["load_task", "register"]

_STORE_HELP = "store URL: redis://host:port/db or a directory (default NETTAILOR_STORE or .nettailor/store)"


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("which task")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--pack", type=Path, help="a pack file, as written by 'nettailor tailor'")
    src.add_argument("--task", help="a task id registered in --store (its current version)")
    g.add_argument("--store", default=None, help=_STORE_HELP + "; also where the pack's backbone is found")
    g.add_argument("--backbone-file", type=Path, default=None,
                   help="the pack's backbone blob (.safetensors), instead of the store's")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write one task as a standalone ONNX / torch.export model",
                       description="Write one task as standalone models: TASK.onnx (ONNX, for onnxruntime and "
                       "other runtimes), TASK.pt2 (torch.export, for Python robots) and TASK.json (metadata). "
                       "Inputs are uint8 images [N, channels, size, size]; the normalisation is inside.")
    _source_args(p)
    p.add_argument("--out", type=Path, default=None, help="output folder (default exports/TASK)")
    p.add_argument("--formats", default="onnx,pt2", help="onnx, pt2 or both (default onnx,pt2)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the exported files against the task's network")
    p.set_defaults(func=_export)

    p = sub.add_parser("predict", help="classify images with a pack, in this process (no server)",
                       description="Classify images, folders or a stream of paths (-) with one task, using the "
                       "server's own decoding, preprocessing and executor: the answers are the server's.")
    _source_args(p)
    p.add_argument("images", metavar="PATH", nargs="+",
                   help="image files (JPEG, PNG or WebP), folders of them, or - to read paths from stdin")
    p.add_argument("--top-k", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default NETTAILOR_DEVICE, else cuda if any)")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    try:
        from nettailor_client.cli import add_folder_args
    except ImportError:  # the light client is not installed: predict still parses, and says what is missing
        p.set_defaults(func=_needs_client)
        return
    add_folder_args(p)
    p.set_defaults(func=_predict)


def load_task(args: argparse.Namespace, device: str | None = "cpu"):  # type: ignore[no-untyped-def]
    """``(TaskPack, Backbone)`` for ``--pack`` or ``--task``; the backbone is the one the pack names."""
    from blockstore import Backbone, TaskPack, load_resident, open_store
    from blockstore.errors import PackNotFound, WeightsUnavailable

    store = None
    try:
        if args.pack is not None:
            if not args.pack.is_file():
                raise PackNotFound(f"pack file {args.pack} does not exist")
            pack = TaskPack.from_bytes(args.pack.read_bytes())
        else:
            store = open_store(args.store)
            rec, data = store.get_pack(args.task)
            pack = TaskPack.from_bytes(data, verified_sha256=rec.sha256)
        if args.backbone_file is not None:
            if not args.backbone_file.is_file():
                raise WeightsUnavailable(f"backbone file {args.backbone_file} does not exist")
            from blockstore import resolve_device

            bb = Backbone.from_bytes(args.backbone_file.read_bytes()).freeze().eval().to(resolve_device(device))
        else:
            store = store or open_store(args.store)
            bb = load_resident(store, pack.backbone_id, device)
    finally:
        if store is not None:
            store.close()
    return pack, bb


def _export(args: argparse.Namespace) -> int:
    from trainer.portable import export_task

    pack, bb = load_task(args, "cpu")
    out = args.out or Path("exports") / pack.task_id
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    result = export_task(pack, bb, out, formats=formats, opset=args.opset, check=not args.no_check)
    print(json.dumps({"task_id": pack.task_id, "version": pack.version, "files": {k: str(v) for k, v in
                      result.files.items()}, "max_abs_diff_vs_torch": result.checks,
                      "input": f"uint8 [N, {pack.preprocess.channels}, {pack.preprocess.size}, "
                               f"{pack.preprocess.size}]", "labels": pack.labels}, indent=2))
    return 0


def _needs_client(args: argparse.Namespace) -> int:
    from blockstore.errors import NetTailorError

    raise NetTailorError("nettailor predict prints through the client's writers: pip install ./clients")


def _predict(args: argparse.Namespace) -> int:
    from nettailor_client.cli import output_format
    from nettailor_client.folder import FileResult, Progress, find_images, write_all
    from nettailor_client.models import Label, Prediction, Timings
    from server.local import LocalPredictor

    files = find_images(args.images, recursive=args.recursive)
    if not files:
        raise FileNotFoundError(f"no JPEG, PNG or WebP images in {' '.join(args.images)}")
    pack, bb = load_task(args, args.device)
    predictor = LocalPredictor(pack, bb)
    progress = Progress(len(files), enabled=False if args.quiet else None)

    def results():  # type: ignore[no-untyped-def]
        for i in range(0, len(files), args.batch_size):
            group = files[i:i + args.batch_size]
            blobs = []
            for path in group:
                with open(path, "rb") as f:
                    blobs.append(f.read())
            for path, r in zip(group, predictor.predict(blobs, args.top_k)):
                if r.error is not None:
                    yield FileResult(path, pack.task_id, error=r.error.code, detail=r.error.detail)
                else:
                    labels = [Label(index=x.index, label=x.label, prob=x.prob) for x in r.labels or []]
                    yield FileResult(path, pack.task_id, Prediction(task_id=pack.task_id, version=0,
                                                                    pack_version=pack.version, predictions=labels,
                                                                    timings_ms=Timings()))
            progress.update(len(group))

    try:
        errors = write_all(results(), output_format(args))
    finally:
        progress.close()
    return 3 if errors else 0

"""``nettailor backbone import SOURCE`` and ``nettailor backbone list``: real backbones into a store.

Imported weights become a NetTailor backbone blob (safetensors plus metadata: configuration, source,
normalisation), whose SHA-256 is the ``backbone_id`` that packs trained on it name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["parse_normalization", "register"]

_STORE_HELP = "store URL: redis://host:port/db or a directory (default NETTAILOR_STORE or .nettailor/store)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backbone", help="import pre-trained weights into a store, or list its backbones",
                       description="Bring pre-trained universal blocks into a store and see what it holds.")
    cmds = p.add_subparsers(dest="backbone_command", metavar="ACTION", required=True)

    imp = cmds.add_parser(
        "import", help="store weights as a NetTailor backbone",
        description="Store pre-trained ResNet weights as a NetTailor backbone blob. SOURCE is "
                    "torchvision:ResNet50_Weights.IMAGENET1K_V2 (torchvision's cache, downloaded where the network "
                    "allows), a torchvision-format .pth/.pt state dict, or a .safetensors file.")
    imp.add_argument("source", metavar="SOURCE",
                     help="torchvision:ENUM[.VARIANT], FILE.pth, FILE.pt or FILE.safetensors")
    imp.add_argument("--arch", default=None,
                     help="resnet10, resnet18, resnet34 or resnet50 (default: read from the weights; checked if given)")
    imp.add_argument("--stem", default=None, choices=("imagenet", "3x3s1", "3x3s2"),
                     help="stem of the weights (default: imagenet for a 7x7 first conv; a 3x3 one needs this flag)")
    imp.add_argument("--size", type=int, default=None,
                     help="input side in pixels that tasks on this backbone use (default 224 for the ImageNet stem, "
                          "else 32); 'nettailor tailor --size' must match")
    imp.add_argument("--normalization", default="auto",
                     help="input normalisation new tasks default to: auto (torchvision's for torchvision weights, "
                          "none for a plain file), imagenet, none, or MEAN,MEAN,MEAN/STD,STD,STD (default auto)")
    imp.add_argument("--no-download", action="store_true",
                     help="never download torchvision weights; fail unless they are in torchvision's cache "
                          "($TORCH_HOME/hub/checkpoints)")
    imp.add_argument("--default", action="store_true",
                     help="make it the store's default backbone (what tailoring and serving use unless told otherwise)")
    imp.add_argument("--store", default=None, help=_STORE_HELP)
    imp.add_argument("--out", type=Path, default=None, help="also write the backbone blob (.safetensors) here")
    imp.set_defaults(func=_import)

    ls = cmds.add_parser("list", help="list the backbones a store holds")
    ls.add_argument("--store", default=None, help=_STORE_HELP)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_list)


def parse_normalization(text: str):  # type: ignore[no-untyped-def]
    """``auto``, ``none``, ``imagenet`` or ``m,m,m/s,s,s`` -> what :func:`blockstore.import_backbone` takes."""
    from blockstore import IMAGENET_NORMALIZATION, BackboneError
    from blockstore.backbone import check_normalization

    key = text.strip().lower()
    if key in ("auto", "none", "imagenet"):
        return {"auto": "auto", "none": None, "imagenet": IMAGENET_NORMALIZATION}[key]
    mean, sep, std = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return check_normalization((mean.split(","), std.split(",")))
    except (ValueError, BackboneError):
        raise BackboneError(f"--normalization must be auto, none, imagenet or MEAN,MEAN,MEAN/STD,STD,STD with three "
                            f"positive stds, not {text!r}") from None


def _import(args: argparse.Namespace) -> int:
    from blockstore import import_backbone
    from blockstore.stores import save_backbone

    bb = import_backbone(args.source, arch=args.arch, stem=args.stem, size=args.size,
                         normalization=parse_normalization(args.normalization), download=not args.no_download)
    blob = bb.to_bytes()
    bid, is_default, url = save_backbone(blob, args.store, make_default=args.default, out=args.out)
    summary = {"backbone_id": bid, "arch": bb.config.arch, "stem": bb.config.stem, "size": bb.config.input_size,
               "source": bb.source, "normalization": bb.normalization, "default": is_default, "store": url,
               "bytes": len(blob), "file": str(args.out) if args.out else None}
    print(json.dumps(summary, indent=2))
    if not is_default:
        print(f"not the store's default backbone: pass --backbone-id {bid} to the trainer and serve it with "
              f"NETTAILOR_BACKBONE={bid} (or import again with --default)", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    from blockstore import BackboneInfo, open_store

    store = open_store(args.store)
    try:
        default = store.default_backbone_id()
        rows: list[dict[str, Any]] = []
        for bid in store.list_backbones():
            data = store.get_backbone(bid)
            info = BackboneInfo.from_bytes(data)
            rows.append({"backbone_id": bid, "default": bid == default, "arch": info.config.arch,
                         "stem": info.config.stem, "size": info.config.input_size, "source": info.source,
                         "normalization": info.normalization, "bytes": len(data)})
    finally:
        store.close()
    if args.json:
        print(json.dumps({"store": store.url, "backbones": rows}, indent=2))
        return 0
    if not rows:
        print(f"store {store.url} holds no backbones: 'nettailor backbone import SOURCE' or 'nettailor pretrain'")
        return 0
    table = [("", "ID", "ARCH", "STEM", "SIZE", "SOURCE", "NORMALIZATION", "BYTES")]
    for r in rows:
        norm = r["normalization"]
        table.append(("*" if r["default"] else "", r["backbone_id"][:12], r["arch"], r["stem"], str(r["size"]),
                      _short(r["source"]), "-" if norm is None else "/".join(",".join(f"{v:g}" for v in t)
                                                                             for t in norm),
                      f"{r['bytes']:,}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print("* the default backbone (tailoring and serving use it unless --backbone-id / NETTAILOR_BACKBONE say "
          "otherwise)")
    return 0


def _short(source: str | None) -> str:
    if source is None:
        return "-"
    name, _, digest = source.partition(" sha256=")
    return f"{name} ({digest[:12]})" if digest else name

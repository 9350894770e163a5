"""``nettailor`` with one subcommand per stage.  Each package registers its own subcommands, and
heavy imports happen inside the handlers, so ``nettailor --help`` is fast."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from blockstore.errors import NetTailorError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nettailor",
        description="Tailor, store and serve many vision tasks on one frozen network (NetTailor, CVPR 2019).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from trainer.cli import register as register_trainer

    from .backbone_cli import register as register_backbone
    from .portable_cli import register as register_portable

    register_trainer(sub)
    from .store_cli import register as register_store

    register_store(sub)
    register_backbone(sub)
    register_portable(sub)
    try:
        from server.cli import register as register_server
    except ImportError:  # the serving extra is not installed
        pass
    else:
        register_server(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except NetTailorError as e:
        print(f"nettailor {args.command}: error [{e.code}]: {e.detail}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:  # a path given on the command line
        print(f"nettailor {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nettailor {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""``nettailor-client``: the SDK from a shell.

Exit codes: 0 success, 2 usage error (bad arguments, unreadable local file), 3 the server answered
with an error, 4 the server could not be reached (connection refused, timeout).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from . import __version__
from ._format import task_detail, tasks_table
from .client import Client
from .errors import APIError, ImageEncodingError, NetTailorError, TransportError
from .folder import FORMATS, Progress, find_images, predict_files, write_all

__all__ = ["EXIT_OK", "EXIT_SERVER", "EXIT_UNREACHABLE", "EXIT_USAGE", "add_folder_args", "main", "output_format"]

EXIT_OK, EXIT_USAGE, EXIT_SERVER, EXIT_UNREACHABLE = 0, 2, 3, 4


def _common() -> argparse.ArgumentParser:
    # Defaults are SUPPRESS so that the options work both before and after the subcommand
    # without the subparser's defaults overwriting what was given before it.
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--url", default=argparse.SUPPRESS,
                   help="server base URL (default: $NETTAILOR_URL or http://127.0.0.1:8000)")
    g.add_argument("--token", default=argparse.SUPPRESS,
                   help="operator token for register, delete and rollback (default: $NETTAILOR_TOKEN)")
    g.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds per request (default: 30)")
    g.add_argument("--retries", type=int, default=argparse.SUPPRESS,
                   help="retries of overload answers (429/503) with backoff (default: 3)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print JSON for scripts instead of tables")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="nettailor-client", parents=[common],
                                     description="Query and manage a NetTailor server over HTTP.",
                                     epilog="exit codes: 0 ok, 2 usage error, 3 server error, 4 server unreachable")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", parents=[common], help="classify images or folders with a task (or several: a,b,c)")
    p.add_argument("task", metavar="TASK", help="task id; a comma-separated list runs every task on each image")
    p.add_argument("images", metavar="PATH", nargs="+",
                   help="image files (JPEG, PNG or WebP), folders of them, or - to read paths from stdin")
    p.add_argument("--top-k", type=int, default=5, help="labels to return per image (default: 5)")
    add_folder_args(p)
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--version", dest="pin_version", type=int, default=None, metavar="N",
                     help="answer with this stored version of the task (default: the current one)")
    pin.add_argument("--alias", dest="pin_alias", default=None, metavar="NAME",
                     help="answer with the version this alias (production, canary, ...) points at")

    sub.add_parser("tasks", parents=[common], help="list the registered tasks")

    p = sub.add_parser("ready", parents=[common], help="wait until the server is ready (backbone loaded, store up)")
    p.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                   help="give up after this long (exit 4); 0 asks once (default: 30)")

    p = sub.add_parser("task", parents=[common], help="show one task: plan, costs, metrics and history")
    p.add_argument("task", metavar="ID", help="task id")

    p = sub.add_parser("register", parents=[common], help="register or update a task from a pack file")
    p.add_argument("task", metavar="ID", help="task id (must match the pack's)")
    p.add_argument("pack", metavar="PACK", help="pack file, as written by 'nettailor tailor'")

    p = sub.add_parser("delete", parents=[common], help="delete a task")
    p.add_argument("task", metavar="ID", help="task id")

    p = sub.add_parser("rollback", parents=[common], help="re-point a task at an earlier version")
    p.add_argument("task", metavar="ID", help="task id")
    p.add_argument("version", metavar="VERSION", type=int, help="store version (see 'task ID')")

    p = sub.add_parser("alias", parents=[common], help="set or remove an alias: a named pointer to a version")
    alias = p.add_subparsers(dest="alias_command", required=True, metavar="ACTION")
    a = alias.add_parser("set", parents=[common], help="point ALIAS at VERSION of a task")
    a.add_argument("task", metavar="ID", help="task id")
    a.add_argument("alias", metavar="ALIAS", help="alias name, starting with a letter (production, canary, ...)")
    a.add_argument("version", metavar="VERSION", type=int, help="store version (see 'task ID')")
    a = alias.add_parser("rm", parents=[common], help="remove an alias from a task")
    a.add_argument("task", metavar="ID", help="task id")
    a.add_argument("alias", metavar="ALIAS", help="alias name")
    return parser


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def add_folder_args(p: argparse.ArgumentParser) -> None:
    """Flags of folder prediction, shared with the local ``nettailor predict``."""
    g = p.add_argument_group("folders and output")
    g.add_argument("--recursive", "-r", action="store_true", help="also look for images in subfolders")
    g.add_argument("--batch-size", type=int, default=32,
                   help="images per request, at most the server's NETTAILOR_MAX_BATCH (default: 32)")
    g.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default: 4)")
    g.add_argument("--format", choices=FORMATS, default=None,
                   help="table (default), csv or jsonl (one JSON object per image and task, streamed)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar (it is shown only on a terminal)")


def output_format(args: argparse.Namespace) -> str:
    return args.format or ("json" if getattr(args, "json", False) else "table")


def _predict(client: Client, args: argparse.Namespace) -> None:
    tasks = [t for t in args.task.split(",") if t]
    files = find_images(args.images, recursive=args.recursive)
    if not files:
        raise FileNotFoundError(f"no JPEG, PNG or WebP images in {' '.join(args.images)}")
    progress = Progress(len(files), enabled=False if args.quiet else None)
    try:
        results = predict_files(client, tasks, files, batch_size=args.batch_size, concurrency=args.concurrency,
                                top_k=args.top_k, on_progress=progress.update,
                                version=args.pin_version, alias=args.pin_alias)
        errors = write_all(results, output_format(args))
    finally:
        progress.close()
    if errors:
        raise _SomeFilesFailed(f"{errors} of {len(files) * len(tasks)} predictions failed (see the error column)")


class _SomeFilesFailed(Exception):
    pass


def _run(client: Client, args: argparse.Namespace) -> None:
    cmd = args.command
    if cmd == "predict":
        _predict(client, args)
    elif cmd == "ready":
        state = client.wait_ready(args.wait)
        _emit(args, state, f"ready: backbone {str(state.get('backbone_id'))[:12]}, {state.get('cached_tasks')} "
                           "cached task(s)")
    elif cmd == "tasks":
        tasks = client.list_tasks()
        _emit(args, {"tasks": [t.model_dump() for t in tasks]}, tasks_table(tasks) if tasks else "no tasks")
    elif cmd == "task":
        detail = client.get_task(args.task)
        _emit(args, detail.model_dump(), task_detail(detail))
    elif cmd == "register":
        with open(args.pack, "rb") as f:
            pack = f.read()
        reg = client.register(args.task, pack)
        what = "registered" if reg.changed else "unchanged (same pack):"
        _emit(args, reg.model_dump(), f"{reg.task_id} {what} version {reg.version}, sha256 {reg.sha256[:12]}")
    elif cmd == "delete":
        client.delete(args.task)
        _emit(args, {"task_id": args.task, "deleted": True}, f"deleted {args.task}")
    elif cmd == "rollback":
        reg = client.rollback(args.task, args.version)
        _emit(args, reg.model_dump(), f"{reg.task_id} now at version {reg.version}, sha256 {reg.sha256[:12]}")
    elif cmd == "alias":
        _alias(client, args)


def _alias(client: Client, args: argparse.Namespace) -> None:
    if args.alias_command == "set":
        res = client.set_alias(args.task, args.alias, args.version)
        what = "now points at" if res.changed else "already pointed at"
        _emit(args, res.model_dump(), f"{args.task}: {args.alias} {what} version {args.version}")
    else:
        client.delete_alias(args.task, args.alias)
        _emit(args, {"task_id": args.task, "alias": args.alias, "deleted": True}, f"{args.task}: removed {args.alias}")


def _fail(args: argparse.Namespace, code: int, kind: str, exc: BaseException, label: str | None = None,
          **extra: Any) -> int:
    """One line on stderr: ``nettailor-client: LABEL: message``, or a JSON error object with ``--json``."""
    if getattr(args, "json", False):
        detail = exc.detail if isinstance(exc, APIError) else str(exc)
        print(json.dumps({"error": kind, "detail": detail, **extra}), file=sys.stderr)
    else:
        print(f"nettailor-client: {label or kind}: {exc}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        with Client(getattr(args, "url", None), token=getattr(args, "token", None),
                    timeout=getattr(args, "timeout", 30.0), retries=getattr(args, "retries", 3)) as client:
            _run(client, args)
    except APIError as e:
        return _fail(args, EXIT_SERVER, e.code or "http_error", e, "server error", status=e.status)
    except _SomeFilesFailed as e:
        return _fail(args, EXIT_SERVER, "some_files_failed", e)
    except TransportError as e:
        return _fail(args, EXIT_UNREACHABLE, "unreachable", e)
    except (OSError, ImageEncodingError, ValueError, httpx.InvalidURL) as e:
        return _fail(args, EXIT_USAGE, "usage", e)
    except NetTailorError as e:  # an answer that breaks the contract is the server's fault
        return _fail(args, EXIT_SERVER, "unexpected_response", e)
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``nettailor gc``: apply the retention policy and collect pack bytes that no task version references."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of versions >= 1, not {text!r}")
    return int(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gc", help="collect pack bytes no retained task version references",
        description="Cut every task's history to the last --keep-versions versions (plus its current one), then "
        "delete the pack bytes no task record names.  Safe while servers and publishers run: a pack being "
        "registered at the same moment is never collected.  Deletes and updates collect on their own; run this "
        "after lowering the retention, or to clean up after older versions of NetTailor.")
    p.add_argument("--store", default=None, help="redis://host:port/db or a directory (default: NETTAILOR_STORE, "
                   "else ./.nettailor/store)")
    p.add_argument("--keep-versions", type=_at_least_one, default=None,
                   help="versions of each task to keep for rollback (default: NETTAILOR_KEEP_VERSIONS, else 10)")
    p.add_argument("--dry-run", action="store_true", help="report what would be pruned and deleted; change nothing")
    p.add_argument("--verify", action="store_true", help="also re-hash every referenced pack and every backbone; "
                   "a pack that fails is marked corrupt, as a server read would mark it")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=gc)


def gc(args: argparse.Namespace) -> int:
    from blockstore import open_store

    store = open_store(args.store, keep_versions=args.keep_versions)
    try:
        report = store.collect_garbage(dry_run=args.dry_run).to_dict()
        if args.verify:
            report["corrupt"] = store.verify()
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{store.url}: {report['tasks']} task(s); pruned {report['versions_pruned']} old version(s); "
              f"{verb} {len(report['packs_deleted'])} pack(s), {report['bytes_freed'] / 1e6:.1f} MB; "
              f"{report['packs_kept']} pack(s) kept")
        for sha in report["packs_deleted"]:
            print(f"  {sha}")
        for what, why in report.get("corrupt", {}).items():
            print(f"  corrupt {what[:12]}...: {why}")
    return 1 if report.get("corrupt") else 0

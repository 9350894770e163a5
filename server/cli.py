"""``nettailor serve``: the FastAPI app under uvicorn.  Settings come from ``NETTAILOR_*``."""

from __future__ import annotations

import argparse
import os

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve task packs over HTTP (FastAPI under uvicorn)",
                              description="Serve task packs over HTTP. Configuration comes from NETTAILOR_STORE, "
                              "NETTAILOR_TOKEN, NETTAILOR_DEVICE, NETTAILOR_CACHE_BYTES and the other NETTAILOR_* "
                              "variables (see server/settings.py).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes, each with its own copy of "
                   "the universal blocks and pack cache (default 1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default info)")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from blockstore import open_store

    from .settings import Settings, get_settings

    os.environ["NETTAILOR_HOST"] = args.host  # the workers read it: open mode is for loopback only
    get_settings.cache_clear()
    settings = Settings()
    # Fail here, with one clear line and exit code 2, before uvicorn starts: no token, a store that
    # cannot be opened.  An empty store is not an error: the server starts and waits for a backbone.
    settings.check_security()
    open_store(settings.store, keep_versions=settings.keep_versions).close()
    uvicorn.run("server.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level)
    return 0

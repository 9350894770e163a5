"""``nettailor serve``: the FastAPI app under uvicorn.  Settings come from ``NETTAILOR_*``.

One process per replica: to use more cores or machines, run more replicas behind a load balancer
(docker-compose.yml, deploy/k8s/).  There is no ``--workers``: uvicorn's worker processes would each
keep their own metrics registry, so /metrics would show one random worker, and on this project's
2-core machine two workers were no faster than one process (bench/workers_bench.py, README).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["register"]

_STARTUP_FAILURE = 3  # uvicorn's exit status when the app's start-up fails


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve task packs over HTTP (FastAPI under uvicorn)",
                              description="Serve task packs over HTTP. Configuration comes from NETTAILOR_STORE, "
                              "NETTAILOR_TOKEN, NETTAILOR_DEVICE, NETTAILOR_CACHE_BYTES and the other NETTAILOR_* "
                              "variables (see server/settings.py). One process per replica: scale with replicas.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="log level (default info); NETTAILOR_LOG_FORMAT=json gives JSON lines")
    p.add_argument("--ssl-keyfile", type=Path, default=None, help="serve HTTPS with this PEM private key "
                   "(with --ssl-certfile)")
    p.add_argument("--ssl-certfile", type=Path, default=None, help="serve HTTPS with this PEM certificate "
                   "chain (with --ssl-keyfile)")
    p.set_defaults(func=serve)


def _check_tls(args: argparse.Namespace) -> None:
    from .settings import ConfigError

    if (args.ssl_keyfile is None) != (args.ssl_certfile is None):
        raise ConfigError("--ssl-keyfile and --ssl-certfile go together: give both for HTTPS, or neither")
    for path in (args.ssl_keyfile, args.ssl_certfile):
        if path is not None and not path.is_file():
            raise ConfigError(f"{path}: no such file")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from blockstore import open_store

    from .app import create_app
    from .drain import DrainingServer
    from .logs import uvicorn_log_config
    from .settings import Settings, get_settings

    _check_tls(args)
    os.environ["NETTAILOR_HOST"] = args.host  # open mode is for loopback only
    get_settings.cache_clear()
    settings = Settings()
    # Fail here, with one clear line and exit code 2, before uvicorn starts: no token, a store that
    # cannot be opened.  An empty store is not an error: the server starts and waits for a backbone.
    settings.check_security()
    open_store(settings.store, keep_versions=settings.keep_versions).close()
    json_logs = settings.log_format == "json"
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            log_config=uvicorn_log_config(settings.log_format, args.log_level),
                            access_log=not json_logs,  # JSON mode writes its own access records (server/logs.py)
                            ssl_keyfile=str(args.ssl_keyfile) if args.ssl_keyfile else None,
                            ssl_certfile=str(args.ssl_certfile) if args.ssl_certfile else None)
    server = DrainingServer(config, app.state.drain, settings.drain_s)
    server.run()
    return 0 if server.started else _STARTUP_FAILURE

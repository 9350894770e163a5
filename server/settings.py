"""Server configuration, read from ``NETTAILOR_*`` environment variables by pydantic-settings.

The core never reads the environment: :func:`server.app.create_app` takes a :class:`Settings`, and
:func:`get_settings` (cached) is only the default that tests override.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from blockstore.errors import NetTailorError
from blockstore.stores import DEFAULT_KEEP_VERSIONS, DEFAULT_STORE

__all__ = ["ConfigError", "Settings", "get_settings", "is_loopback"]


class ConfigError(NetTailorError):
    """A configuration the server refuses to start with."""

    code = "config_error"


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NETTAILOR_", extra="ignore")

    store: str = Field(DEFAULT_STORE, description="redis://host:port/db[?prefix=p:] or a directory path")
    token: str | None = Field(None, description="operator token for mutating calls (Authorization: Bearer ...)")
    allow_open: bool = Field(False, description="run the management API without a token (loopback hosts only)")
    host: str | None = Field(None, description="the address uvicorn binds; set by 'nettailor serve'")
    device: str | None = Field(None, description="cpu, cuda, cuda:N; default cuda when present")
    backbone: str | None = Field(None, description="backbone id to serve; default the store's default backbone")
    cache_bytes: int = Field(256 * 1024 * 1024, ge=0, description="pack cache budget in bytes of device tensors")
    spill_bytes: int = Field(2 * 1024**3, ge=0, description="spill tier: local disk bytes for folded tasks evicted "
                             "from the pack cache, mapped back instead of loaded from the store again "
                             "(server.spill); 0: off")
    spill_dir: str | None = Field(None, description="where the spill tier makes its private directory; default the "
                                  "system's temporary directory")
    load_threads: int = Field(4, ge=1, description="cold loads of the pack cache in flight at once (on the CPU they "
                              "run in the executor process); more only queue there")
    max_queue: int = Field(256, ge=1, description="samples waiting for the executor before 'overloaded'")
    max_batch: int = Field(32, ge=1, description="most samples per executor call (and per batch request)")
    batch_window_ms: float = Field(2.0, ge=0, description="how long the first sample of a batch waits for company")
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1, description="largest image upload")
    max_pack_bytes: int = Field(256 * 1024 * 1024, ge=1, description="largest pack upload (PUT)")
    max_pixels: int = Field(16_000_000, ge=1, description="largest image (width x height), checked before decoding")
    max_tasks_per_request: int = Field(16, ge=1, description="most tasks in one multi-task request")
    failure_ttl_s: float = Field(5.0, ge=0, description="how long a corrupt stored pack is remembered")
    keep_versions: int = Field(DEFAULT_KEEP_VERSIONS, ge=1, description="versions of each task kept for rollback; "
                               "older ones, and bytes no version references, are collected")
    backbone_poll_s: float = Field(2.0, gt=0, description="while the store holds no (loadable) backbone, how often "
                                   "to look for one")
    log_format: Literal["text", "json"] = Field("text", description="'json': one JSON object per log line, with "
                                                "request ids and a structured access log ('nettailor serve')")
    drain_s: float = Field(5.0, ge=0, description="on SIGTERM, seconds to keep serving with /readyz at 503 before "
                           "closing the listener; in-flight requests then finish ('nettailor serve')")
    metrics_max_tasks: int = Field(100, ge=0, description="tasks with their own per-task metric series; later "
                                   "ones share the label 'other'")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads for the executor; 0: one per core "
                               "but one, left to the event loop (at least 1)")
    executor_kernel: Literal["looped", "grouped"] | None = Field(None, description="how the task-specific layers of "
                                                                 "a mixed batch run (server.kernels); default "
                                                                 "the device's faster one")
    executor_process: bool | None = Field(None, description="run the executor in a process of its own (CPU only), "
                                          "so that it never waits for the event loop's GIL (server.engine); "
                                          "default: on for CPU serving with two cores or more")
    executor_workers: int = Field(0, ge=0, description="executor batches run side by side (with the executor "
                                  "process, each on a lane of its own there); 0: one "
                                  "(see server.executor.executor_parallelism)")
    executor_pipeline: int = Field(2, ge=1, le=8, description="batches in flight on each lane of the executor "
                                   "process: with 2, the next batch waits there while one computes, so that "
                                   "process never waits for the server to hand it over (server.engine); 1: one "
                                   "at a time")

    def check_security(self) -> None:
        """Refuse a management API without a token unless explicitly opened on loopback."""
        if self.token:
            return
        if not self.allow_open:
            raise ConfigError(
                "no operator token: set NETTAILOR_TOKEN (mutating calls need it), or set NETTAILOR_ALLOW_OPEN=1 "
                "to run the management API open, which is allowed on a loopback host only"
            )
        if self.host is not None and not is_loopback(self.host):
            raise ConfigError(
                f"NETTAILOR_ALLOW_OPEN is for loopback hosts only, not {self.host!r}: set NETTAILOR_TOKEN"
            )


@lru_cache
def get_settings() -> Settings:
    return Settings()

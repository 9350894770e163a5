"""Prometheus metrics, one registry per app so that several apps (tests, replicas) never collide.

The app's registry also carries the standard ``process_*``, ``python_gc_*`` and ``python_info``
series: a fresh collector of each is registered into it, as prometheus_client does for its global
registry, so one process may hold any number of apps.

Per-task series are bounded: the first ``max_task_labels`` task ids seen get their own ``task``
label value, every later one shares ``other`` (so 1,000 tasks cost at most that many series per
metric), and a deleted task's series are removed, which frees its slot.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

__all__ = ["OTHER_TASKS", "Metrics", "TaskLabels"]

OTHER_TASKS = "other"  # the shared label value of tasks past the cap


class TaskLabels:
    """Bounded ``task`` label values: the first ``cap`` task ids seen keep their own, later ones share
    :data:`OTHER_TASKS`; :meth:`forget` frees a slot.  Thread-safe."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._own: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, task_id: str) -> str:
        if task_id in self._own:  # the hot path: a set lookup, no lock
            return task_id
        with self._lock:
            if task_id in self._own or len(self._own) < self.cap:
                self._own.add(task_id)
                return task_id
        return OTHER_TASKS

    def forget(self, task_id: str) -> bool:
        """Whether ``task_id`` had its own label (its series must go)."""
        with self._lock:
            if task_id in self._own:
                self._own.discard(task_id)
                return True
            return False

    def __len__(self) -> int:
        return len(self._own)

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)


def _standard_registry() -> CollectorRegistry:
    r = CollectorRegistry()
    ProcessCollector(registry=r)
    GCCollector(registry=r)
    PlatformCollector(registry=r)
    return r


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, max_task_labels: int = 100) -> None:
        self.registry = r = registry or _standard_registry()
        self.task_label = TaskLabels(max_task_labels)
        self.requests = Counter("nettailor_requests", "Inference requests per task and outcome",
                                ["task", "endpoint", "outcome"], registry=r)
        self.latency = Histogram("nettailor_request_latency_seconds", "Server-side latency of successful "
                                 "inference requests, per task", ["task", "endpoint"], buckets=_LATENCY, registry=r)
        self.cache_hits = Counter("nettailor_cache_hits", "Pack cache hits", registry=r)
        self.cache_misses = Counter("nettailor_cache_misses", "Pack cache misses", registry=r)
        self.cache_evictions = Counter("nettailor_cache_evictions", "Pack cache evictions by reason",
                                       ["reason"], registry=r)
        self.cache_bytes = Gauge("nettailor_cache_bytes", "Device bytes held by cached and in-use task tensors",
                                 registry=r)
        self.cache_entries = Gauge("nettailor_cache_entries", "Tasks in the pack cache", registry=r)
        self.pack_load = Histogram("nettailor_pack_load_seconds", "Time to load a task on a cache miss, by "
                                   "source: 'store' (fetch, verify, fold) or 'spill' (mapped back from the spill "
                                   "tier, server.spill)", ["source"], buckets=_LATENCY, registry=r)
        self.pack_failures = Counter("nettailor_pack_load_failures", "Pack loads that failed, by code",
                                     ["code"], registry=r)
        self.integrity_failures = Counter("nettailor_integrity_failures", "Stored bytes that failed their SHA-256 "
                                          "check, by kind (pack, backbone)", ["kind"], registry=r)
        self.queue_depth = Gauge("nettailor_queue_depth", "Samples waiting for the executor", registry=r)
        self.overloaded = Counter("nettailor_overloaded", "Requests refused because the queue was full",
                                  registry=r)
        self.batch_size = Histogram("nettailor_batch_size", "Samples per executor call", buckets=_BATCH,
                                    registry=r)
        self.batch_samples = Counter("nettailor_batch_samples", "Samples run by the executor", registry=r)
        self.batch_mixed = Counter("nettailor_batch_mixed_samples", "Samples that shared an executor call with "
                                   "another task's samples", registry=r)
        self._samples = self._mixed = 0
        self.batch_mixed_share = Gauge("nettailor_batch_mixed_share", "Share of samples so far that ran in a "
                                       "batch with other tasks", registry=r)

    def observe_batch(self, size: int, mixed: bool) -> None:
        self.batch_size.observe(size)
        self.batch_samples.inc(size)
        if mixed:
            self.batch_mixed.inc(size)
        # Called from the executor's one worker thread only, so plain ints are safe.
        self._samples += size
        self._mixed += size if mixed else 0
        self.batch_mixed_share.set(self._mixed / self._samples)

    def forget_task(self, task_id: str) -> None:
        """Drop a deleted task's per-task series (and free its label slot)."""
        if self.task_label.forget(task_id):
            for metric in (self.requests, self.latency):
                metric.remove_by_labels({"task": task_id})

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""/metrics carries the standard process and GC series, in each app's own registry."""

from __future__ import annotations

from .conftest import image_bytes


def _names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_process_and_gc_collectors_in_every_apps_own_registry(serve, store, make_pack) -> None:
    store.register("digits", make_pack("digits").to_bytes())
    with serve() as a, serve() as b:  # two apps in one process: no duplicate-registration error
        assert a.post("/v1/tasks/digits/predict", content=image_bytes()).status_code == 200
        ta, tb = a.get("/metrics").text, b.get("/metrics").text
    for text in (ta, tb):
        names = _names(text)
        assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                "python_gc_objects_collected_total", "python_gc_collections_total", "python_info"} <= names
    assert 'nettailor_requests_total{endpoint="predict",outcome="ok",task="digits"} 1.0' in ta
    assert "nettailor_requests_total{" not in tb  # the registries stay separate

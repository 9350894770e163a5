"""/metrics: the standard process and GC series in each app's own registry; per-task series stay bounded
whatever the number of tasks, and a deleted task's series go."""

from __future__ import annotations

import time

from server.metrics import OTHER_TASKS, Metrics

from .conftest import AUTH, image_bytes


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


def _series(m: Metrics, name: str) -> set[str]:
    tasks = set()
    for family in m.registry.collect():
        if family.name == name:
            tasks |= {s.labels["task"] for s in family.samples if "task" in s.labels}
    return tasks


def test_cardinality_stays_bounded_after_1000_task_ids() -> None:
    m = Metrics(max_task_labels=50)
    for i in range(1000):
        label = m.task_label(f"task-{i:04d}")
        m.requests.labels(label, "predict", "ok").inc()
        m.latency.labels(label, "predict").observe(0.01)
    for name in ("nettailor_requests", "nettailor_request_latency_seconds"):
        tasks = _series(m, name)
        assert len(tasks) == 51 and OTHER_TASKS in tasks
    total = sum(s.value for f in m.registry.collect() if f.name == "nettailor_requests" for s in f.samples
                if s.name == "nettailor_requests_total")
    assert total == 1000  # nothing is lost: the tasks past the cap are counted under "other"


def test_a_forgotten_task_loses_its_series_and_frees_its_slot() -> None:
    m = Metrics(max_task_labels=2)
    for tid in ("a", "b", "c"):
        m.requests.labels(m.task_label(tid), "predict", "ok").inc()
    assert _series(m, "nettailor_requests") == {"a", "b", OTHER_TASKS}
    m.forget_task("a")
    assert _series(m, "nettailor_requests") == {"b", OTHER_TASKS}
    assert m.task_label("d") == "d" and m.task_label("e") == OTHER_TASKS


def test_deleting_a_task_over_http_removes_its_series(serve, store, make_pack) -> None:
    store.register("gone", make_pack("gone").to_bytes())
    store.register("kept", make_pack("kept", seed=1).to_bytes())
    with serve() as client:
        for tid in ("gone", "kept"):
            assert client.post(f"/v1/tasks/{tid}/predict", content=image_bytes()).status_code == 200
        text = client.get("/metrics").text
        assert 'task="gone"' in text and 'task="kept"' in text
        assert client.delete("/v1/tasks/gone", headers=AUTH).status_code in (200, 204)
        for _ in range(100):  # the store's event thread delivers the delete
            text = client.get("/metrics").text
            if 'task="gone"' not in text:
                break
            time.sleep(0.05)
        assert 'task="gone"' not in text and 'task="kept"' in text

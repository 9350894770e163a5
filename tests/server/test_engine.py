"""server.engine: the executor in its own process answers exactly as the in-process one, bounds the
tasks it holds, and survives its own death."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from server.engine import ProcessExecutor
from server.executor import Executor, PreparedTask


@pytest.fixture
def tasks(make_pack, backbone) -> list[PreparedTask]:  # type: ignore[no-untyped-def]
    return [PreparedTask.from_pack(make_pack(f"t{i}", num_classes=3 + i, seed=i), backbone, version=1)
            for i in range(3)]


@pytest.fixture
def engine(backbone):  # type: ignore[no-untyped-def]
    ex = ProcessExecutor(backbone, capacity_bytes=1)  # a budget of one task at a time: eviction every batch
    try:
        yield ex
    finally:
        ex.close()


def _frames(tasks: list[PreparedTask]) -> list:
    torch.manual_seed(0)
    grey = torch.randn(1, 32, 32).expand(3, -1, -1)  # a grey frame, as Preprocess leaves it (a stride-0 view)
    return [(torch.randn(3, 32, 32), [tasks[0]]), (grey, [tasks[1], tasks[2]]), (torch.randn(3, 32, 32), tasks)]


def test_the_process_answers_as_the_executor(engine, backbone, tasks) -> None:  # type: ignore[no-untyped-def]
    frames = _frames(tasks)
    want = Executor(backbone).run_frames(frames)
    for _ in range(2):  # the second time, the child already holds (some of) the tasks
        got = engine.run_frames(frames)
        assert [[o.shape for o in row] for row in got] == [[o.shape for o in row] for row in want]
        for g_row, w_row in zip(got, want):
            for g, w in zip(g_row, w_row):
                assert torch.allclose(g, w, atol=1e-5)
    # Evicted tasks are sent again when next used: the answers stay right with a budget of one task.
    for t in tasks:
        (out,) = engine.run_frames([(frames[0][0], [t])])
        (ref,) = Executor(backbone).run_frames([(frames[0][0], [t])])
        assert torch.allclose(out[0], ref[0], atol=1e-5)
    assert len(engine._held) <= 1 + 1  # the budget, plus the task of the batch in hand


def test_tasks_the_server_let_go_leave_the_process(backbone, tasks) -> None:  # type: ignore[no-untyped-def]
    import gc

    ex = ProcessExecutor(backbone)  # a budget large enough for everything
    try:
        frames = _frames(tasks)
        ex.run_frames(frames)
        assert len(ex._held) == 3
        uid = tasks[0].uid
        del frames, tasks[0]  # the server's last reference to that task goes (a delete, an eviction)
        gc.collect()
        ex.run_frames([(torch.randn(3, 32, 32), [tasks[0]])])
        assert uid not in ex._held and len(ex._held) == 2
    finally:
        ex.close()


def test_a_dead_process_is_replaced_and_the_batch_retried(engine, tasks) -> None:  # type: ignore[no-untyped-def]
    frames = _frames(tasks)
    want = engine.run_frames(frames)
    old = engine.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    got = engine.run_frames(frames)  # noticed, a new child started, the batch run there
    assert engine.pid not in (None, old) and engine.restarts == 1
    assert all(torch.allclose(g, w) for gr, wr in zip(got, want) for g, w in zip(gr, wr))


def test_the_server_answers_through_the_process(serve, store, make_pack, backbone) -> None:  # type: ignore[no-untyped-def]
    """NETTAILOR_EXECUTOR_PROCESS=1 end to end: the same probabilities as the reference network."""
    from .conftest import image_bytes
    from .test_api import _reference_probs

    pack = make_pack("digits", num_classes=4, seed=3)
    store.register("digits", pack.to_bytes())
    img = image_bytes()
    with serve(executor_process=True) as client:
        assert client.app.state.batcher.executor.pid is not None
        r = client.post("/v1/tasks/digits/predict?top_k=4", content=img)
        assert r.status_code == 200, r.text
        ref = _reference_probs(pack, backbone, img)
        assert all(abs(p["prob"] - float(ref[p["index"]])) < 1e-4 for p in r.json()["predictions"])
        engine = client.app.state.batcher.executor
    assert engine.pid is None  # stopped with the app


def test_a_gpu_backbone_is_refused(backbone) -> None:  # type: ignore[no-untyped-def]
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match="CPU serving"):
        ProcessExecutor(backbone.to("cuda"))

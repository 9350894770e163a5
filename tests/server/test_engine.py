"""server.engine: the executor in its own process answers exactly as the in-process one, bounds the
tasks it holds, and survives its own death."""

from __future__ import annotations

import os
import pickle
import signal
import threading

import pytest
import torch

from blockstore import RedisStore, StoreUnavailable
from server.cache import PackCache
from server.engine import EngineError, ProcessExecutor, ceiling_for
from server.engine_child import recv, send
from server.errors import TaskUnavailable
from server.executor import Executor, PreparedTask
from server.loading import LoadFailure
from server.metrics import Metrics
from server.pipes import Lanes, Pipe
from tests.conftest import flip_stored_byte


@pytest.fixture
def tasks(make_pack, backbone) -> list[PreparedTask]:  # type: ignore[no-untyped-def]
    return [PreparedTask.from_pack(make_pack(f"t{i}", num_classes=3 + i, seed=i), backbone, version=1)
            for i in range(3)]


@pytest.fixture
def engine(backbone):  # type: ignore[no-untyped-def]
    ex = ProcessExecutor(backbone, ceiling_bytes=1)  # a ceiling of one task at a time: eviction every batch
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
    # Evicted tasks are sent again when next used: the answers stay right with a ceiling of one task.
    for t in tasks:
        (out,) = engine.run_frames([(frames[0][0], [t])])
        (ref,) = Executor(backbone).run_frames([(frames[0][0], [t])])
        assert torch.allclose(out[0], ref[0], atol=1e-5)
    assert len(engine._held) <= 1 + 1  # the ceiling, plus the task of the batch in hand


def test_tasks_the_server_let_go_leave_the_process(backbone, tasks) -> None:  # type: ignore[no-untyped-def]
    import gc

    ex = ProcessExecutor(backbone)  # a ceiling large enough for everything
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


@pytest.mark.parametrize(("lanes", "depth"), [(2, 1), (1, 2)], ids=["two-lanes", "two-in-one-pipe"])
def test_lanes_side_by_side_answer_as_the_executor(backbone, tasks, lanes: int, depth: int) -> None:  # type: ignore[no-untyped-def]
    """Batches on two lanes at once, or two at once on one pipe, with a ceiling of one task (tasks sent
    and dropped with every batch, their changes numbered in the server's order), and a child killed in
    the middle: every answer is the in-process executor's."""
    ex = ProcessExecutor(backbone, ceiling_bytes=1, lanes=lanes, depth=depth)
    ref = Executor(backbone)
    singles = [[(torch.randn(3, 32, 32), [t])] for t in tasks]
    plans = [_frames(tasks), *singles, [singles[0][0], singles[2][0]]]
    want = [ref.run_frames(f) for f in plans]
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for i in range(12):
                j = (k + i) % len(plans)
                got = ex.run_frames(plans[j])
                assert all(torch.allclose(g, w, atol=1e-5) for gr, wr in zip(got, want[j]) for g, w in zip(gr, wr))
        except BaseException as e:  # reported below
            errors.append(e)

    try:
        workers = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for w in workers:
            w.start()
        old = ex.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        for w in workers:
            w.join(300)
        assert not errors, errors
        assert ex.pid not in (None, old) and ex.restarts == 1
    finally:
        ex.close()


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


def test_a_store_pickles_as_a_second_handle_on_the_same_data(any_store, make_pack) -> None:  # type: ignore[no-untyped-def]
    twin = pickle.loads(pickle.dumps(any_store))  # what the executor process opens
    rec, _ = any_store.register("t1", make_pack("t1").to_bytes())
    assert type(twin) is type(any_store) and twin.get_record("t1") == rec
    assert twin.get_pack_bytes(rec.sha256) == any_store.get_pack_bytes(rec.sha256)


def test_cold_loads_run_in_the_process_and_the_server_keeps_descriptions(any_store, backbone,  # type: ignore[no-untyped-def]
                                                                        make_pack) -> None:
    packs = [make_pack(f"t{i}", num_classes=3 + i, seed=i) for i in range(3)]
    shas = [any_store.register(p.task_id, p.to_bytes())[0].sha256 for p in packs]
    local = [PreparedTask.from_pack(p, backbone, version=1) for p in packs]
    ex = ProcessExecutor(backbone, store=any_store)
    try:
        descs = [ex.load(p.task_id, 1, sha) for p, sha in zip(packs, shas)]
        for d, t in zip(descs, local):
            assert not d.resident and sum(x.numel() for x in d.tensors()) == 0  # no tensors in the server
            assert (d.nbytes, d.num_classes, d.labels, d.sha256) == (t.nbytes, t.num_classes, t.labels, t.sha256)
        want = Executor(backbone).run_frames(_frames(local))

        def check() -> None:
            got = ex.run_frames(_frames(descs))
            assert all(torch.allclose(g, w, atol=1e-5) for gr, wr in zip(got, want) for g, w in zip(gr, wr))

        check()
        os.kill(ex.pid, signal.SIGKILL)  # type: ignore[arg-type]
        check()  # the new child loads the tasks it lacks from the store, with the batch
        assert ex.restarts == 1
    finally:
        ex.close()


def test_a_corrupt_pack_fails_its_load_in_the_process(any_store, backbone, make_pack) -> None:  # type: ignore[no-untyped-def]
    """The digest is checked where the bytes are read (the child); the server counts and answers it."""
    good, _ = any_store.register("good", make_pack("good", seed=1).to_bytes())
    bad, _ = any_store.register("bad", make_pack("bad", seed=2).to_bytes())
    flip_stored_byte(any_store, bad.sha256, len(any_store.get_pack_bytes(bad.sha256)) - 3)
    ex = ProcessExecutor(backbone, store=any_store)
    metrics = Metrics()
    cache = PackCache(any_store, backbone, 1 << 30, metrics, prepare=ex.load)
    try:
        with pytest.raises(LoadFailure) as e:
            ex.load("bad", 1, bad.sha256)
        assert e.value.integrity and "hash" in e.value.detail
        with pytest.raises(TaskUnavailable, match="cannot be served"):
            cache.lease("bad")
        assert metrics.integrity_failures.labels("pack")._value.get() == 1
        with cache.lease("good") as lease:  # the other task is unaffected
            assert lease.task.sha256 == good.sha256 and not lease.task.resident
            (row,) = ex.run_frames([(torch.randn(3, 32, 32), [lease.task])])
            assert row[0].shape == (3,)
    finally:
        cache.close()
        ex.close()


def test_a_load_meets_a_dead_process_or_a_store_that_is_down(store, backbone, make_pack) -> None:  # type: ignore[no-untyped-def]
    rec, _ = store.register("t1", make_pack("t1").to_bytes())
    ex = ProcessExecutor(backbone, store=store)
    try:
        old = ex.pid
        os.kill(old, signal.SIGKILL)  # type: ignore[arg-type]
        with pytest.raises(EngineError, match="died loading"):
            ex.load("t1", 1, rec.sha256)
        assert ex.pid not in (None, old) and ex.restarts == 1  # replaced at once, not at the next batch
        assert ex.load("t1", 1, rec.sha256).task_id == "t1"
    finally:
        ex.close()
    down = ProcessExecutor(backbone, store=RedisStore("redis://127.0.0.1:1/0", connect_timeout=0.2))
    try:  # the store's own error crosses the pipe as itself (503 store_unavailable), not as a crash
        with pytest.raises(StoreUnavailable):
            down.load("t1", 1, rec.sha256)
        assert down.restarts == 0
    finally:
        down.close()


def test_the_pipes_are_granted_in_arrival_order() -> None:
    """Every waiter gets a pipe, in the order they came, from the holder that releases one."""
    import time

    lanes, order = Lanes(2), []
    first, second = lanes.acquire(), lanes.acquire()
    threads = []
    for i in range(4):
        def take(i: int = i) -> None:
            with lanes.one() as lane:
                order.append((i, lane))
        threads.append(threading.Thread(target=take))
        threads[-1].start()
        while len(lanes._waiters) < i + 1:  # each waits before the next arrives
            time.sleep(0.001)
    lanes.release(second)  # handed along the waiters, one after another
    for t in threads:
        t.join(5)
    assert order == [(0, second), (1, second), (2, second), (3, second)]
    lanes.release(first)
    assert sorted(lanes._free) == [0, 1] and not lanes._waiters


def test_a_pipe_hands_each_answer_to_its_own_caller() -> None:
    """Up to ``depth`` calls in flight on one pipe: the far end answers in the order it read, and each
    caller gets the answer to its own message; when the far end goes, every queued caller raises."""
    import multiprocessing as mp
    import time

    near, far = mp.Pipe()
    pipe = Pipe(near)

    def echo() -> None:  # a child that answers slowly, so that calls queue up behind each other
        while True:
            msg = recv(far)
            if msg == "die":  # gone without answering
                far.close()
                return
            time.sleep(0.01)
            send(far, ("answer", msg))

    threading.Thread(target=echo, daemon=True).start()
    got: dict[int, object] = {}
    callers = [threading.Thread(target=lambda k=k: got.__setitem__(k, pipe.call(lambda: ("msg", k))))
               for k in range(8)]
    for c in callers:
        c.start()
    for c in callers:
        c.join(10)
    assert got == {k: ("answer", ("msg", k)) for k in range(8)}

    # The child dies on one message with another queued behind it: both callers fail, neither hangs.
    errors: list[BaseException] = []

    def doomed(msg: object) -> None:
        try:
            pipe.call(lambda: msg)
        except (EOFError, OSError) as e:
            errors.append(e)

    late = [threading.Thread(target=doomed, args=("die",)), threading.Thread(target=doomed, args=(("msg", 9),))]
    late[0].start()
    while pipe._sent < 9:
        time.sleep(0.001)
    late[1].start()
    for c in late:
        c.join(10)
    assert len(errors) == 2 and not any(c.is_alive() for c in late)


def test_a_depth_below_one_is_refused(backbone) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="depth must be at least 1"):
        ProcessExecutor(backbone, depth=0)


def test_a_gpu_backbone_is_refused(backbone) -> None:  # type: ignore[no-untyped-def]
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ValueError, match="CPU serving"):
        ProcessExecutor(backbone.to("cuda"))


def test_a_task_the_cache_keeps_is_never_reloaded_in_a_batch(store, backbone, make_pack) -> None:  # type: ignore[no-untyped-def]
    """A task served but not kept (admission) takes the process past the cache's budget for a while.
    The process must not drop the task the cache keeps to make room: its next hit would be loaded
    again, from the store, inside a batch."""
    packs = {tid: make_pack(tid, seed=i) for i, tid in enumerate("ab")}
    for tid, p in packs.items():
        store.register(tid, p.to_bytes())
    budget = int(1.5 * max(PreparedTask.from_pack(p, backbone, version=1).nbytes for p in packs.values()))
    ex = ProcessExecutor(backbone, store=store, ceiling_bytes=ceiling_for(budget))  # as server.runtime builds it
    cache = PackCache(store, backbone, budget, Metrics(), prepare=ex.load)
    sent: list = []
    sync = ex._sync
    ex._sync = lambda frames: (r := sync(frames), sent.extend(r[1]))[0]  # type: ignore[method-assign]
    x = torch.randn(3, 32, 32)

    def ask(tid: str) -> None:
        with cache.lease(tid) as lease:
            ex.run_frames([(x, [lease.task])])

    try:
        for _ in range(3):
            ask("a")
        ask("b")  # asked for less often than "a": served, not kept
        ask("a")
        assert cache.cached_tasks() == ["a"] and cache.loads == 2
        assert sent == []  # both loads ran in the process's load call; no batch loaded anything
    finally:
        cache.close()
        ex.close()


def test_a_load_runs_beside_the_batch_in_flight(store, backbone, make_pack) -> None:  # type: ignore[no-untyped-def]
    """Loads have their own pipe: holding the batch pipe (as a batch in flight does) does not stop one."""
    rec, _ = store.register("t1", make_pack("t1").to_bytes())
    ex = ProcessExecutor(backbone, store=store)
    done: list[PreparedTask] = []
    try:
        with ex._lanes.one():  # a batch in flight
            worker = threading.Thread(target=lambda: done.append(ex.load("t1", 1, rec.sha256)), daemon=True)
            worker.start()
            worker.join(120)  # liveness, not a timing: with one pipe for both, this load waited forever
        assert [t.task_id for t in done] == ["t1"]
        (row,) = ex.run_frames([(torch.randn(3, 32, 32), [done[0]])])  # held by the child: no reload
        assert row[0].shape == (3,)
    finally:
        ex.close()

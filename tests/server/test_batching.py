"""Micro-batching: samples of different tasks share one executor call, results go back to their requests,
and interleaved requests for several tasks each get their own task's logits (hot-swap correctness)."""

from __future__ import annotations

import asyncio
import io
import threading

import httpx
import pytest
import torch
from PIL import Image

from server.batching import Batcher
from server.errors import Overloaded
from server.executor import Executor, PreparedTask
from server.prepared import reference_net

from .conftest import image_bytes


class _Recording(Executor):
    def __init__(self, backbone) -> None:  # type: ignore[no-untyped-def]
        super().__init__(backbone)
        self.calls: list[list[str]] = []

    def run_frames(self, frames):  # type: ignore[no-untyped-def]
        self.calls.append([t.task_id for _, ts in frames for t in ts])
        return super().run_frames(frames)


@pytest.fixture
def packs(make_pack) -> list:  # type: ignore[no-untyped-def]
    return [make_pack(t, num_classes=3 + i, seed=i) for i, t in enumerate(["a", "b", "c"])]


@pytest.fixture
def prepared(packs, backbone) -> list[PreparedTask]:  # type: ignore[no-untyped-def]
    return [PreparedTask.from_pack(p, backbone, version=1) for p in packs]


def _run_and_compare(batcher: Batcher, items: list, refs: dict) -> None:
    """Run every (task, image) item as its own request, concurrently; each answer must equal its task's
    reference net run alone."""
    async def go():  # type: ignore[no-untyped-def]
        return await asyncio.gather(*[batcher.run([it]) for it in items])

    try:
        out = asyncio.run(go())
    finally:
        batcher.close()
    for (task, x), (res,) in zip(items, out):
        with torch.inference_mode():
            ref = refs[task.task_id](x[None])[0]
        assert res.logits.shape == ref.shape and torch.allclose(res.logits, ref, atol=1e-4)


def test_mixed_tasks_share_an_executor_call(backbone, packs, prepared) -> None:
    refs = {p.task_id: reference_net(p, backbone) for p in packs}
    ex = _Recording(backbone)
    batcher = Batcher(ex, max_batch=16, window_s=0.05, max_queue=64)
    xs = [torch.randn(3, 32, 32) for _ in range(9)]
    items = [(prepared[i % 3], x) for i, x in enumerate(xs)]
    _run_and_compare(batcher, items, refs)
    assert len(ex.calls) < 9 and any(len(set(c)) > 1 for c in ex.calls)
    assert batcher.metrics.batch_mixed_share._value.get() > 0


def test_max_batch_and_queue_bound(backbone, prepared) -> None:
    ex = _Recording(backbone)
    batcher = Batcher(ex, max_batch=4, window_s=0.05, max_queue=10)

    async def go():  # type: ignore[no-untyped-def]
        with pytest.raises(Overloaded) as e:
            await batcher.run([(prepared[0], torch.randn(3, 32, 32))] * 11)
        assert e.value.retry_after >= 1
        return await batcher.run([(prepared[i % 3], torch.randn(3, 32, 32)) for i in range(10)])

    try:
        out = asyncio.run(go())
    finally:
        batcher.close()
    assert len(out) == 10 and max(len(c) for c in ex.calls) <= 4


def test_a_failing_sample_fails_alone(backbone, prepared) -> None:
    class Picky(Executor):
        def run_frames(self, frames):  # type: ignore[no-untyped-def]
            if any(x.shape[-1] == 7 for x, _ in frames):
                raise RuntimeError("boom")
            return super().run_frames(frames)

    batcher = Batcher(Picky(backbone), max_batch=8, window_s=0.05, max_queue=16)

    async def go():  # type: ignore[no-untyped-def]
        return await asyncio.gather(batcher.run([(prepared[0], torch.randn(3, 32, 32))]),
                                    batcher.run([(prepared[1], torch.randn(3, 7, 7))]),
                                    batcher.run([(prepared[2], torch.randn(3, 32, 32))]), return_exceptions=True)

    try:
        a, b, c = asyncio.run(go())
    finally:
        batcher.close()
    assert isinstance(b, RuntimeError) and not isinstance(a, Exception) and not isinstance(c, Exception)


def test_interleaved_requests_get_their_own_tasks_logits(client, store, make_pack, backbone) -> None:
    """Hot-swap correctness over HTTP: 3 tasks, interleaved and concurrent, each equals its TailoredNet alone."""
    packs = {t: make_pack(t, num_classes=4, seed=10 + i) for i, t in enumerate(["a", "b", "c"])}
    for t, p in packs.items():
        store.register(t, p.to_bytes())
    nets = {t: p.build(backbone) for t, p in packs.items()}
    imgs = [image_bytes(seed=i, mode="L") for i in range(4)]
    order = [(t, i) for i in range(4) for t in ("a", "b", "c")] * 2

    async def fire():  # type: ignore[no-untyped-def]
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await asyncio.gather(*[ac.post(f"/v1/tasks/{t}/predict?top_k=4", content=imgs[i])
                                          for t, i in order])

    responses = client.portal.call(fire)
    for (t, i), r in zip(order, responses):
        assert r.status_code == 200 and r.json()["task_id"] == t
        pre = packs[t].preprocess
        x = pre.normalize(pre.to_uint8(Image.open(io.BytesIO(imgs[i])))[None])
        with torch.inference_mode():
            ref = torch.softmax(nets[t](x)[0], 0)
        got = torch.zeros(4)
        for lab in r.json()["predictions"]:
            got[lab["index"]] = lab["prob"]
        assert torch.allclose(got, ref, atol=1e-5), (t, i)
    assert "nettailor_batch_mixed_samples_total" in client.get("/metrics").text


def test_multi_task_frames_and_single_samples_share_one_batch(backbone, packs, prepared) -> None:
    """Multi-task frames and single-task samples that arrive together run in ONE executor call: the
    stem convolves each frame once, and every answer equals its task run alone."""
    refs = {p.task_id: reference_net(p, backbone) for p in packs}
    ex = _Recording(backbone)
    xs = [torch.randn(3, 32, 32) for _ in range(3)]
    requests = [(xs[0], prepared), (xs[1], prepared[:1]), (xs[2], prepared[1:]), (xs[1], prepared[2:])]
    rows = sum(len(ts) for _, ts in requests)
    # The batch closes as soon as it holds every row: the long window only guards a slow machine.
    batcher = Batcher(ex, max_batch=rows, window_s=5.0, max_queue=64)
    stem_rows: list[int] = []
    hook = backbone.net.conv1.register_forward_hook(lambda _m, _i, o: stem_rows.append(o.shape[0]))

    async def go():  # type: ignore[no-untyped-def]
        return await asyncio.gather(batcher.run_multi(requests[0][0], requests[0][1]),
                                    batcher.run([(prepared[0], xs[1])]),
                                    batcher.run_multi(requests[2][0], requests[2][1]),
                                    batcher.run([(prepared[2], xs[1])]))

    try:
        out = asyncio.run(go())
    finally:
        hook.remove()
        batcher.close()
    assert len(ex.calls) == 1 and len(ex.calls[0]) == rows
    assert stem_rows == [len(requests)]
    for (x, tasks), results in zip(requests, out):
        assert len(results) == len(tasks)
        for task, res in zip(tasks, results):
            with torch.inference_mode():
                ref = refs[task.task_id](x[None])[0]
            assert res.batch_size == rows and torch.allclose(res.logits, ref, atol=1e-4)


def test_several_workers_answer_every_request_with_its_own_task(backbone, packs, prepared) -> None:
    """NETTAILOR_EXECUTOR_WORKERS > 1: batches run side by side in two threads, each request still
    gets its own task's logits, and close() stops every worker."""
    refs = {p.task_id: reference_net(p, backbone) for p in packs}
    ex = _Recording(backbone)
    batcher = Batcher(ex, max_batch=2, window_s=0.001, max_queue=64, workers=2)
    xs = [torch.randn(3, 32, 32) for _ in range(12)]
    items = [(prepared[i % 3], x) for i, x in enumerate(xs)]
    _run_and_compare(batcher, items, refs)
    assert len(ex.calls) >= 6  # at most two rows per batch
    assert not any(t.is_alive() for t in batcher._threads)
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(ex, workers=0)


class _Gated:
    """An executor whose first batch waits for ``gate``: a batch in flight for as long as a test needs."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # rows per call
        self.gate = threading.Event()

    def run_frames(self, frames):  # type: ignore[no-untyped-def]
        self.calls.append(sum(len(ts) for _, ts in frames))
        if len(self.calls) == 1:
            self.gate.wait(30)
        return [[torch.zeros(3)] * len(ts) for _, ts in frames]

    def close(self) -> None:
        pass


def test_a_batch_runs_beside_another_only_with_half_a_batch_of_rows(prepared) -> None:
    """With two workers, a batch that would run beside one in flight waits past the window until it
    holds half of max_batch rows; a lone row runs once the batch in flight is done."""
    ex = _Gated()
    batcher = Batcher(ex, max_batch=4, window_s=0.001, max_queue=64, workers=2)  # type: ignore[arg-type]
    x = torch.randn(3, 32, 32)

    async def until(cond) -> None:  # type: ignore[no-untyped-def]
        for _ in range(3000):
            if cond():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("timed out")

    async def go() -> None:
        first = asyncio.ensure_future(batcher.run([(prepared[0], x)]))
        await until(lambda: len(ex.calls) == 1)  # in flight, held by the gate
        lone = asyncio.ensure_future(batcher.run([(prepared[1], x)]))
        await asyncio.sleep(0.1)  # a hundred windows
        assert ex.calls == [1]  # one row does not run beside the batch in flight
        second = asyncio.ensure_future(batcher.run([(prepared[2], x)]))
        await until(lambda: len(ex.calls) == 2)
        assert ex.calls == [1, 2]  # two rows, half of max_batch: they run beside it
        third = asyncio.ensure_future(batcher.run([(prepared[0], x)]))
        await asyncio.sleep(0.1)
        assert ex.calls == [1, 2]  # the first batch is still in flight: a lone row waits again
        ex.gate.set()
        await asyncio.wait_for(asyncio.gather(first, lone, second, third), 30)
        assert ex.calls == [1, 2, 1]  # once the first was done, the lone row ran

    try:
        asyncio.run(go())
    finally:
        batcher.close()

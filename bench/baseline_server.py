"""The baseline a team builds without NetTailor: one full fine-tuned ResNet per task.

A small FastAPI app with the same predict endpoint as the NetTailor server.  Each task's full model
(safetensors bytes of a whole ResNet) lives in Redis under ``<prefix>model:<task_id>``; the server
keeps an LRU of ``m`` models in memory and loads a model from Redis on a miss.  Like TorchServe or
Triton, it batches requests per model (same collection window and batch cap as the NetTailor
server), but it cannot batch requests for different models together.

Run:  python bench/baseline_server.py --redis redis://127.0.0.1:6379/0 --prefix ntbase: --m 4 --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections import OrderedDict
from pathlib import Path

import redis
import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blockstore import Backbone, Preprocess

PRE = Preprocess(size=32)


class ModelLRU:
    def __init__(self, client: redis.Redis, prefix: str, m: int) -> None:
        self.client, self.prefix, self.m = client, prefix, m
        self.models: OrderedDict[str, Backbone] = OrderedDict()
        self.loads = 0

    def get(self, task_id: str) -> Backbone:
        model = self.models.get(task_id)
        if model is not None:
            self.models.move_to_end(task_id)
            return model
        data = self.client.get(f"{self.prefix}model:{task_id}")
        if data is None:
            raise KeyError(task_id)
        model = Backbone.from_bytes(data).eval()  # type: ignore[arg-type]
        self.loads += 1
        self.models[task_id] = model
        while len(self.models) > self.m:
            self.models.popitem(last=False)
        return model


def create_app(redis_url: str, prefix: str, m: int, window_ms: float, max_batch: int) -> FastAPI:
    app = FastAPI(title="per-task ResNet baseline")
    lru = ModelLRU(redis.Redis.from_url(redis_url), prefix, m)
    queue: asyncio.Queue = asyncio.Queue()

    def run_batch(batch: list) -> list[torch.Tensor]:
        """Group by model; each model runs its own samples (no cross-model batching)."""
        out: list = [None] * len(batch)
        groups: dict[str, list[int]] = {}
        for i, (task_id, _, _) in enumerate(batch):
            groups.setdefault(task_id, []).append(i)
        with torch.inference_mode():
            for task_id, rows in groups.items():
                try:
                    model = lru.get(task_id)
                except KeyError:
                    for i in rows:
                        out[i] = None
                    continue
                logits = model(torch.stack([batch[i][1] for i in rows]))
                for j, i in enumerate(rows):
                    out[i] = logits[j]
        return out

    async def worker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            batch = [first]
            deadline = loop.time() + window_ms / 1000
            while len(batch) < max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            results = await asyncio.to_thread(run_batch, batch)
            for (_, _, fut), res in zip(batch, results):
                if not fut.done():
                    fut.set_result(res)

    @app.on_event("startup")
    async def start() -> None:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        app.state.worker = asyncio.create_task(worker())

    @app.post("/v1/tasks/{task_id}/predict")
    async def predict(task_id: str, request: Request) -> dict:
        t0 = time.perf_counter()
        body = await request.body()
        img = Image.open(io.BytesIO(body))
        x = PRE.normalize(PRE.to_uint8(img)[None])[0]
        fut = asyncio.get_running_loop().create_future()
        await queue.put((task_id, x, fut))
        logits = await fut
        if logits is None:
            raise HTTPException(404, "unknown task")
        prob = torch.softmax(logits, 0)
        top = torch.topk(prob, min(5, prob.numel()))
        return {"task_id": task_id, "predictions": [{"index": int(i), "prob": float(p)} for p, i in zip(*top)],
                "timings_ms": {"total": (time.perf_counter() - t0) * 1000}}

    @app.get("/stats")
    async def stats() -> dict:
        return {"loads": lru.loads, "resident_models": len(lru.models)}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL holding the models")
    ap.add_argument("--prefix", default="ntbase:", help="key prefix of the models")
    ap.add_argument("--m", type=int, default=4, help="models kept in memory (LRU)")
    ap.add_argument("--window-ms", type=float, default=2.0, help="batch collection window")
    ap.add_argument("--max-batch", type=int, default=32, help="largest batch")
    ap.add_argument("--port", type=int, default=8100, help="port on 127.0.0.1")
    args = ap.parse_args()
    app = create_app(args.redis, args.prefix, args.m, args.window_ms, args.max_batch)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""Dynamic batching: images from concurrent requests share one model call.

A single model call on 16 images costs far less than 16 calls on one image (one pass over
the weights, vectorised kernels), so under concurrent load the server waits a few
milliseconds after the first queued image for more to arrive. Written by hand because the
serving frameworks that do this (Triton, TorchServe, Ray Serve) are whole servers, not
libraries a FastAPI app can use; the logic is one asyncio loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0


class Batcher:
    """Queue single preprocessed images; one background task runs them in batches.

    ``run_batch`` maps a ``(n, 3, H, W)`` tensor to ``(n, C)`` probabilities. It runs in one
    dedicated thread, so the event loop keeps accepting requests while the model works and
    model calls never overlap (they would only compete for the same cores).
    ``max_batch=1`` turns batching off: every image is its own model call.
    """

    def __init__(self, run_batch: Callable[[torch.Tensor], np.ndarray], max_batch: int = 32,
                 max_wait_ms: float = 5.0):
        if max_batch < 1:
            raise ValueError(f"--max-batch {max_batch}: must be at least 1")
        if max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms {max_wait_ms}: must not be negative")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgcls-model")

    def start(self) -> None:
        """Start the batching task on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._serve_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def predict(self, images: list[torch.Tensor]) -> np.ndarray:
        """Probabilities for ``images`` (one row each), computed with whatever else is queued."""
        self.start()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures):
            self._queue.put_nowait((image, future))
        return np.stack(await asyncio.gather(*futures))

    async def run_exclusive(self, fn, *args):
        """Run ``fn(*args)`` on the model thread, between batches (e.g. Grad-CAM, whose hooks
        on the model must not see another request's forward pass)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _collect(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(image, future) for image, future in batch if not future.done()]  # skip cancelled requests
            if not live:
                continue
            try:
                stacked = torch.stack([image for image, _ in live])
                probs = await loop.run_in_executor(self._executor, self.run_batch, stacked)
            except Exception as err:  # noqa: BLE001 - a model failure fails these requests, not the server
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.stats.batches += 1
            self.stats.images += len(live)
            for (_, future), row in zip(live, probs):
                if not future.done():
                    future.set_result(row)

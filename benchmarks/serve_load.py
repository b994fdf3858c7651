"""Bounded load test of ``imgcls serve`` on loopback: batching on vs off, in one run.

    .venv/bin/python benchmarks/serve_load.py                       # lite0 at 224, 2,000 requests, 16 concurrent
    .venv/bin/python benchmarks/serve_load.py --checkpoint runs/x --requests 500

Starts the real server (``imgcls serve`` in a subprocess, 127.0.0.1 and a free port only)
once with batching (``--max-batch 32``) and once without (``--max-batch 1``, the baseline),
sends the same fixed number of one-image multipart requests with a fixed number in flight,
and prints requests/s, p50/p99 latency, the server's mean batch and the error count. The run
ends by itself: a fixed request count, a per-request timeout, and the server is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from deploy_common import percentile, quick_checkpoint  # noqa: E402


def sample_jpegs(count: int = 8) -> list[bytes]:
    """A few distinct photo-sized JPEGs, so the server decodes and resizes real work."""
    images = []
    for seed in range(count):
        pixels = np.random.default_rng(seed).integers(0, 255, (375, 500, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "imgcls", "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
               "--max-batch", str(max_batch)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("server did not become healthy within 120 s")


async def load(port: int, images: list[bytes], requests: int, concurrency: int, timeout: float) -> dict:
    """``requests`` POSTs with ``concurrency`` in flight; latency of each, errors counted."""
    latencies: list[float] = []
    errors: list[str] = []
    next_request = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in next_request:
            files = {"files": (f"img{i}.jpg", images[i % len(images)], "image/jpeg")}
            started = time.perf_counter()
            try:
                reply = await http.post("/predict", files=files)
                if reply.status_code != 200:
                    errors.append(f"{reply.status_code}: {reply.text[:200]}")
            except httpx.HTTPError as err:
                errors.append(repr(err))
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout, limits=limits) as http:
        await http.post("/predict", files={"files": ("warm.jpg", images[0], "image/jpeg")})  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - started
        health = (await http.get("/health")).json()
    return {"requests_per_s": requests / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99), "errors": len(errors), "first_errors": errors[:3],
            "mean_batch": health.get("mean_batch")}


def measure(model: Path, max_batch: int, args: argparse.Namespace) -> dict:
    port = free_port()
    server = start_server(model, port, max_batch)
    try:
        return asyncio.run(load(port, sample_jpegs(), args.requests, args.concurrency, args.timeout))
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="checkpoint or .onnx to serve (default: a fresh lite0 head-only one)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before one request counts as failed")
    args = parser.parse_args()
    model = Path(args.checkpoint) if args.checkpoint else quick_checkpoint(Path(tempfile.mkdtemp()), args.model,
                                                                           args.image_size)
    rows = {}
    for name, max_batch in (("batching off (--max-batch 1, baseline)", 1), ("batching on (--max-batch 32)", 32)):
        rows[name] = measure(model, max_batch, args)
        print(f"  {name}: {rows[name]}", file=sys.stderr)
    base = rows["batching off (--max-batch 1, baseline)"]["requests_per_s"]
    print(f"\n{args.requests} requests, {args.concurrency} concurrent, one {args.image_size}-px-model image each, "
          f"loopback, {model.name}")
    print("| server | requests/s (x baseline) | p50 ms | p99 ms | mean batch | errors |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(f"| {name} | {r['requests_per_s']:.1f} ({r['requests_per_s'] / base:.2f}x) | {r['p50_ms']:.0f} "
              f"| {r['p99_ms']:.0f} | {r['mean_batch']} | {r['errors']} |")
    if any(r["errors"] for r in rows.values()):
        raise SystemExit("errors during the load test (see above)")


if __name__ == "__main__":
    main()

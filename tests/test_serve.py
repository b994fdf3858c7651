"""The prediction server through FastAPI's TestClient: every way in for good images, every
kind of bad input answered with a JSON 4xx (never a 500), API keys, and request batching."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
import torch
from deploy_support import exported, sample_image, trained_run  # noqa: F401 - fixtures
from fastapi.testclient import TestClient
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.deploy.batching import Batcher
from imgcls.deploy.serve import check_exposure, create_app, is_loopback
from imgcls.inference.unknown import UnknownRule

COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}


def _encoded(colour, fmt="PNG", size=(64, 48)) -> bytes:
    rng = np.random.default_rng(3)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` and holds one tiny compressed row: a bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def model(trained_run):
    return imgcls.load(trained_run.checkpoint, device="cpu")


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, max_body_mb=1, max_images=4, max_pixels=2_000_000)
    with TestClient(app) as test_client:
        yield test_client


def _labels(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [p["label"] for p in response.json()["predictions"]]


# --- good input ---------------------------------------------------------------------------

def test_multipart_many_images_match_the_python_api(client, model):
    files = [("file", (f"{name}.png", _encoded(rgb), "image/png")) for name, rgb in COLOURS.items()]
    response = client.post("/predict", files=files)
    assert _labels(response) == list(COLOURS)
    body = response.json()
    expected = model.predict_proba([Image.open(io.BytesIO(_encoded(rgb))) for rgb in COLOURS.values()])
    for prediction, probs in zip(body["predictions"], expected):
        assert prediction["probability"] == pytest.approx(probs.max(), abs=1e-5)
        assert [t["label"] for t in prediction["topk"]] == [model.classes[i] for i in np.argsort(-probs)]
        assert prediction["unknown"] is False
    assert [p["filename"] for p in body["predictions"]] == ["red.png", "green.png", "blue.png"]


def test_base64_json_raw_body_and_topk(client):
    red, blue = _encoded(COLOURS["red"], "JPEG"), _encoded(COLOURS["blue"], "WEBP")
    plain = base64.b64encode(red).decode()
    data_url = "data:image/webp;base64," + base64.b64encode(blue).decode()
    assert _labels(client.post("/predict", json={"images": [plain, data_url]})) == ["red", "blue"]
    assert _labels(client.post("/predict", json={"image": plain})) == ["red"]
    raw = client.post("/predict?topk=2", content=_encoded(COLOURS["green"], "BMP"),
                      headers={"content-type": "application/octet-stream"})
    assert _labels(raw) == ["green"] and len(raw.json()["predictions"][0]["topk"]) == 2


def test_the_bytes_decide_not_the_name_or_content_type(client):
    png = _encoded(COLOURS["green"], "PNG")
    response = client.post("/predict", files=[("upload", ("photo.gif", png, "image/jpeg"))])
    assert _labels(response) == ["green"]


def test_health_model_docs_and_page(client, model, trained_run):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["classes"] == model.classes and info["input_size"] == [3, 32, 32]
    assert info["version"] == hashlib.sha256(trained_run.checkpoint.read_bytes()).hexdigest()[:12]
    assert info["format"] == "pytorch" and info["unknown_threshold"] is None
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert {"/health", "/model"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text


def test_onnx_model_serves_the_same_predictions(client, exported):
    files = [("file", (f"{name}.png", _encoded(rgb), "image/png")) for name, rgb in COLOURS.items()]
    with TestClient(create_app(imgcls.load(exported.path, device="cpu"))) as onnx_client:
        from_onnx = onnx_client.post("/predict", files=files).json()["predictions"]
        assert onnx_client.get("/model").json()["format"] == "onnx"
    from_torch = client.post("/predict", files=files).json()["predictions"]
    for a, b in zip(from_onnx, from_torch):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


# --- bad input ----------------------------------------------------------------------------

def _truncated_jpeg() -> bytes:
    return _encoded(COLOURS["red"], "JPEG", size=(200, 160))[:300]


BAD_REQUESTS = {
    # name: (request kwargs, expected status, words in the error)
    "declared body over the limit": (dict(content=b"\xff\xd8\xff" + b"0" * (2 << 20), headers={"content-type": "image/jpeg"}), 413, "over the limit"),
    "too many images": (dict(files=[("f", (f"{i}.png", _encoded(COLOURS["red"]), "image/png")) for i in range(5)]), 413, "limit is 4"),
    "too many base64 images": (dict(json={"images": [base64.b64encode(_encoded(COLOURS["red"])).decode()] * 5}), 413, "limit is 4"),
    "pdf named .jpg": (dict(files=[("f", ("cat.jpg", b"%PDF-1.7\n1 0 obj <<>>", "image/jpeg"))]), 415, "PDF"),
    "html named .png": (dict(files=[("f", ("x.png", b"<!DOCTYPE html><script>alert(1)</script>", "image/png"))]), 415, "HTML"),
    "zip in base64": (dict(json={"image": base64.b64encode(b"PK\x03\x04" + b"\x00" * 40).decode()}), 415, "ZIP"),
    "svg": (dict(content=b"<svg xmlns='http://www.w3.org/2000/svg'/>", headers={"content-type": "image/svg+xml"}), 415, "SVG"),
    "text body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "Content-Type"),
    "no content type": (dict(content=b"hello"), 415, "Content-Type"),
    "truncated jpeg": (dict(files=[("f", ("t.jpg", _truncated_jpeg(), "image/jpeg"))]), 422, "cannot be decoded"),
    "empty file": (dict(files=[("f", ("e.png", b"", "image/png"))]), 422, "empty file"),
    "bomb over the server limit": (dict(files=[("f", ("b.png", _png_header_only(3000, 3000), "image/png"))]), 422, "decompression-bomb"),
    "bomb over pillow's limit": (dict(content=_png_header_only(60000, 60000), headers={"content-type": "image/png"}), 422, "decompression-bomb"),
    "no files in multipart": (dict(data={"note": "hi"}, files=[("x", ("", b"", "text/plain"))]), 422, "no image"),
    "malformed multipart": (dict(content=b"--nope\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=b"}), 422, "malformed multipart"),
    "invalid json": (dict(content=b"{not json", headers={"content-type": "application/json"}), 422, "not valid JSON"),
    "json wrong shape": (dict(json=["a", "b"]), 422, '"images"'),
    "json images not a list": (dict(json={"images": "abc"}), 422, "must be a list"),
    "json number": (dict(json={"images": [42]}), 422, "expected a base64 string"),
    "invalid base64": (dict(json={"images": ["@@@not base64@@@"]}), 422, "not valid base64"),
    "topk zero": (dict(params={"topk": 0}, content=_encoded(COLOURS["red"]), headers={"content-type": "image/png"}), 422, "topk"),
    "topk not a number": (dict(params={"topk": "many"}, content=_encoded(COLOURS["red"]), headers={"content-type": "image/png"}), 422, "topk"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_json_4xx(client, case):
    kwargs, status, words = BAD_REQUESTS[case]
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert words in response.json()["error"]


def test_a_chunked_body_is_cut_off_at_the_limit(client):
    def stream():  # no Content-Length: the server has to count
        yield b"\xff\xd8\xff"
        for _ in range(40):
            yield b"0" * 50_000

    response = client.post("/predict", content=stream(), headers={"content-type": "image/jpeg"})
    assert response.status_code == 413 and "size limit" in response.json()["error"]


def test_the_server_still_works_after_bad_input(client):
    client.post("/predict", files=[("f", ("t.jpg", _truncated_jpeg(), "image/jpeg"))])
    assert _labels(client.post("/predict", json={"image": base64.b64encode(_encoded(COLOURS["blue"])).decode()})) == ["blue"]
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405


# --- API key and exposure ------------------------------------------------------------------

def test_api_key_is_checked_on_model_and_predict(model):
    image = _encoded(COLOURS["red"])
    with TestClient(create_app(model, api_key="s3cret")) as keyed:
        assert keyed.get("/health").status_code == 200  # liveness probes need no key
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
            response = keyed.post("/predict", content=image, headers={"content-type": "image/png", **headers})
            assert response.status_code == 401 and "API key" in response.json()["error"]
        assert keyed.get("/model").status_code == 401
        ok = keyed.post("/predict", content=image, headers={"content-type": "image/png", "X-API-Key": "s3cret"})
        assert _labels(ok) == ["red"]
        bearer = keyed.get("/model", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200


def test_exposed_hosts_need_a_key():
    for host in ("127.0.0.1", "127.0.0.5", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_exposure(host, None)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="API key"):
            check_exposure(host, None)
        check_exposure(host, "key")


def test_serve_refuses_to_start_exposed_without_a_key(trained_run, monkeypatch, capsys):
    monkeypatch.delenv("IMGCLS_API_KEY", raising=False)
    assert main(["serve", str(trained_run.checkpoint), "--host", "0.0.0.0", "--port", "9"]) == 2
    err = capsys.readouterr().err
    assert "API key" in err and err.count("\n") == 1


# --- batching ------------------------------------------------------------------------------

def _run_concurrently(batcher: Batcher, count: int) -> list[np.ndarray]:
    async def go():
        batcher.start()
        try:
            return await asyncio.gather(*[batcher.predict([torch.full((3, 2, 2), float(i))]) for i in range(count)])
        finally:
            await batcher.close()
    return asyncio.run(go())


def test_concurrent_images_share_model_calls():
    sizes = []

    def run_batch(images: torch.Tensor) -> np.ndarray:
        sizes.append(len(images))
        return images.mean(dim=(1, 2, 3)).numpy()[:, None]

    results = _run_concurrently(Batcher(run_batch, max_batch=8, max_wait_ms=50), 20)
    assert [float(r[0, 0]) for r in results] == [float(i) for i in range(20)]  # each gets its own row
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) == 3
    sizes.clear()
    _run_concurrently(Batcher(run_batch, max_batch=1, max_wait_ms=50), 5)
    assert sizes == [1] * 5  # batching off


def test_a_failing_model_call_fails_only_its_requests():
    calls = []

    def run_batch(images: torch.Tensor) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return np.zeros((len(images), 1))

    async def go():
        batcher = Batcher(run_batch, max_batch=4, max_wait_ms=1)
        with pytest.raises(RuntimeError):
            await batcher.predict([torch.zeros(3, 2, 2)])
        assert (await batcher.predict([torch.zeros(3, 2, 2)])).shape == (1, 1)
        await batcher.close()
    asyncio.run(go())


def test_the_app_batches_concurrent_requests(model):
    app = create_app(model, max_batch=16, max_wait_ms=50)
    images = [_encoded(rgb) for rgb in COLOURS.values()] * 4

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*[
                http.post("/predict", content=image, headers={"content-type": "image/png"}) for image in images])
            health = (await http.get("/health")).json()
        return responses, health

    responses, health = asyncio.run(go())
    assert [r.json()["predictions"][0]["label"] for r in responses] == list(COLOURS) * 4
    assert health["images"] == 12 and health["batches"] < 12


# --- Grad-CAM ------------------------------------------------------------------------------

def test_explain_returns_a_grad_cam_overlay(client, exported):
    pytest.importorskip("imgcls.evaluation.explain")
    assert client.get("/model").json()["explain"] is True
    red = _encoded(COLOURS["red"])
    response = client.post("/explain", files=[("file", ("red.png", red, "image/png"))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == "red" and 0 < body["probability"] <= 1
    header, _, data = body["overlay"].partition(",")
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (320, 320)
    other = client.post("/explain?label=blue", content=red, headers={"content-type": "image/png"}).json()
    assert other["label"] == "blue" and other["probability"] < body["probability"]
    bad_label = client.post("/explain?label=purple", content=red, headers={"content-type": "image/png"})
    assert bad_label.status_code == 422 and "purple" in bad_label.json()["error"]
    two = client.post("/explain", files=[("f", ("a.png", red, "image/png")), ("f", ("b.png", red, "image/png"))])
    assert two.status_code == 413
    with TestClient(create_app(imgcls.load(exported.path, device="cpu"))) as onnx_client:
        assert onnx_client.get("/model").json()["explain"] is False
        response = onnx_client.post("/explain", content=red, headers={"content-type": "image/png"})
        assert response.status_code == 404 and "PyTorch checkpoint" in response.json()["error"]


def test_open_set_rule_is_the_checkpoints_own_score(trained_run, tmp_path):
    # An energy threshold is a logsumexp value, not a probability: the server must apply the
    # same rule as `imgcls predict`, image for image.
    classifier = imgcls.load(trained_run.checkpoint, device="cpu")
    paths = []
    for i, rgb in enumerate([*COLOURS.values(), (128, 128, 128), (250, 250, 250)]):
        paths.append(tmp_path / f"img{i}.png")
        paths[-1].write_bytes(_encoded(rgb))
    scores = [row["unknown_score"] for row in classifier.with_unknown_rule(UnknownRule(0.0, "energy")).predict(paths)]
    classifier = classifier.with_unknown_rule(UnknownRule(float(np.median(scores)), "energy"))  # some in, some out
    expected = [row["unknown"] for row in classifier.predict(paths)]
    assert any(expected) and not all(expected)
    with TestClient(create_app(classifier)) as test_client:
        files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
        served = [p["unknown"] for p in test_client.post("/predict", files=files).json()["predictions"]]
    assert served == expected


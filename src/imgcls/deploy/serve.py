"""``imgcls serve``: a FastAPI prediction server for a checkpoint or an exported ONNX file.

Endpoints: ``POST /predict`` (multipart files, base64 JSON or one raw image body),
``GET /health``, ``GET /model``, ``GET /`` (upload page) and the OpenAPI docs at ``/docs``.

Bad input is answered with a JSON ``{"error": ...}`` and a 4xx status, never a 500:
413 body or image count over the limit, 415 unsupported or lying content (the bytes are
sniffed, the name and Content-Type are not trusted), 422 undecodable or decompression-bomb
images and malformed requests, 401 a missing or wrong API key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import ipaddress
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgcls._version import __version__
from imgcls.deploy.batching import Batcher
from imgcls.deploy.uploads import RejectedUpload, decode_upload
from imgcls.errors import UserError
from imgcls.evaluation.explain import GradCamExplainer, display_crop, overlay
from imgcls.inference.classifier import Classifier
from imgcls.inference.loading import load
from imgcls.options import ServeSettings  # declared with the CLI's other options; imported from here too
from imgcls.runtime import log

API_KEY_ENV = "IMGCLS_API_KEY"
SETTINGS_ENV = "IMGCLS_SERVE_SETTINGS"
API_KEY_HEADER = "X-API-Key"
STATIC = Path(__file__).parent / "static"


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class _BodyTooLarge(Exception):
    pass


# --- response schemas (they make the OpenAPI docs useful) -------------------------------

class ClassScore(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    index: int
    filename: str | None
    label: str  # multilabel: the predicted set joined by the model's separator
    probability: float
    unknown: bool
    topk: list[ClassScore]
    labels: list[str] | None = None  # multilabel: the predicted set
    probabilities: dict[str, float] | None = None  # multilabel: every label's probability


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    error: str


class ExplainResponse(BaseModel):
    label: str
    probability: float
    overlay: str  # data:image/png;base64 URL of the Grad-CAM heatmap on the model's centre crop


_ERRORS = {code: {"model": ErrorResponse} for code in (401, 413, 415, 422)}

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "one or more image files (any field name)"}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string"},
                       "description": "base64 images (plain or data: URLs)"},
            "image": {"type": "string", "description": "a single base64 image"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


# --- request-size limit ------------------------------------------------------------------

class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes (413) without reading them whole.

    Neither uvicorn nor Starlette limits request bodies. A declared Content-Length over the
    limit is refused at once; a chunked body is counted as it streams in and aborted when it
    crosses the limit (the route's read raises, and its handler answers 413).
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = _error(413, f"request body of {int(declared):,} bytes is over the limit of {self.limit:,}")
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _BodyTooLarge()
            return message

        await self.app(scope, counted_receive, send)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --- reading the images out of a request -------------------------------------------------

async def _read_images(request: Request, max_images: int) -> list[tuple[str | None, bytes]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    await request.body()  # read (and size-check) the whole body before parsing it
    if content_type == "multipart/form-data":
        items = await _read_multipart(request, max_images)
    elif content_type == "application/json":
        items = _read_json(await request.body())
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        items = [(None, await request.body())]
    else:
        raise ApiError(415, f"unsupported Content-Type '{content_type or 'none'}': send multipart/form-data, "
                            "application/json with base64 images, or one raw image body")
    if not items:
        raise ApiError(422, "no image in the request: send one or more files as multipart/form-data, "
                            'or JSON {"images": ["<base64>", ...]}')
    if len(items) > max_images:
        raise ApiError(413, f"{len(items)} images in one request; the limit is {max_images}")
    return items


async def _read_multipart(request: Request, max_images: int) -> list[tuple[str | None, bytes]]:
    try:
        form = await request.form(max_files=max_images, max_fields=100)
    except StarletteHTTPException as err:
        # Starlette reports every multipart problem as a 400; the file-count one is a size limit.
        if "Too many files" in str(err.detail):
            raise ApiError(413, f"more than {max_images} images in one request; the limit is {max_images}") from None
        raise ApiError(422, f"malformed multipart body: {err.detail}") from None
    files = [value for _, value in form.multi_items() if not isinstance(value, str)]
    items = [(upload.filename, await upload.read()) for upload in files]
    await form.close()
    return items


def _read_json(body: bytes) -> list[tuple[str | None, bytes]]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(422, f"body is not valid JSON ({err})") from None
    if not isinstance(payload, dict) or not ({"images", "image"} & set(payload)):
        raise ApiError(422, 'JSON body must be {"images": ["<base64>", ...]} or {"image": "<base64>"}')
    images = payload.get("images", [payload.get("image")] if "image" in payload else [])
    if not isinstance(images, list):
        raise ApiError(422, '"images" must be a list of base64 strings')
    return [(f"images[{i}]", _b64(value, i)) for i, value in enumerate(images)]


def _b64(value, index: int) -> bytes:
    if not isinstance(value, str):
        raise ApiError(422, f"images[{index}]: expected a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"images[{index}]: not valid base64") from None


# --- the app -----------------------------------------------------------------------------

def file_version(path: Path) -> str:
    """First 12 hex digits of the model file's SHA-256: changes whenever the weights do."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def model_info(model: Classifier, version: str) -> dict:
    pre = model.preprocessing
    return {
        "name": model.source.name if model.source else "model",
        "format": model.backend.name,
        "version": version,
        "architecture": model.card.architecture,
        "classes": model.classes,
        "num_classes": len(model.classes),
        "input_size": [3, pre.image_size, pre.image_size],
        "preprocessing": pre.to_dict(),
        "temperature": model.temperature,
        "unknown_threshold": model.unknown.threshold,
        "unknown_score": model.unknown.score if model.unknown.active else None,
        "task": model.card.task,
        "thresholds": model.thresholds.tolist() if model.multilabel else None,
        "imgcls_version": __version__,
    }


def _grad_cam_for(model: Classifier):
    """A Grad-CAM explainer for a PyTorch model, or None (ONNX graphs have no gradients)."""
    if model.backend.name != "pytorch":
        return None
    try:
        explainer = GradCamExplainer(model.torch_module, model.preprocessing, model.device)
    except (UserError, ValueError) as err:  # an architecture without a usable layer: serve without explanations
        log.warning("Grad-CAM disabled: %s", err)
        return None

    def explain(image, label: str | None) -> dict:
        probs = model.probabilities(model.transform(image)[None])[0]
        index = model.classes.index(label) if label is not None else int(np.argmax(probs))
        heatmap = explainer.heatmaps([image], [index])[0]
        picture = overlay(display_crop(image, model.preprocessing, 320), heatmap)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return {"label": model.classes[index], "probability": float(probs[index]),
                "overlay": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}

    return explain


def create_app(model, *, api_key: str | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               max_body_mb: float = 20.0, max_images: int = 32, max_pixels: int = 40_000_000,
               topk: int = 5) -> FastAPI:
    """The FastAPI app serving ``model`` (a :class:`~imgcls.inference.classifier.Classifier`
    with any backend)."""
    batcher = Batcher(model.scaled_logits, max_batch=max_batch, max_wait_ms=max_wait_ms)
    info = model_info(model, file_version(model.source) if model.source else "memory")
    grad_cam = _grad_cam_for(model)
    info["explain"] = grad_cam is not None
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        yield
        await batcher.close()

    app = FastAPI(title="imgcls prediction server", version=__version__, lifespan=lifespan,
                  description=f"Serving {info['name']} ({info['architecture']}, {info['num_classes']} classes).")
    app.add_middleware(BodyLimit, limit=int(max_body_mb * 2**20))
    _add_error_handlers(app)
    check_key = _key_dependency(api_key)

    def prepare(items: list[tuple[str | None, bytes]]) -> list[torch.Tensor]:
        tensors = []
        for i, (name, data) in enumerate(items):
            image = decode_upload(data, _shown(name, i), max_pixels, draft_size=model.preprocessing.resize_size)
            tensors.append(model.transform(image))
        return tensors

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/health", summary="Liveness: the model is loaded and the batcher runs")
    async def health() -> dict:
        return {"status": "ok", "uptime_s": round(time.time() - started, 1), "batches": batcher.stats.batches,
                "images": batcher.stats.images, "mean_batch": round(batcher.stats.mean_batch, 2)}

    @app.get("/model", summary="The served model: classes, input size, version", dependencies=[Depends(check_key)],
             responses={401: _ERRORS[401]})
    async def model_endpoint() -> dict:
        return {**info, "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms},
                "limits": {"max_body_mb": max_body_mb, "max_images": max_images, "max_pixels": max_pixels}}

    # exclude_unset: the multilabel fields appear only in a multilabel model's predictions
    @app.post("/predict", response_model=PredictResponse, response_model_exclude_unset=True,
              dependencies=[Depends(check_key)],
              summary="Top-k labels for one or many images", responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY})
    async def predict(request: Request,
                      k: int = Query(topk, alias="topk", ge=1, le=100, description="labels per image")) -> dict:
        items = await _read_images(request, max_images)
        tensors = await run_in_threadpool(prepare, items)
        logits = await batcher.predict(tensors)
        # The same rows as `imgcls predict`, with the model's own open-set rule or thresholds.
        rows = model.format_rows(logits, [name for name, _ in items], k)
        return {"model_version": info["version"],
                "predictions": [_prediction(i, row) for i, row in enumerate(rows)]}

    @app.post("/explain", response_model=ExplainResponse, dependencies=[Depends(check_key)],
              summary="Grad-CAM overlay for one image (PyTorch checkpoints only)",
              responses={**_ERRORS, 404: _ERRORS[401]}, openapi_extra={"requestBody": _REQUEST_BODY})
    async def explain(request: Request,
                      label: str | None = Query(None, description="class to explain (default: the top-1)")) -> dict:
        if grad_cam is None:
            raise ApiError(404, "explanations need a PyTorch checkpoint (this server runs an ONNX model)")
        if label is not None and label not in model.classes:
            raise ApiError(422, f"label {label!r} is not one of the model's classes")
        items = await _read_images(request, 1)
        name, data = items[0]
        image = await run_in_threadpool(decode_upload, data, _shown(name, 0), max_pixels,
                                        model.preprocessing.resize_size)
        return await batcher.run_exclusive(grad_cam, image, label)

    return app


def _shown(name: str | None, index: int) -> str:
    """How an image is named in error messages: its file name, its JSON position, or its index."""
    if not name:
        return f"image {index}"
    return name if name.startswith("images[") else f"'{name}'"


def _prediction(index: int, row: dict) -> dict:
    """A prediction row (:func:`imgcls.inference.rows.format_predictions`) as the API returns it;
    a multilabel row adds the predicted set (``labels``) and every label's probability."""
    prediction = {"index": index, "filename": row["path"], "label": row["label"], "probability": row["probability"],
                  "unknown": row["unknown"], "topk": [{"label": label, "probability": p} for label, p in row["topk"]]}
    if "labels" in row:
        prediction.update(labels=row["labels"], probabilities=row["probabilities"])
    return prediction


def _key_dependency(api_key: str | None):
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                          description="required when the server was started with an API key")

    async def check(request: Request, given: str | None = Depends(header)) -> None:
        if api_key is None:
            return
        if given is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            given = token if scheme.lower() == "bearer" else None
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, f"missing or wrong API key (send it in the {API_KEY_HEADER} header)")

    return check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, err: ApiError):
        headers = {"WWW-Authenticate": API_KEY_HEADER} if err.status == 401 else None
        return _error(err.status, err.message, headers)

    @app.exception_handler(RejectedUpload)
    async def rejected(_request, err: RejectedUpload):
        return _error(err.status, err.message)

    @app.exception_handler(_BodyTooLarge)
    async def too_large(_request, _err):
        return _error(413, "request body is over the server's size limit")

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return _error(422, problems or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_request, err: Exception):
        log.exception("unexpected error while serving a request")
        return _error(500, f"internal error ({err.__class__.__name__}); see the server log")


# --- running it --------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so treat it as exposed


def check_exposure(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise ValueError(f"--host {host} is reachable from other machines: give an API key with --api-key "
                         f"or ${API_KEY_ENV} (or bind to 127.0.0.1)")


def app_from_settings(settings: ServeSettings, api_key: str | None) -> FastAPI:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = load(settings.model, device=settings.device)
    return create_app(model, api_key=api_key, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                      max_body_mb=settings.max_body_mb, max_images=settings.max_images,
                      max_pixels=settings.max_pixels, topk=settings.topk)


def app_from_environment() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker process builds its own app."""
    settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV]))
    return app_from_settings(settings, os.environ.get(API_KEY_ENV) or None)


def serve(settings: ServeSettings, api_key: str | None = None) -> None:
    """Run the server until interrupted. ``api_key`` defaults to ``$IMGCLS_API_KEY``."""
    import uvicorn

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    check_exposure(settings.host, api_key)
    if settings.workers < 1:
        raise ValueError(f"--workers {settings.workers}: must be at least 1")
    if settings.workers > 1 and not settings.threads:
        # Each worker would otherwise start one thread per core and they would all compete.
        settings.threads = max(1, (os.cpu_count() or 1) // settings.workers)
    app = app_from_settings(settings, api_key)  # loads the model: bad paths fail here, in one line
    log.info("serving %s on http://%s:%d (docs at /docs)", settings.model, settings.host, settings.port)
    if settings.workers == 1:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
        return
    del app
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
    if api_key:
        os.environ[API_KEY_ENV] = api_key
    uvicorn.run("imgcls.deploy.serve:app_from_environment", factory=True, host=settings.host,
                port=settings.port, workers=settings.workers, log_level="info")

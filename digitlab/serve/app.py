"""HTTP API and drawing page (FastAPI + uvicorn).

Every input is bounded: the request body (413 over the limit, counted while streaming), the pixel
count of an uploaded image (decompression bombs are refused before decoding), the number of images
in a batch, the shape of JSON pixels. Decoding and inference run in worker threads, so the event
loop keeps answering other clients; NumPy releases the GIL in its matrix products.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError

from digitlab import __version__
from digitlab.errors import ImageError
from digitlab.images import decode
from digitlab.modelfile import DigitModel, load
from digitlab.predict import predict_records
from digitlab.prepare import Prepared, prepare
from digitlab.serve import MAX_UPLOAD

STATIC = Path(__file__).parent / "static"
MAX_BATCH = 64

Row = Annotated[list[Annotated[float, Field(ge=0, le=255)]], Field(min_length=28, max_length=28)]


class PixelsIn(BaseModel):
    pixels: Annotated[list[Row], Field(min_length=28, max_length=28,
                                       description="28 rows of 28 values 0..255, ink bright as in MNIST")]


class BatchIn(BaseModel):
    images: Annotated[list[PixelsIn], Field(min_length=1, max_length=MAX_BATCH)]


class Prediction(BaseModel):
    source: str
    status: str = Field(description='"digit" | "empty" | "several_digits" | "not_a_digit"')
    digit: int | None = Field(description="null unless status is digit")
    label: str | None
    confidence: float | None
    probabilities: list[float] | None = Field(description="over the classes; null when empty")
    marks: int = Field(description="digit-sized marks found in the picture")
    input: list[list[int]] = Field(description="the 28x28 image the model saw, ink bright")


class BadInput(Exception):
    def __init__(self, status: int, detail: str):
        self.status, self.detail = status, detail


IMAGE_STATUS = {"not_image": 415, "corrupt": 422, "too_large": 422}
BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "an image file (PNG, JPEG, ...)"}}}},
            "application/json": {"schema": PixelsIn.model_json_schema()},
        },
    }
}
BATCH_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "maxItems": MAX_BATCH}}}},
            "application/json": {"schema": BatchIn.model_json_schema()},
        },
    }
}


def _pixels(p: PixelsIn, field: str = "pixels") -> Prepared:
    a = np.asarray(p.pixels, dtype=np.float32)
    # Values scaled to 0..1 (as many canvas demos send them) would round to an all-but-blank image and
    # get a confident wrong answer; an image whose brightest pixel is 1 of 255 shows nothing anyway.
    if 0 < a.max() <= 1:
        raise BadInput(422, f"{field}: all values lie in 0..1, but pixels are 0..255 (ink bright); "
                       "multiply them by 255")
    return prepare(a / 255.0)


def _decode(data: bytes, name: str) -> Prepared:
    try:
        return prepare(decode(data, name=name))
    except ImageError as e:
        raise BadInput(IMAGE_STATUS.get(e.kind, 422), str(e)) from None


def _validation_detail(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "body"
    return f"{where}: {first['msg']} ({len(e.errors())} error(s) in all)"


async def _read_inputs(request: Request, batch: bool) -> tuple[list[Prepared], list[str]]:
    """The MNIST-style arrays and their names from a multipart upload or a JSON body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        field = "files" if batch else "file"
        async with request.form(max_files=MAX_BATCH, max_fields=MAX_BATCH) as form:
            uploads = [u for u in form.getlist(field) if hasattr(u, "read")]
            if not uploads and not batch:
                uploads = [u for u in form.getlist("files") if hasattr(u, "read")][:1]
            if not uploads:
                raise BadInput(422, f"multipart field '{field}' is missing: expected "
                               f"{'one or more image files' if batch else 'an image file'}")
            if len(uploads) > MAX_BATCH:
                raise BadInput(413, f"at most {MAX_BATCH} images per request, got {len(uploads)}")
            blobs = [(await u.read(), u.filename or f"upload {i}") for i, u in enumerate(uploads)]
        arrays = [await run_in_threadpool(_decode, data, name) for data, name in blobs]
        return arrays, [name for _, name in blobs]
    if ctype.startswith("application/json"):
        try:
            body = await request.json()
        except ValueError:
            raise BadInput(422, "body: not valid JSON") from None
        try:
            if batch:
                parsed = BatchIn.model_validate(body)
                names = [f"images[{i}]" for i in range(len(parsed.images))]
                return [_pixels(p, f"{n}.pixels") for p, n in zip(parsed.images, names, strict=True)], names
            return [_pixels(PixelsIn.model_validate(body))], ["pixels"]
        except ValidationError as e:
            raise BadInput(422, _validation_detail(e)) from None
    raise BadInput(415, f"content type {ctype or 'missing'}: expected multipart/form-data "
                   "(an image file) or application/json (pixels)")


class JSONTooLarge:
    """Starlette answers an over-limit body with a plain-text 413; rewrite it as our JSON error."""

    def __init__(self, app, max_upload: int):
        self.app, self.max_upload = app, max_upload

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        replaced = False

        async def send_json_413(message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                replaced = True
                body = json.dumps({"detail": f"request body larger than the limit of {self.max_upload} bytes"})
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body.encode()})
            elif not replaced:  # the plain-text body of a replaced answer is dropped
                await send(message)

        await self.app(scope, receive, send_json_413)


class _App(FastAPI):
    # FastAPI puts its body-size limit outside user middleware, so the 413 is rewritten around the
    # whole stack rather than with add_middleware.
    def build_middleware_stack(self):
        return JSONTooLarge(super().build_middleware_stack(), self.max_body_size)


def create_app(model: DigitModel | str | Path, max_upload: int = MAX_UPLOAD) -> FastAPI:
    """The ASGI app for a model (or a model file path); max_upload bounds every request body."""
    model = model if isinstance(model, DigitModel) else load(model)
    app = _App(title="digitlab", version=__version__, max_body_size=max_upload,
                  description="Handwritten-digit recognition. Images are preprocessed MNIST-style "
                              "(grayscale, ink bright, cropped, fit to 20x20, centred by mass in 28x28).")

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    def run_model(prepared: list[Prepared], names: list[str]) -> list[dict[str, Any]]:
        records = predict_records(model, prepared, names)
        for r, p in zip(records, prepared, strict=True):
            r["input"] = p.image.tolist()
        return records

    # The answers are built by our own code, so they go out as plain JSON: re-validating 784 pixel
    # values per answer against the response model would cost more than the inference itself.
    @app.post("/api/predict", response_model=Prediction, openapi_extra=BODY_DOC,
              summary="Recognize one digit: an uploaded image (field 'file') or JSON pixels")
    async def predict(request: Request) -> JSONResponse:
        arrays, names = await _read_inputs(request, batch=False)
        return JSONResponse((await run_in_threadpool(run_model, arrays, names))[0])

    @app.post("/api/predict/batch", response_model=list[Prediction], openapi_extra=BATCH_DOC,
              summary=f"Recognize up to {MAX_BATCH} digits in one request, answered in order")
    async def predict_batch(request: Request) -> JSONResponse:
        arrays, names = await _read_inputs(request, batch=True)
        return JSONResponse(await run_in_threadpool(run_model, arrays, names))

    @app.get("/api/model", summary="The model's metadata")
    def model_info() -> dict[str, Any]:
        meta = model.metadata
        return {"architecture": meta.get("architecture"), "arch_config": meta.get("arch_config"),
                "dataset": meta.get("dataset"), "classes": model.classes, "parameters": model.param_count,
                "test_metrics": meta.get("test_metrics"), "training": meta.get("training"),
                "digitlab_version": meta.get("digitlab_version"), "max_upload_bytes": max_upload}

    @app.get("/api/health", summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


def run(model_path: str, host: str = "127.0.0.1", port: int = 8000, max_upload: int = MAX_UPLOAD) -> None:
    import uvicorn

    app = create_app(model_path, max_upload=max_upload)
    print(f"digitlab serving {model_path} on http://{host}:{port}/  (API docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning")

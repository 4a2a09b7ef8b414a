"""HTTP API and drawing page (FastAPI, served by Granian).

Every input is bounded, and each bound is the server's or the framework's own where one exists:
- connections (Granian, in Rust): a request head must arrive within HEADER_TIMEOUT_S (idle keep-alive
  connections close after the same time) and fit in MAX_HEADER_BYTES (431 above);
- the body: max_upload bytes (FastAPI's max_body_size, 413, counted while streaming), sent within
  BODY_TIMEOUT_S (408);
- Host names: loopback only unless allowed (Starlette's TrustedHostMiddleware, 400), so a page using DNS
  rebinding cannot read the API;
- decoding: MAX_REQUEST_PIXELS decoded pixels per request, JPEGs decoded downscaled to fit (422 above);
  at most one decode per core at once, pictures above LARGE_PICTURE one at a time (the rest wait up to
  QUEUE_WAIT_S, then 503 with Retry-After);
- JSON: parsed by pydantic-core (nesting depth capped: 422, never a RecursionError), one of the forms in
  forms.py; a batch holds at most MAX_BATCH pictures.
Every picture, whatever its door, goes through digitlab.prepare.prepare() before the model.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema
from pydantic_core import from_json, to_json
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from digitlab import __version__
from digitlab.errors import ImageError
from digitlab.images import decode_plain_png, load_image, png_size, reduce_picture
from digitlab.modelfile import DigitModel
from digitlab.predict import explain_records, predict_records
from digitlab.prepare import prepare
from digitlab.reading import file_size, read, rescale_boxes
from digitlab.serve import (
    BATCH_WINDOW_S,
    BODY_TIMEOUT_S,
    HEADER_TIMEOUT_S,
    INLINE_PIXELS,
    LARGE_PICTURE,
    LOOPBACK_HOSTS,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_REQUEST_PIXELS,
    MAX_UPLOAD,
    PREPARE_PIXELS,
    QUEUE_WAIT_S,
)
from digitlab.serve.forms import (
    ACCEPTED,
    MAX_BATCH,
    BadForm,
    BatchIn,
    ImageIn,
    PixelsIn,
    RgbaIn,
    TooManyImages,
    grey_picture,
    image_bytes,
    parse_batch,
    parse_form,
    rgba_picture,
)

STATIC = Path(__file__).parent / "static"
IMAGE_STATUS = {"not_image": 415, "corrupt": 422, "too_large": 422}


class Prediction(BaseModel):
    """One picture's answer: the record digitlab.predict.predict_records gives every door."""

    source: str
    status: str = Field(description='"digit" | "empty" | "several_digits" | "not_a_digit"')
    digit: int | None = Field(description="null unless status is digit")
    label: str | None
    confidence: float | None
    probabilities: list[float] | None = Field(description="over the classes; null when empty")
    marks: int = Field(description="digit-sized marks found in the picture")
    input: list[list[int]] = Field(description="the 28x28 image the model saw, ink bright")


class Explanation(Prediction):
    """A prediction with its 28x28 occlusion attribution (digitlab.explain)."""

    method: str = Field(description='"occlusion"')
    attribution: list[list[float]] | None = Field(
        description="28x28: evidence for the answer (positive) and against it (negative); null when empty")


class ReadDigit(BaseModel):
    """One digit of a reading (digitlab.reading.read)."""

    digit: int = Field(description="the digit's class index")
    confidence: float = Field(description="the model's probability for it, 0..1")
    box: list[int] = Field(description="[x0, y0, x1, y1] in the original picture's pixels (x1, y1 exclusive)")


class Reading(BaseModel):
    """A whole number read from one picture (digitlab.reading.read)."""

    source: str
    status: str = Field(description='"ok" | "empty" | "unsure" (a digit below the calibrated threshold; text is '
                        'still the best reading) | "several_lines" (more than one line of digits: none read) | '
                        '"too_many_marks" (only the first 32 marks, left to right, read)')
    text: str = Field(description='the digits left to right, with separators "." and "-" where drawn')
    digits: list[ReadDigit] = Field(description="each digit read, left to right")


class Failed(BaseModel):
    """A picture of a batch that could not be read, in its place among the answers."""

    source: str = Field(description="the file name, or images[i] for a JSON form")
    error: str = Field(description="one line: why this picture was not read (what the single-picture endpoint "
                       "answers with 415 or 422)")


class ErrorOut(BaseModel):
    """The body of every 4xx/5xx answer."""

    detail: str = Field(description="one line naming the field or file and what was expected")


class BadInput(Exception):
    """An answer of `status` (4xx/503) with a one-line `detail`, raised anywhere a request is handled."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        self.status, self.detail, self.headers = status, detail, headers


class BodyTimeout(Exception):
    """The body did not arrive within its deadline."""


ERRORS = {
    408: "the body did not arrive within the time limit",
    413: "the body is larger than the upload limit, or the batch holds too many images",
    415: "neither multipart/form-data nor application/json, or an uploaded file that is not an image",
    422: "a field, value or image that is not what was expected (the message names it)",
    503: "every decode slot is busy: try again after Retry-After seconds",
}
RESPONSES: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut, "description": text}
                                              for code, text in ERRORS.items()}
FORM_REFS = {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in (PixelsIn, RgbaIn, ImageIn)]}


def _body_doc(field: str, batch: bool) -> dict[str, Any]:
    file = {"type": "string", "format": "binary", "description": "an image file (PNG, JPEG, ...)"}
    multipart = {"type": "object", "required": [field], "properties": {
        field: {"type": "array", "items": file, "minItems": 1, "maxItems": MAX_BATCH} if batch else file}}
    json_schema = {"$ref": "#/components/schemas/BatchIn"} if batch else FORM_REFS
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart},
        "application/json": {"schema": json_schema}}}}


def _media_type(request: Request) -> str:
    """The media type of the request body (RFC 9110: case-insensitive, parameters after ';')."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class Slots:
    """Decode slots: one per core for small pictures, one for large ones; waits up to queue_wait, then 503.
    Work on at most INLINE_PIXELS pixels (JSON pixels, 28x28 uploads) runs on the event loop itself:
    handing it to a thread and back cost more than the work (benchmarks/app_overhead.py)."""

    def __init__(self, small: int, queue_wait: float):
        self.small, self.large, self.queue_wait = asyncio.Semaphore(small), asyncio.Semaphore(1), queue_wait

    async def run(self, pixels: int, fn: Callable[[], Any]) -> Any:
        """fn() once a slot is free (a picture of `pixels` over LARGE_PICTURE takes the large slot too): on
        the event loop up to INLINE_PIXELS, else in a thread. Raises BadInput(503) after queue_wait."""
        sems = (self.large, self.small) if pixels > LARGE_PICTURE else (self.small,)
        taken = []
        try:
            for sem in sems:
                if sem.locked():  # (wait_for makes a task: only worth it when there is a wait)
                    try:
                        await asyncio.wait_for(sem.acquire(), self.queue_wait)
                    except TimeoutError:
                        raise BadInput(503, f"busy: every decode slot stayed taken for {self.queue_wait:g} s; "
                                       "try again", {"Retry-After": "1"}) from None
                else:
                    await sem.acquire()
                taken.append(sem)
            return fn() if pixels <= INLINE_PIXELS else await run_in_threadpool(fn)
        finally:
            for sem in taken:
                sem.release()


def _declared_pixels(data: bytes) -> int:
    """The pixel count an image file declares in its header (0 if unreadable: load_image says why)."""
    size = png_size(data)
    if size is not None:
        return size[0] * size[1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.width * im.height
    except Exception:  # noqa: BLE001 - any failure here is reported properly by load_image later
        return 0


class Job:
    """One picture of a request: file bytes to decode, or an already decoded picture, or (in a batch) why
    the picture it stands for cannot be read."""

    def __init__(self, name: str, data: bytes | None = None, picture: Any = None, error: BadInput | None = None):
        self.name, self.data, self.picture, self.error = name, data, picture, error
        if error is not None or picture is None:
            self.pixels = _declared_pixels(data) if data is not None else 0
        else:
            self.pixels = picture.width * picture.height if isinstance(picture, Image.Image) else \
                int(np.prod(np.shape(picture)[:2]))


def _prepare_one(job: Job, left: int, max_pixels: int, step: Callable[[Any, Job], Any] | None) -> tuple[Any, int]:
    """(the 28x28 image, or step(picture, job)) for one picture, and the pixels it decoded to, which must
    fit in the left of the request's budget of max_pixels. Raises BadInput."""
    if job.error is not None:
        raise job.error
    # (plain PNGs decode straight to floats, so only those prepare() may take whole: PREPARE_PIXELS)
    picture = job.picture if job.data is None else decode_plain_png(job.data, min(left, PREPARE_PIXELS))
    if picture is None:
        try:
            picture = load_image(job.data, name=job.name, max_pixels=left)
        except ImageError as e:
            raise BadInput(IMAGE_STATUS.get(e.kind, 422), str(e)) from None
    size = picture.width * picture.height if isinstance(picture, Image.Image) else job.pixels
    if size > left:
        raise BadInput(422, f"{job.name}: the request's pictures hold more than {max_pixels:,} pixels")
    try:
        return (prepare(_reduced(picture)) if step is None else step(picture, job)), size
    except ImageError as e:
        raise BadInput(422, f"{job.name}: {e}") from None


def _prepare_all(jobs: list[Job], max_pixels: int, step: Callable[[Any, Job], Any] | None = None) -> list[Any]:
    """The 28x28 images for a request's pictures, decoding files within the request's pixel budget; with
    step, step(picture, job) for each decoded picture instead of prepare() (reading numbers). A picture
    that cannot be read gives its BadInput in its place: a single picture's is raised by the caller, a
    batch answers it as that picture's error."""
    left, images = max_pixels, []
    for job in jobs:
        try:
            image, size = _prepare_one(job, left, max_pixels, step)
        except BadInput as e:
            images.append(e)
            continue
        left -= size
        images.append(image)
    return images


def _prepared(jobs: list[Job], max_pixels: int, batch: bool) -> list[Any]:
    """_prepare_all's answers; a single picture that cannot be read is raised (BadInput)."""
    images = _prepare_all(jobs, max_pixels)
    if not batch and isinstance(images[0], BadInput):
        raise images[0]
    return images


def _answers(jobs: list[Job], images: list[Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answer's records, in order: each with "input" (the 28x28 image the model saw); in a batch a
    picture that cannot be read is {"source", "error"} in its place. records: those of the readable ones."""
    done = iter(records)
    out = []
    for j, p in zip(jobs, images, strict=True):
        if isinstance(p, BadInput):
            out.append({"source": j.name, "error": p.detail})
        else:
            record = next(done)
            record["input"] = p.image.tolist()
            out.append(record)
    return out


def _records(model: DigitModel, jobs: list[Job], max_pixels: int, batch: bool, explain: bool) -> list[dict[str, Any]]:
    """The answer's records (see _answers), the model run for this request alone (explanations). Raises
    BadInput (a single picture that cannot be read)."""
    images = _prepared(jobs, max_pixels, batch)
    ok = [(j.name, p) for j, p in zip(jobs, images, strict=True) if not isinstance(p, BadInput)]
    names, prepared = [n for n, _ in ok], [p for _, p in ok]
    records = explain_records(model, prepared, names) if explain else predict_records(model, prepared, names)
    return _answers(jobs, images, records)


class Batcher:
    """Dynamic batching of the model call, as serving systems do: the prepared pictures of the requests
    that reach the model within one turn of the event loop go through the network as one batch
    (onnxruntime: ~0.22 ms for one picture, ~0.07 ms a picture in a batch). A batch runs at the end of
    the turn, or at once when it holds max_batch pictures or its first has waited `window` seconds (so
    under load, when preparing is slow, batches get smaller rather than answers later). A request alone
    waits for nothing: its batch runs on the loop's next turn."""

    def __init__(self, model: DigitModel, max_batch: int = MAX_BATCH, window: float = BATCH_WINDOW_S):
        self.model, self.max_batch, self.window = model, max_batch, window
        self.waiting: list[tuple[list[Any], list[str], asyncio.Future]] = []
        self.pictures, self.since = 0, 0.0
        self.answered = False  # a batch was answered in this turn of the loop

    async def turn(self) -> None:
        """Returns once no batch has been answered in this turn of the loop (at once, unless one was).
        A request calls it before preparing its pictures: the requests of an answered batch resume only
        on the loop's next turn, so with hundreds of requests ready in one turn, preparing them all first
        held every answer back (answers came in bursts 0.2-0.4 s apart under 200 connections)."""
        while self.answered:
            await asyncio.sleep(0)

    def _next_turn(self) -> None:
        self.answered = False

    async def records(self, prepared: list[Any], names: list[str]) -> list[dict[str, Any]]:
        """predict_records(model, prepared, names), computed in a batch with other requests' pictures."""
        if not prepared:
            return []
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.waiting:
            loop.call_soon(self._run)
            self.since = loop.time()
        self.waiting.append((prepared, names, future))
        self.pictures += len(prepared)
        if self.pictures >= self.max_batch or loop.time() - self.since >= self.window:
            self._run()
        return await future

    def _run(self) -> None:
        waiting, self.waiting, self.pictures = self.waiting, [], 0
        if not waiting:  # already run when it filled up
            return
        try:
            pictures, names = [p for w in waiting for p in w[0]], [n for w in waiting for n in w[1]]
            records = predict_records(self.model, pictures, names)
        except Exception as e:  # noqa: BLE001 - each request answers the error as it would have alone
            for _, _, future in waiting:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for prepared, _, future in waiting:
            if not future.done():  # (a request whose client left was cancelled)
                future.set_result(records[start:start + len(prepared)])
            start += len(prepared)
        if not self.answered:  # (after the answered requests' wake-ups: those run first next turn)
            self.answered = True
            asyncio.get_running_loop().call_soon(self._next_turn)


def _reduced(picture: Any) -> Any:
    """picture box-reduced by the smallest whole factor that brings it to PREPARE_PIXELS or fewer (the
    server's memory bound: prepare() works on float copies); smaller pictures are returned as they are."""
    if not isinstance(picture, Image.Image) or picture.width * picture.height <= PREPARE_PIXELS:
        return picture
    factor = math.ceil(math.sqrt(picture.width * picture.height / PREPARE_PIXELS))
    while -(-picture.width // factor) * -(-picture.height // factor) > PREPARE_PIXELS:
        factor += 1
    return reduce_picture(picture, factor)  # (bilevel, palette and 16-bit widened first, as in decoding)


def _read_reduced(model: DigitModel, picture: Any, job: Job, pieces: DigitModel | None = None) -> dict[str, Any]:
    """read() on the picture reduced as for prepare (_reduced), its boxes in the sent picture's own pixels
    (a file's as it declares them: load_image decodes big files reduced); pieces: the piece verifier."""
    small = _reduced(picture)
    record = read(model, small, job.name, pieces=pieces)
    size = (np.shape(small)[1], np.shape(small)[0]) if isinstance(small, np.ndarray) else small.size
    original = file_size(job.data) if job.data is not None else None
    if original is None:
        original = picture.size if isinstance(picture, Image.Image) else (np.shape(picture)[1], np.shape(picture)[0])
    return rescale_boxes(record, size, original)


def _form_job(form: BaseModel, prefix: str = "") -> Job:
    """The job for one JSON form; prefix names it within a batch ("images[3]"), else its field names it."""
    field = "pixels" if isinstance(form, PixelsIn) else "rgba" if isinstance(form, RgbaIn) else "image"
    name, where = prefix or field, f"{prefix}.{field}" if prefix else field
    if isinstance(form, PixelsIn):
        return Job(name, picture=grey_picture(form, where))
    if isinstance(form, RgbaIn):
        return Job(name, picture=rgba_picture(form, where))
    return Job(name, data=image_bytes(form, where))


async def _json_jobs(request: Request, batch: bool) -> list[Job]:
    try:
        body = from_json(await request.body(), allow_inf_nan=False)
    except ValueError as e:
        raise BadInput(422, f"body: not valid JSON ({e})") from None
    try:
        forms = parse_batch(body) if batch else [parse_form(body)]
    except BadForm as e:  # not the documented shape (or too many pictures): the request itself is wrong
        raise BadInput(413 if isinstance(e, TooManyImages) else 422, str(e)) from None
    if not batch:
        try:
            return [_form_job(forms[0])]
        except BadForm as e:
            raise BadInput(422, str(e)) from None
    jobs = []
    for i, form in enumerate(forms):  # a form that fits the schema but holds no picture: that item's error
        try:
            jobs.append(_form_job(form, f"images[{i}]"))
        except BadForm as e:
            jobs.append(Job(f"images[{i}]", error=BadInput(422, str(e))))
    return jobs


async def _multipart_jobs(request: Request, batch: bool) -> list[Job]:
    field = "files" if batch else "file"
    try:
        async with request.form(max_files=MAX_BATCH + 1, max_fields=MAX_BATCH + 1) as form:
            items = form.getlist(field) or ([] if batch else form.getlist("files")[:1])
            texts = [x for x in items if isinstance(x, str)]
            if texts:
                data_url = texts[0].startswith("data:")
                hint = ' (a data URL? send it as JSON {"image": "data:..."})' if data_url else ""
                raise BadInput(422, f"multipart field '{field}': text was sent where a file was expected{hint}")
            if not items:
                raise BadInput(422, f"multipart field '{field}' is missing: expected "
                               f"{'one or more image files' if batch else 'an image file'}")
            if len(items) > MAX_BATCH:
                raise BadInput(413, str(TooManyImages(len(items))))
            return [Job(u.filename or f"upload {i}", data=await u.read()) for i, u in enumerate(items)]
    except HTTPException as e:  # Starlette's multipart parser: malformed body, too many parts
        if e.status_code == 413:  # the body limit, counted while streaming: JSONTooLarge words it
            raise
        if str(e.detail).startswith("Too many files"):  # it stops counting at max_files
            raise BadInput(413, str(TooManyImages(f"more than {MAX_BATCH + 1}"))) from None
        raise BadInput(422 if e.status_code == 400 else e.status_code, f"multipart body: {e.detail}") from None


async def _read_jobs(request: Request, batch: bool) -> list[Job]:
    media = _media_type(request)
    if media in ("multipart/form-data", "application/x-www-form-urlencoded"):  # the latter holds text only
        return await _multipart_jobs(request, batch)
    if media == "application/json":
        return await _json_jobs(request, batch)
    raise BadInput(415, f"content type {media or 'missing'}: expected multipart/form-data (an image file) or "
                   f"application/json (one of {ACCEPTED})")


def _json(content: Any) -> Response:
    """A JSON answer serialized by pydantic-core (Rust): json.dumps took a tenth of a small request's time."""
    return Response(to_json(content), media_type="application/json")


def _no_paths(value: Any) -> Any:
    """value with every string that names a file reduced to its file name: the API never shows where
    things lie on this machine (training metadata records the output and data paths)."""
    if isinstance(value, dict):
        return {k: _no_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return value


class BodyDeadline:
    """Bounds the time a request's body may take to arrive: the servers bound the head only."""

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline, done = loop.time() + self.seconds, False

        async def timed_receive():
            nonlocal done
            if done:  # the body is in: later receives wait for a disconnect, as long as the answer takes
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # (no task per message, as wait_for makes)
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


OWN_ANSWER = "digitlab.answer"  # set in the scope by the BadInput handler: the answer is ours, keep its words


class JSONTooLarge:
    """FastAPI answers an over-limit body with a 413 saying only "Content Too Large"; rewrite it as our
    JSON error naming the limit (our own 413s say something else: too many pictures in a batch)."""

    def __init__(self, app, max_upload: int):
        self.app, self.max_upload = app, max_upload

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        replaced = False

        async def send_json_413(message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413 and OWN_ANSWER not in scope:
                replaced = True
                body = JSONResponse({"detail": f"request body larger than the limit of {self.max_upload} bytes"})
                await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
                await send({"type": "http.response.body", "body": body.body})
            elif not replaced:  # the plain-text body of a replaced answer is dropped
                await send(message)

        await self.app(scope, receive, send_json_413)


def _add_openapi_forms(app: FastAPI) -> None:
    """Put the JSON forms' schemas in components/schemas, where the request bodies refer to them."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            _, defs = models_json_schema([(m, "validation") for m in (PixelsIn, RgbaIn, ImageIn, BatchIn)],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _model_info(model: DigitModel, max_upload: int) -> dict[str, Any]:
    meta = model.metadata
    # Only the training settings hold paths (out, data_dir, resume); class labels may hold "/" ("T-shirt/top").
    return {
        "architecture": meta.get("architecture"), "arch_config": meta.get("arch_config"),
        "dataset": meta.get("dataset"), "classes": model.classes, "parameters": model.param_count,
        "test_metrics": meta.get("test_metrics"), "training": _no_paths(meta.get("training")),
        "digitlab_version": meta.get("digitlab_version"), "max_upload_bytes": max_upload,
        "max_request_pixels": MAX_REQUEST_PIXELS}


def _add_error_handlers(app: FastAPI, body_timeout: float) -> None:
    """Every refusal as one JSON line {"detail"} with its status; a client gone mid-body, silently."""

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        if exc.status == 413:  # too many pictures, not the body limit
            request.scope[OWN_ANSWER] = True
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(BodyTimeout)
    async def body_timeout_handler(request: Request, exc: BodyTimeout) -> JSONResponse:
        return JSONResponse({"detail": f"body: not received within {body_timeout:g} s"}, status_code=408,
                            headers={"Connection": "close"})

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody is listening: no answer, and no traceback in the log


def _add_model_routes(app: FastAPI, model: DigitModel, max_request_pixels: int, pieces: DigitModel | None) -> None:
    """The endpoints that run the model. The answers are built by our own code, so they go out as plain
    JSON: re-validating 784 pixel values per answer against the response model would cost more than the
    inference itself."""

    async def answer(request: Request, batch: bool, explain: bool = False) -> list[dict[str, Any]]:
        jobs = await _read_jobs(request, batch)
        pixels = max(j.pixels for j in jobs)
        if explain:  # (occlusion runs the model ~200 times for one picture: nothing to gain from batching)
            return await app.state.slots.run(pixels, lambda: _records(model, jobs, max_request_pixels, batch, True))
        await app.state.batcher.turn()
        images = await app.state.slots.run(pixels, lambda: _prepared(jobs, max_request_pixels, batch))
        ok = [(j.name, p) for j, p in zip(jobs, images, strict=True) if not isinstance(p, BadInput)]
        records = await app.state.batcher.records([p for _, p in ok], [n for n, _ in ok])
        return _answers(jobs, images, records)

    @app.post("/api/predict", response_model=Prediction, openapi_extra=_body_doc("file", False),
              responses=RESPONSES, summary="Recognize one digit: an uploaded image (field 'file') or JSON")
    async def predict(request: Request) -> JSONResponse:
        return _json((await answer(request, batch=False))[0])

    @app.post("/api/predict/batch", response_model=list[Prediction | Failed], openapi_extra=_body_doc("files", True),
              responses=RESPONSES, summary=f"Recognize up to {MAX_BATCH} digits in one request, answered in order",
              description="One record per picture, in order. A picture that cannot be read (not an image, "
                          "corrupt, over the request's pixel limit, values that do not fit its width and height) "
                          'is {"source", "error"} in its place and the others are still answered (200); a '
                          "request that is itself wrong (too many pictures, too large, not the documented "
                          "shape) gets the status below for the whole batch.")
    async def predict_batch(request: Request) -> JSONResponse:
        return _json(await answer(request, batch=True))

    @app.post("/api/explain", response_model=Explanation, openapi_extra=_body_doc("file", False), responses=RESPONSES,
              summary="Recognize one digit and say where the evidence lies (occlusion: 'attribution', 28x28)")
    async def explain(request: Request) -> JSONResponse:
        return _json((await answer(request, batch=False, explain=True))[0])

    @app.post("/api/read", response_model=Reading, openapi_extra=_body_doc("file", False), responses=RESPONSES,
              summary="Read a whole number (several digits, left to right): an image file (field 'file') or JSON")
    async def read_number(request: Request) -> JSONResponse:
        jobs = await _read_jobs(request, batch=False)

        def work() -> dict[str, Any]:
            found = _prepare_all(jobs, max_request_pixels,
                                 lambda picture, job: _read_reduced(model, picture, job, pieces))[0]
            if isinstance(found, BadInput):
                raise found
            return found

        return JSONResponse(await app.state.slots.run(jobs[0].pixels, work))


def _add_page_routes(app: FastAPI, info: dict[str, Any]) -> None:
    """The model's metadata, liveness, and the drawing page."""

    @app.get("/api/model", summary="The model's metadata (file names only, never local paths)")
    async def model_info() -> dict[str, Any]:
        return info

    # async: answered on the event loop, never queued behind decodes in the thread pool
    @app.get("/api/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")


def create_app(model: DigitModel | str | Path, max_upload: int = MAX_UPLOAD,
               allowed_hosts: tuple[str, ...] | list[str] = LOOPBACK_HOSTS, slots: int | None = None,
               queue_wait: float = QUEUE_WAIT_S, max_request_pixels: int = MAX_REQUEST_PIXELS,
               body_timeout: float = BODY_TIMEOUT_S, pieces: DigitModel | str | Path | None = None) -> FastAPI:
    """The ASGI app for a model (or a model file path).

    max_upload: bytes per request body; allowed_hosts: Host header names accepted (port stripped; "*" for
    any); slots: decodes at once (default: one per core); queue_wait: seconds a request waits for a slot
    before 503; max_request_pixels: decoded pixels per request; body_timeout: seconds for a body;
    pieces: the piece verifier /api/read uses (digitlab.pieces; a file path), else the model file's
    companion MODEL.pieces.safetensors when the model is given as a path and one is beside it."""
    from digitlab.pieces import digit_model, find_verifier, load_verifier

    if isinstance(pieces, (str, Path)):
        pieces = load_verifier(pieces)
    elif pieces is None and not isinstance(model, DigitModel):
        pieces = find_verifier(model)
    model = model if isinstance(model, DigitModel) else digit_model(model)
    model.onnx_threads = 1  # one picture per request: a second inference thread only spins (DigitModel)
    app = FastAPIOffline(title="digitlab", version=__version__, max_body_size=max_upload,
                         description="Handwritten-digit recognition. Every picture is prepared MNIST-style "
                                     "(ink bright, cropped, fit to 20x20, centred by mass in 28x28).")
    # FastAPI puts its body-size limit outside user middleware, so the 413 is rewritten around the whole
    # stack rather than with add_middleware.
    stack = app.build_middleware_stack
    app.build_middleware_stack = lambda: JSONTooLarge(stack(), max_upload)
    app.add_middleware(BodyDeadline, seconds=body_timeout)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.slots = Slots(slots or os.cpu_count() or 1, queue_wait)
    app.state.batcher = Batcher(model)
    _add_openapi_forms(app)
    _add_error_handlers(app, body_timeout)
    _add_model_routes(app, model, max_request_pixels, pieces)
    _add_page_routes(app, {**_model_info(model, max_upload), "piece_verifier": pieces is not None})
    return app


SETTINGS_ENV = "DIGITLAB_SERVE"  # how run() hands its settings to Granian's worker processes


def app_from_env() -> FastAPI:
    """The app factory each server worker calls: settings from $DIGITLAB_SERVE (JSON, written by run())."""
    import json

    settings = json.loads(os.environ[SETTINGS_ENV])
    return create_app(settings.pop("model"), **settings)


def _allow_open_files(wanted: int) -> int:
    """Raise this process's open-file limit towards wanted (within the hard limit); the limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return wanted if soft == resource.RLIM_INFINITY else soft


def run(model_path: str, host: str = "127.0.0.1", port: int = 8000, max_upload: int = MAX_UPLOAD,
        workers: int = 1, allow_hosts: list[str] | None = None, header_timeout: float = HEADER_TIMEOUT_S,
        body_timeout: float = BODY_TIMEOUT_S, pieces: str | None = None) -> None:
    """Serve the app with Granian until interrupted. Each worker is a process with its own copy of the
    model and its own decode slots (the cores shared out between workers); allow_hosts adds Host names;
    header_timeout and body_timeout are seconds (the head's also closes idle keep-alive connections)."""
    import json

    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    from digitlab.pieces import digit_model, find_verifier

    digit_model(model_path)  # a bad model file is one clear error here, not one per worker
    find_verifier(model_path, pieces)  # and so is a bad verifier
    hosts = [*LOOPBACK_HOSTS, *(allow_hosts or [])]
    if host not in ("0.0.0.0", "::", "127.0.0.1", "::1"):
        hosts.append(f"[{host}]" if ":" in host else host)
    os.environ[SETTINGS_ENV] = json.dumps({
        "model": str(Path(model_path).resolve()), "max_upload": max_upload, "allowed_hosts": hosts,
        "slots": max(1, (os.cpu_count() or 1) // workers), "body_timeout": body_timeout,
        "pieces": None if pieces is None else str(Path(pieces).resolve())})
    print(f"digitlab serving {model_path} on http://{host}:{port}/  (API docs: /docs; {workers} worker(s))",
          flush=True)
    connections = _allow_open_files(MAX_CONNECTIONS * workers + 256) // workers - 64
    # backpressure: connections each worker holds open at once; past it, new ones wait in the backlog
    # (Granian's default, 1,024, let ~1,000 idle sockets lock everyone else out until they time out).
    Granian("digitlab.serve.app:app_from_env", factory=True, interface=Interfaces.ASGI, address=host, port=port,
            workers=workers, http=HTTPModes.http1, log_level="warning", backlog=2048,
            backpressure=max(64, min(MAX_CONNECTIONS, connections)),
            http1_settings=HTTP1Settings(header_read_timeout=round(header_timeout * 1000),
                                         max_buffer_size=MAX_HEADER_BYTES)).serve()

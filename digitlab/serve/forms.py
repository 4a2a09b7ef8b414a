"""The JSON forms /api/predict accepts, and how each becomes a decoded picture for prepare().

Canvas apps send what their JavaScript finds easiest, so four forms are accepted (one JSON object each;
a batch is {"images": [...]} of them):

- {"pixels": [[...], ...]}: rows of grey values, any height x width up to MAX_SIDE;
- {"pixels": [...], "width": W, "height": H}: the same, flat, row by row (784 values alone mean 28x28);
- {"rgba": [...], "width": W, "height": H}: canvas getImageData().data, 4 values 0..255 per pixel;
- {"image": "data:image/png;base64,..."}: an image file as a data URL (or bare base64).

Grey values are 0..255 or 0..1, as "range" says ("0-255" or "0-1"). Without "range", values that all lie
in 0..1 are read as 0..1 (an image whose brightest pixel is 1 of 255 shows nothing anyway); otherwise
0..255. Ink may be dark on light or light on dark: prepare() finds out.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

MAX_SIDE = 2048  # longest side of a JSON pixel array
MAX_VALUES = 1 << 20  # grey values (or RGBA pixels) in one JSON array
MAX_BATCH = 64
ACCEPTED = ('{"pixels": [[row], ...]}, {"pixels": [flat...], "width": W, "height": H} (784 values alone: '
            '28x28), {"rgba": [r,g,b,a, ...], "width": W, "height": H}, {"image": "data:image/png;base64,..."}; '
            'optional "range": "0-255" or "0-1"')

Grey = Annotated[float, Field(ge=0, le=255, allow_inf_nan=False)]
Side = Annotated[int, Field(ge=1, le=MAX_SIDE)]
_STRICT = ConfigDict(extra="forbid")
_DIGIT_ROWS = [[0] * 28] * 12 + [[0] * 13 + [255, 255] + [0] * 13] * 10 + [[0] * 28] * 6  # a "1", ink bright


Rows = Annotated[list[Annotated[list[Grey], Field(min_length=1, max_length=MAX_SIDE)]],
                 Field(min_length=1, max_length=MAX_SIDE), Tag("rows")]
Flat = Annotated[list[Grey], Field(min_length=1, max_length=MAX_VALUES), Tag("flat")]


def _pixels_kind(value: Any) -> str:
    """Which pixels form a value is, so errors speak of that form only."""
    nested = isinstance(value, list) and value and isinstance(value[0], list)
    return "rows" if nested else "flat"


class BadForm(ValueError):
    """A JSON body that is none of the accepted forms, or a form whose values are wrong."""


class TooManyImages(BadForm):
    """A batch of more than MAX_BATCH pictures (the server answers 413)."""

    def __init__(self, count: int | str):
        super().__init__(f"at most {MAX_BATCH} images per batch; got {count}")


class PixelsIn(BaseModel):
    """Grey values, nested rows or flat with width/height."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"pixels": _DIGIT_ROWS},
        {"pixels": [v / 255 for row in _DIGIT_ROWS for v in row], "width": 28, "height": 28, "range": "0-1"}]})
    pixels: Annotated[Rows | Flat, Discriminator(_pixels_kind)] = Field(
        description="grey values: a list of rows, or one flat list row by row (then width and height, "
                    "unless there are 784 values: 28x28)")
    width: Side | None = None
    height: Side | None = None
    range: Literal["0-255", "0-1"] | None = Field(
        None, description="the values' scale; if absent: 0..1 when every value lies in 0..1, else 0..255")


class RgbaIn(BaseModel):
    """Canvas getImageData(): flat RGBA bytes, row by row."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"rgba": [0, 0, 0, 0] * 4 + [0, 0, 0, 255] * 4 + [0, 0, 0, 0] * 8, "width": 4, "height": 4}]})
    rgba: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=4, max_length=4 * MAX_VALUES)]
    width: Side
    height: Side


class ImageIn(BaseModel):
    """An image file (PNG, JPEG, ...) inside JSON."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"image": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgAB"
                  "SK+kcQAAAABJRU5ErkJggg=="}]})
    image: str = Field(min_length=1, description="a data URL (data:image/png;base64,...) or bare base64")


FORMS: dict[str, type[BaseModel]] = {"pixels": PixelsIn, "rgba": RgbaIn, "image": ImageIn}


class BatchIn(BaseModel):
    """A JSON batch: 1..MAX_BATCH pictures, each in any of the single-picture forms."""

    model_config = _STRICT
    images: Annotated[list[PixelsIn | RgbaIn | ImageIn], Field(min_length=1, max_length=MAX_BATCH)]


def _detail(e: ValidationError, where: str) -> str:
    first = e.errors()[0]
    loc = ".".join(str(x) for x in ([where] if where else []) + list(first["loc"]) if x not in ("rows", "flat"))
    return f"{loc or 'body'}: {first['msg']} ({len(e.errors())} error(s) in all)"


def parse_form(body: Any, where: str = "") -> BaseModel:
    """The one accepted form a JSON value is (PixelsIn, RgbaIn or ImageIn). Raises BadForm naming the
    field, with the accepted forms when the value is none of them."""
    keys = [k for k in FORMS if isinstance(body, dict) and k in body]
    if len(keys) != 1:
        got = "several of pixels, rgba, image" if len(keys) > 1 else (
            f"keys {sorted(body)[:5]}" if isinstance(body, dict) else f"a JSON {type(body).__name__}")
        raise BadForm(f"{where or 'body'}: expected one of {ACCEPTED}; got {got}")
    try:
        return FORMS[keys[0]].model_validate(body)
    except ValidationError as e:
        raise BadForm(_detail(e, where)) from None


def parse_batch(body: Any) -> list[BaseModel]:
    """The forms of a batch body {"images": [form, ...]}, 1..MAX_BATCH of them. Raises BadForm (TooManyImages
    above MAX_BATCH)."""
    if not isinstance(body, dict) or set(body) != {"images"} or not isinstance(body["images"], list):
        raise BadForm(f'body: expected {{"images": [form, ...]}} with 1..{MAX_BATCH} forms, each one of {ACCEPTED}')
    images = body["images"]
    if len(images) > MAX_BATCH:
        raise TooManyImages(len(images))
    if not images:
        raise BadForm(f"images: expected 1..{MAX_BATCH} forms, got none")
    return [parse_form(item, f"images[{i}]") for i, item in enumerate(images)]


def grey_picture(form: PixelsIn, where: str = "pixels") -> np.ndarray:
    """uint8 (H, W) 0..255 from grey values, by the range rule in the module docstring. Raises BadForm."""
    values, w, h = form.pixels, form.width, form.height
    if isinstance(values[0], list):
        if len({len(row) for row in values}) != 1:
            raise BadForm(f"{where}: rows of different lengths; expected every row as long as the first")
        if (h or len(values)) != len(values) or (w or len(values[0])) != len(values[0]):
            raise BadForm(f"{where}: {len(values)} rows of {len(values[0])} values, but height {h} width {w}")
        if len(values) * len(values[0]) > MAX_VALUES:
            raise BadForm(f"{where}: more than {MAX_VALUES:,} values")
        a = np.asarray(values, dtype=np.float32)
    else:
        n = len(values)
        if w is None and h is None and n == 784:
            w = h = 28
        elif w is None or h is None:
            w, h = (w, n // w) if w else (n // h, h) if h else (None, None)
            if w is None:
                raise BadForm(f"{where}: a flat list of {n} values needs width and height (784 values alone: 28x28)")
        if w * h != n:
            raise BadForm(f"{where}: {n} values, but width {w} x height {h} = {w * h}")
        a = np.asarray(values, dtype=np.float32).reshape(h, w)
    unit = form.range == "0-1" or (form.range is None and float(a.max()) <= 1)
    if unit:
        if float(a.max()) > 1:
            raise BadForm(f'{where}: "range" is "0-1" but a value is {float(a.max()):g}; expected 0..1')
        a = a * 255.0
    return np.rint(a).astype(np.uint8)


def rgba_picture(form: RgbaIn, where: str = "rgba") -> Image.Image:
    """An RGBA PIL image (so transparency counts as background) from canvas bytes. Raises BadForm."""
    n, w, h = len(form.rgba), form.width, form.height
    if n != 4 * w * h:
        raise BadForm(f"{where}: {n} values, but 4 x width {w} x height {h} = {4 * w * h}")
    return Image.fromarray(np.asarray(form.rgba, dtype=np.uint8).reshape(h, w, 4), "RGBA")


def image_bytes(form: ImageIn, where: str = "image") -> bytes:
    """The file bytes of a data URL or bare base64 string. Raises BadForm."""
    text = form.image
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise BadForm(f"{where}: expected a base64 data URL (data:image/png;base64,...)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadForm(f"{where}: not valid base64; expected data:image/png;base64,... or base64 of an image file") \
            from None
    if not data:
        raise BadForm(f"{where}: empty image")
    return data

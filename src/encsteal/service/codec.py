"""What travels over the wire: request bodies in, features out.

Requests to POST /v1/embeddings, either
  * `Content-Type: application/json`, `{"images": ["<base64 of a PNG or JPEG file>", ...]}`: what most clients
    send; any size and colour mode (grayscale and RGBA become RGB), or
  * `Content-Type: application/x-npy`: one NumPy .npy array N x C x H x W (C = 1 or 3), uint8 in 0..255 or
    float32/float64 in [0, 1]: compact and fast, no decoding.
Images whose size differs from the encoder's input are resized (bilinear, antialiased) to S x S; the aspect
ratio is not kept, so send square crops if it matters. The JSON shapes of other services (OpenAI's,
Cohere's: encsteal.service.dialects) are read with the same `load_json` and carry the same `Base64Images`.

A request is read in two steps so that the server can refuse it before any heavy work: `parse_request`
reads only its structure (the JSON list, or the .npy header) and knows the number of images; `decode`
then reads every image's header and checks the pixel limits before it decodes a single pixel. Decoding
and resizing go one image (PNG/JPEG) or a bounded group of planes (.npy) at a time, so the memory a
request takes is bounded by the limits, not by what its headers claim.

Responses: JSON `{"embeddings": [[...], ...], "dim": D, "queries_billed": n, "quota_remaining": q,
"cost": c, "cost_micros": m}`, or with `Accept: application/x-npy` the float32 N x D array as .npy, with
the figures in the X-Queries-Billed, X-Quota-Remaining and X-Cost headers (cost as an exact decimal).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

NPY = "application/x-npy"
JSON = "application/json"
RESIZE_PLANE_PIXELS = 1 << 22
"""Pixels of one group of single-channel planes resized at once (16 MiB as float32)."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Pixels are counted as decoded (width x height, whatever the channels)."""

    max_batch: int
    max_image_pixels: int
    max_request_pixels: int


class BadRequest(ValueError):
    """Input the API cannot embed; the message is the one sentence the client sees, with its status code and,
    where one field of the request is at fault, that field's name (`param` of OpenAI-style error bodies)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


class ParsedRequest:
    """A request read up to its number of images, no pixel decoded yet."""

    count: int

    def decode(self, image_size: int) -> torch.Tensor:
        """uint8 N x 3 x S x S, after checking every image's size against the limits."""
        raise NotImplementedError


def media_type(content_type: str) -> str:
    """'application/json; charset=utf-8' -> 'application/json'."""
    return content_type.split(";")[0].strip().lower()


def parse_request(body: bytes, content_type: str, limits: Limits) -> ParsedRequest:
    kind = media_type(content_type)
    if kind == NPY:
        request: ParsedRequest = NpyRequest(body, limits)
    elif kind == JSON:
        request = JsonRequest(load_json(body, limits), limits)
    else:
        raise BadRequest(f"unsupported Content-Type '{content_type or '(none)'}': send {JSON} or {NPY}", 415)
    return counted(request, limits)


def counted(request: ParsedRequest, limits: Limits) -> ParsedRequest:
    """The request, if it holds between 1 and max_batch images."""
    if request.count == 0:
        raise BadRequest("the request holds no images")
    if request.count > limits.max_batch:
        raise BadRequest(f"{request.count} images in one request; at most {limits.max_batch} are accepted", 413)
    return request


def load_json(body: bytes, limits: Limits) -> dict:
    """The JSON object of a request body (of any of the API's JSON shapes), parsed only if it is cheap to parse.
    A body of many small items ([1,1,1,...]) or of deep nesting would cost far more to parse than its size
    suggests; a request of n images holds at most about n + 16 brackets and commas in every shape (one item,
    or one small object, per image, and a few fields), so more is refused unparsed."""
    if body.count(b"[") + body.count(b"{") > limits.max_batch + 16:
        raise BadRequest(f"the JSON body nests more lists and objects than a request of at most {limits.max_batch} "
                         "images holds", 422)
    if body.count(b",") >= limits.max_batch + 16:
        raise BadRequest(f"more items than {limits.max_batch} images in one request; at most {limits.max_batch} "
                         "are accepted", 413)
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("the JSON body must be an object", 422)
    return payload


def decode_request(body: bytes, content_type: str, image_size: int, limits: Limits) -> torch.Tensor:
    """Request body -> uint8 N x 3 x S x S (both steps at once)."""
    return parse_request(body, content_type, limits).decode(image_size)


def check_pixels(sizes: list[tuple[int, int]], limits: Limits) -> None:
    """Refuse (413) an image over the per-image limit, or images over the per-request limit in total."""
    for index, (width, height) in enumerate(sizes):
        if width * height > limits.max_image_pixels:
            raise BadRequest(f"image {index} is {width}x{height} = {width * height} pixels; at most "
                             f"{limits.max_image_pixels} pixels per image are accepted", 413)
    total = sum(width * height for width, height in sizes)
    if total > limits.max_request_pixels:
        raise BadRequest(f"the request holds {total} pixels; at most {limits.max_request_pixels} pixels per request "
                         "are accepted: send fewer or smaller images", 413)


class NpyRequest(ParsedRequest):
    DTYPES = (np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float64))

    def __init__(self, body: bytes, limits: Limits) -> None:
        self.body, self.limits = body, limits
        self.shape, self.dtype, self.fortran_order, self.offset = _npy_header(body)
        if len(self.shape) != 4 or self.shape[1] not in (1, 3):
            raise BadRequest(f"expected an array N x 3 x H x W (or N x 1 x H x W), got shape {self.shape}", 422)
        count, _, height, width = self.shape
        self.count = count
        if min(height, width) < 1:
            raise BadRequest(f"images must be at least 1 pixel on a side, got {height}x{width}", 422)
        if self.dtype.base not in self.DTYPES or self.dtype.fields is not None:
            raise BadRequest(f"array dtype {self.dtype} is not supported: send uint8 (0-255) or float32 (0-1)", 422)
        expected = int(np.prod(self.shape)) * self.dtype.itemsize
        if len(body) - self.offset != expected:
            raise BadRequest(f"the .npy data is {len(body) - self.offset} bytes; its header {self.shape} {self.dtype} "
                             f"needs {expected}")

    def decode(self, image_size: int) -> torch.Tensor:
        count, _, height, width = self.shape
        check_pixels([(width, height)] * count, self.limits)
        array = np.frombuffer(self.body, dtype=self.dtype, offset=self.offset)
        array = array.reshape(self.shape[::-1]).transpose() if self.fortran_order else array.reshape(self.shape)
        if array.dtype != np.uint8:
            if not np.isfinite(array).all():
                raise BadRequest("the array contains NaN or infinite values", 422)
            low, high = float(array.min()), float(array.max())
            if low < 0 or high > 1:
                raise BadRequest(f"float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]", 422)
        return resize(array, image_size)


class Base64Images(ParsedRequest):
    """Images as base64 text of PNG or JPEG files (what every JSON shape carries), no pixel decoded yet."""

    def __init__(self, encoded: list[str], limits: Limits) -> None:
        self.encoded, self.limits = encoded, limits
        self.count = len(encoded)

    def decode(self, image_size: int) -> torch.Tensor:
        files = [_base64(item, index) for index, item in enumerate(self.encoded)]
        check_pixels([_image_size(data, index) for index, data in enumerate(files)], self.limits)
        return torch.stack([resize(_decode_image(data, index), image_size)[0] for index, data in enumerate(files)])


class JsonRequest(Base64Images):
    """This API's own JSON shape, {"images": ["<base64 PNG or JPEG>", ...]} (other fields are ignored)."""

    def __init__(self, payload: dict, limits: Limits) -> None:
        encoded = payload.get("images")
        if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
            raise BadRequest('expected JSON {"images": ["<base64 PNG or JPEG>", ...]}', 422)
        super().__init__(encoded, limits)


def _npy_header(body: bytes) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) from the .npy header alone."""
    if not body.startswith(b"\x93NUMPY"):
        raise BadRequest("the body is not a .npy array (it lacks the .npy magic bytes); write it with numpy.save")
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            header = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise BadRequest(f"the body is not a readable .npy array ({exc})") from None
    shape, fortran_order, dtype = header
    if dtype.hasobject:
        raise BadRequest("the .npy array holds Python objects (a pickle), which are not accepted")
    return tuple(int(side) for side in shape), dtype, bool(fortran_order), stream.tell()


def _base64(text: str, index: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {index} is not valid base64") from None


def _open(data: bytes, index: int) -> Image.Image:
    """The image with only its header read."""
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except UnidentifiedImageError:
        raise BadRequest(f"image {index} is not a PNG or JPEG file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"image {index} is not a readable PNG or JPEG file ({exc})") from None
    return image


def _image_size(data: bytes, index: int) -> tuple[int, int]:
    with _open(data, index) as image:
        return image.size


def _decode_image(data: bytes, index: int) -> np.ndarray:
    """uint8 1 x 3 x H x W; called only after the header passed the limits."""
    try:
        with _open(data, index) as image:
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            pixels = np.asarray(rgb)  # H x W x 3
            del rgb
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"image {index} is not a readable PNG or JPEG file ({exc})") from None
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))[None]


def resize(images: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """uint8 in 0..255 (or float in [0, 1]) N x C x H x W, C = 1 or 3 -> uint8 N x 3 x size x size (one channel
    is repeated; floats are rounded to 0..255 first, as a uint8 image would hold them). Planes are resized in
    groups of about RESIZE_PLANE_PIXELS pixels, so the float copy never holds more than one group (or one
    plane); the result equals resizing the whole batch at once."""
    array = images.numpy() if isinstance(images, torch.Tensor) else images
    count, channels, height, width = array.shape
    planes = array.reshape(count * channels, height, width)
    out = torch.empty(count * channels, size, size, dtype=torch.uint8)
    group = max(1, RESIZE_PLANE_PIXELS // (height * width))
    for start in range(0, len(planes), group):
        chunk = torch.from_numpy(np.array(planes[start:start + group]))
        if chunk.dtype != torch.uint8:
            chunk = (chunk * 255).round_()
        if (height, width) != (size, size):
            chunk = F.interpolate(chunk[:, None].float(), size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[:, 0].round_()
        out[start:start + group] = chunk.clamp_(0, 255).to(torch.uint8)
    out = out.reshape(count, channels, size, size)
    return out.expand(-1, 3, -1, -1).contiguous() if channels == 1 else out


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_npy(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


def encode_png(image: torch.Tensor) -> str:
    """uint8 3 x H x W -> base64 PNG (what a JSON client sends)."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()

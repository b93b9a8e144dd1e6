"""What travels over the wire: request bodies in, features out.

Requests to POST /v1/embeddings, either
  * `Content-Type: application/json`, `{"images": ["<base64 of a PNG or JPEG file>", ...]}`: what most clients
    send; any size and colour mode (grayscale and RGBA become RGB), or
  * `Content-Type: application/x-npy`: one NumPy .npy array N x C x H x W (C = 1 or 3), uint8 in 0..255 or
    float32/float64 in [0, 1]: compact and fast, no decoding.
Images whose size differs from the encoder's input are resized (bilinear, antialiased) to S x S; the aspect
ratio is not kept, so send square crops if it matters.

Responses: JSON `{"embeddings": [[...], ...], "dim": D, "queries_billed": n, "quota_remaining": q, "cost": c}`,
or with `Accept: application/x-npy` the float32 N x D array as .npy, with the same figures in the
X-Queries-Billed, X-Quota-Remaining and X-Cost headers.
"""

from __future__ import annotations

import base64
import binascii
import io
import json

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

NPY = "application/x-npy"
JSON = "application/json"
MAX_IMAGE_SIDE = 4096
"""Larger encoded images are refused before decoding (a 100-megapixel PNG can be a few kilobytes)."""


class BadRequest(ValueError):
    """Input the API cannot embed; the message is the one sentence the client sees, with its status code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_request(body: bytes, content_type: str, image_size: int, max_batch: int) -> torch.Tensor:
    """Request body -> uint8 N x 3 x S x S."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == NPY:
        images = _from_npy(body)
    elif kind == JSON:
        images = _from_json(body, image_size, max_batch)
    else:
        raise BadRequest(f"unsupported Content-Type '{content_type or '(none)'}': send {JSON} or {NPY}", 415)
    if len(images) == 0:
        raise BadRequest("the request holds no images")
    if len(images) > max_batch:
        raise BadRequest(f"{len(images)} images in one request; at most {max_batch} are accepted", 413)
    return resize(images, image_size)


def _from_npy(body: bytes) -> torch.Tensor:
    if not body.startswith(b"\x93NUMPY"):
        raise BadRequest("the body is not a .npy array (it lacks the .npy magic bytes); write it with numpy.save")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadRequest(f"the body is not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[1] not in (1, 3):
        raise BadRequest(f"expected an array N x 3 x H x W (or N x 1 x H x W), got shape {getattr(array, 'shape', None)}", 422)
    if min(array.shape[2:]) < 1 or max(array.shape[2:]) > MAX_IMAGE_SIDE:
        raise BadRequest(f"images must be between 1 and {MAX_IMAGE_SIDE} pixels on a side, got {array.shape[2]}x{array.shape[3]}", 422)
    if array.dtype == np.uint8:
        images = torch.from_numpy(array.copy())
    elif array.dtype in (np.float32, np.float64):
        if not np.isfinite(array).all():
            raise BadRequest("the array contains NaN or infinite values", 422)
        if array.size and (array.min() < 0 or array.max() > 1):
            raise BadRequest(f"float images must lie in [0, 1], got values in [{array.min():.3g}, {array.max():.3g}]", 422)
        images = torch.from_numpy(np.rint(array * 255).astype(np.uint8))
    else:
        raise BadRequest(f"array dtype {array.dtype} is not supported: send uint8 (0-255) or float32 (0-1)", 422)
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images


def _from_json(body: bytes, image_size: int, max_batch: int) -> torch.Tensor:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    encoded = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise BadRequest('expected JSON {"images": ["<base64 PNG or JPEG>", ...]}', 422)
    if len(encoded) > max_batch:
        raise BadRequest(f"{len(encoded)} images in one request; at most {max_batch} are accepted", 413)
    return torch.stack([resize(_decode_image(item, index), image_size)[0] for index, item in enumerate(encoded)]) \
        if encoded else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)


def _decode_image(text: str, index: int) -> torch.Tensor:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {index} is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) > MAX_IMAGE_SIDE:
                raise BadRequest(f"image {index} is {image.size[0]}x{image.size[1]}; at most {MAX_IMAGE_SIDE} pixels on a side", 413)
            if image.format not in ("PNG", "JPEG"):
                raise BadRequest(f"image {index} is {image.format}; send PNG or JPEG")
            pixels = np.asarray(image.convert("RGB"))
    except BadRequest:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"image {index} is not a readable PNG or JPEG file ({exc})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 N x 3 x H x W -> uint8 N x 3 x size x size (unchanged when already that size)."""
    if tuple(images.shape[2:]) == (size, size):
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


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

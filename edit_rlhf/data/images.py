"""Safe image decoding for dataset rows: size limits, decompression-bomb guard, mode conversion.

Every failure raises `ImageError` with a short reason; callers add the dataset, row and column.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

MAX_SIDE = 8192  # pixels; larger images are rejected, not resized
MAX_PIXELS = 64 * 1024 * 1024  # before decoding: guards against decompression bombs
_OK_MODES = {"RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F", "CMYK", "YCbCr", "1"}


class ImageError(ValueError):
    pass


def decode_image(value: Any, max_side: int = MAX_SIDE) -> np.ndarray:
    """Decode an image cell (PNG/JPEG bytes, a `datasets` {"bytes", "path"} dict, a PIL image, or an
    (H, W, 3) uint8 array) into uint8 RGB (H, W, 3)."""
    if value is None:
        raise ImageError("missing image (null)")
    if isinstance(value, np.ndarray):
        arr = value
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ImageError(f"array image must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
        return arr
    if isinstance(value, Image.Image):
        img = value
    else:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise ImageError(f"cannot read image file {path!r}: {e.strerror}") from None
        elif isinstance(value, (bytes, bytearray)):
            data = bytes(value)
        else:
            raise ImageError(f"unsupported image value of type {type(value).__name__}")
        if not data:
            raise ImageError("empty image bytes")
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"image of {w}x{h} pixels exceeds the {MAX_PIXELS}-pixel limit")
            img.load()
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(f"decompression bomb rejected: {e}") from None
        except Exception as e:  # PIL raises many types for corrupt data
            raise ImageError(f"cannot decode image: {type(e).__name__}: {e}") from None
    if img.mode not in _OK_MODES:
        raise ImageError(f"unsupported image mode {img.mode!r}")
    w, h = img.size
    if w < 1 or h < 1 or max(w, h) > max_side:
        raise ImageError(f"image size {w}x{h} outside 1..{max_side} pixels per side")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def editor_view(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """The source image as the editor sees it: uint8 (H, W, 3) resized to (height, width) the way diffusers'
    `VaeImageProcessor` does (PIL Lanczos, no aspect preservation; unchanged when already that size).

    The Kontext editor edits this view of the source (a square `resolution` copy), so every judge of an edit
    against its source (the Edit-RRM reward above all) must be shown this view too, not the original aspect."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape[:2] == (height, width):
        return arr
    return np.asarray(Image.fromarray(arr).convert("RGB").resize((width, height), resample=Image.LANCZOS),
                      dtype=np.uint8)


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()

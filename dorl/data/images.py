"""Decode any cell image to RGB uint8 and resize it: the one preprocessing of training and runtime.

Torch-free (numpy and pillow only): the runtime imports it. Whatever the source (a file path,
encoded bytes, or an array from a camera), `load_rgb` returns an HxWx3 uint8 RGB array or
raises `ImageError` with a sentence that says what was wrong; `resize_square` brings it to the
model's input size with PIL bilinear, so training and the deployed analyzer see the same pixels.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dorl.errors import ImageError

ImageSource = str | Path | bytes | np.ndarray

MIN_SIDE = 8  # px; smaller crops hold no cell worth classifying
MAX_PIXELS = 40_000_000  # 40 MP: far above any cell crop, far below a memory problem
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def describe_source(source: ImageSource) -> str:
    """A short human description of an image source, for reports and error messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {'x'.join(map(str, source.shape))} {source.dtype}>"
    return f"<{type(source).__name__}>"


def load_rgb(source: ImageSource, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image to RGB uint8.

    Args:
        source: a path to a JPEG/PNG/BMP/TIFF/WebP file, its encoded bytes, or an array (uint8
            HxW, HxWx1, HxWx3 or HxWx4; uint16; float in [0, 1] or [0, 255]; an array whose
            maximum is at most 1 is read as [0, 1]).
        min_side: refuse images whose width or height is smaller (pixels).
        max_pixels: refuse images with more pixels, before any pixel is decoded.

    Returns:
        An HxWx3 uint8 array. 16-bit data is scaled to 8 bits; grayscale and palette images are
        expanded to RGB; transparent pixels are composited on white.

    Raises:
        ImageError: the source is missing, empty, not an image, truncated, too small, too large,
            or holds non-finite values.
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source, min_side=min_side, max_pixels=max_pixels)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("the image bytes are empty: pass the content of an image file.")
        return _decode(io.BytesIO(bytes(source)), describe_source(source), min_side, max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path} does not exist or is not a file: check the path.")
        if path.stat().st_size == 0:
            raise ImageError(f"{path} is an empty file: copy the image again.")
        with open(path, "rb") as f:
            return _decode(f, str(path), min_side, max_pixels)
    raise ImageError(f"cannot read an image from a {type(source).__name__}: give a path, bytes or a numpy array.")


def _decode(stream: IO[bytes], name: str, min_side: int, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as img:
                _check_size(img.width, img.height, name, min_side, max_pixels)
                img.load()  # a full decode: truncated files fail here, not later
                ImageOps.exif_transpose(img, in_place=True)
                return _pil_to_rgb(img, name, min_side, max_pixels)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to decode safely ({exc}): crop or downscale it first.") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image PIL can read: give a JPEG, PNG, BMP or TIFF file.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} could not be decoded ({exc}): the file is truncated or corrupt; copy it again.") from exc


def _check_size(width: int, height: int, name: str, min_side: int, max_pixels: int) -> None:
    if min(width, height) < min_side:
        raise ImageError(
            f"{name} is {width}x{height} px, smaller than the minimum side of {min_side} px: give a crop of a whole cell."
        )
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} px ({width * height / 1e6:.0f} MP), above the limit of "
            f"{max_pixels / 1e6:.0f} MP: crop the cell out of the slide image first."
        )


def _pil_to_rgb(img: Image.Image, name: str, min_side: int, max_pixels: int) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("L") clips 16-bit values instead of scaling them.
        data = np.clip(np.asarray(img, dtype=np.int64), 0, 65535).astype(np.uint16)
        return array_to_rgb(data, min_side=min_side, max_pixels=max_pixels)
    if img.mode == "F":
        return array_to_rgb(np.asarray(img, dtype=np.float32), min_side=min_side, max_pixels=max_pixels)
    if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
        return _composite_on_white(np.asarray(img.convert("RGBA")))
    return np.array(img.convert("RGB"), dtype=np.uint8)


def array_to_rgb(array: np.ndarray, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Convert an in-memory image array to RGB uint8 (see `load_rgb` for what is accepted).

    Returns:
        A new HxWx3 uint8 array.
    """
    name = describe_source(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name} is not an image array: give HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA).")
    _check_size(array.shape[1], array.shape[0], name, min_side, max_pixels)
    data = _to_uint8(array, name)
    if data.ndim == 2:
        return np.repeat(data[:, :, None], 3, axis=2)
    if data.shape[2] == 4:
        return _composite_on_white(data)
    return np.array(data, dtype=np.uint8)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.round(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name} holds NaN or infinite values: fix the camera or preprocessing output.")
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.round(np.clip(array * scale, 0.0, 255.0)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (int(array.min()) < 0 or int(array.max()) > 255):
            raise ImageError(f"{name} has values outside 0..255: give uint8, uint16 or float data.")
        return array.astype(np.uint8)
    raise ImageError(f"{name} has dtype {array.dtype}, which is not image data: give uint8, uint16 or float.")


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    rgb = rgba[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.round(rgb).astype(np.uint8)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 image to size x size with PIL bilinear (the training transform too).

    Args:
        rgb: an HxWx3 uint8 array, as `load_rgb` returns.
        size: the model's input side in pixels.

    Returns:
        A size x size x 3 uint8 array.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"resize_square needs an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}: use load_rgb first.")
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb.copy()
    resized = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy()


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders to the image files below them (sorted); files are kept as given.

    Args:
        paths: files and folders; a folder is searched recursively for IMAGE_SUFFIXES.

    Returns:
        The files, in the order given, each folder's files sorted by path, each file once.
    """
    found: dict[Path, Path] = {}  # resolved -> as given; dicts keep insertion order
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files = [path]
        for file in files:
            found.setdefault(file.resolve(), file)
    return list(found.values())

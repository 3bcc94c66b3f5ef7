"""Decode any cell image to RGB uint8 and resize it: the one preprocessing of training and runtime.

Torch-free (numpy and pillow only): the runtime imports it. Whatever the source (a file path,
encoded bytes, or an array from a camera), `load_rgb` returns an HxWx3 uint8 RGB array or
raises `ImageError` with a sentence that says what was wrong; `resize_square` brings it to the
model's input size with PIL bilinear, so training and the deployed analyzer see the same pixels.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dorl.data.png_depth import deep_colour_pixels, is_deep_colour, scale_to_uint8, significant_bits
from dorl.data.scan import IMAGE_SUFFIXES, find_images
from dorl.errors import ImageError

ImageSource = str | Path | bytes | np.ndarray
__all__ = ["IMAGE_SUFFIXES", "DecodedImage", "ImageSource", "array_to_rgb", "decode_image", "describe_source",
           "find_images", "load_rgb", "resize_square"]

MIN_SIDE = 8  # px; smaller crops hold no cell worth classifying
MAX_PIXELS = 40_000_000  # 40 MP: far above any cell crop, far below a memory problem
MAX_ASPECT = 10  # longest side / shortest side: a camera frame is at most ~2:1, a cell crop ~1:1
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # the EXIF orientations that swap width and height


def describe_source(source: ImageSource) -> str:
    """A short human description of an image source, for reports and error messages."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {'x'.join(map(str, source.shape))} {source.dtype}>"
    return f"<{type(source).__name__}>"


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image as the analyzer uses it: RGB pixels, the image's own size, and what was done to it."""

    rgb: np.ndarray  # HxWx3 uint8; smaller than size_hw when decoded at a reduced size
    size_hw: tuple[int, int]  # (height, width) of the image itself, after EXIF orientation
    notes: tuple[str, ...] = ()  # how the data was interpreted, when that is worth saying


def load_rgb(source: ImageSource, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image to RGB uint8 at its full size.

    Args:
        source: a path to a JPEG/PNG/BMP/TIFF/WebP/GIF file, its encoded bytes, or an array (uint8
            HxW, HxWx1, HxWx3 or HxWx4; uint16; float in [0, 1] or [0, 255]; an array whose
            maximum is at most 1 is read as [0, 1]).
        min_side: refuse images whose width or height is smaller (pixels).
        max_pixels: refuse images with more pixels, before any pixel is decoded.

    Returns:
        An HxWx3 uint8 array. 16-bit data is scaled to 8 bits (by its significant bits when a
        PNG records them); grayscale and palette images are expanded to RGB; transparent pixels
        are composited on white.

    Raises:
        ImageError: the source is missing, unreadable, empty, not an image, truncated, holds
            several frames, is too small, too large or implausibly elongated, or holds non-finite
            values.
    """
    return decode_image(source, min_side=min_side, max_pixels=max_pixels).rgb


def decode_image(source: ImageSource, *, min_side: int = MIN_SIDE, max_pixels: int = MAX_PIXELS,
                 reduce_for: int | None = None) -> DecodedImage:
    """Decode an image (see `load_rgb`), at a reduced size when it is far larger than needed.

    Args:
        reduce_for: the side the caller resizes the image to. An image whose shorter side is at
            least 4x that is decoded at an integer fraction of its size (JPEG DCT scaling, then
            Pillow's box `reduce`) no smaller than twice that side, so a camera frame never sits
            in memory at full size. Cell crops (shorter side below 4x) decode exactly as
            `load_rgb` decodes them. None: always full size.
    """
    if isinstance(source, np.ndarray):
        rgb = array_to_rgb(source, min_side=min_side, max_pixels=max_pixels)
        return DecodedImage(rgb, (rgb.shape[0], rgb.shape[1]))
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("the image bytes are empty: pass the content of an image file.")
        return _decode(io.BytesIO(bytes(source)), describe_source(source), _Limits(min_side, max_pixels, reduce_for))
    if isinstance(source, (str, Path)):
        path = Path(source)
        _check_file(path)
        with _open(path) as f:
            return _decode(f, str(path), _Limits(min_side, max_pixels, reduce_for))
    raise ImageError(f"cannot read an image from a {type(source).__name__}: give a path, bytes or a numpy array.")


def _check_file(path: Path) -> None:
    """Refuse what is not a readable, non-empty regular file, saying which of these it is."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist: fix or "
                             "remove the link.") from None
        raise ImageError(f"{path} does not exist or is not a file: check the path.") from None
    except PermissionError:
        raise ImageError(f"{path} cannot be reached (permission denied on a folder above it): ask for "
                         "access.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"{path} is a loop of symbolic links: fix the link.") from None
        raise ImageError(f"{path} cannot be examined ({exc.strerror or exc}): check the path.") from None
    except ValueError:  # a NUL byte in the name: no file can have it
        raise ImageError(f"{str(path)!r} holds a NUL character, which no file name can: check the path.") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a pipe, socket or device)"
        raise ImageError(f"{path} is {kind}, not an image file: give image files or folders holding them.")
    if info.st_size == 0:
        raise ImageError(f"{path} is an empty file: copy the image again.")


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except PermissionError as exc:
        raise ImageError(f"{path} cannot be read (permission denied): give this user read access or copy the "
                         "image elsewhere.") from exc
    except OSError as exc:
        raise ImageError(f"{path} cannot be opened ({exc.strerror or exc}): check the file.") from exc


@dataclass(frozen=True)
class _Limits:
    min_side: int
    max_pixels: int
    reduce_for: int | None


def _decode(stream: IO[bytes], name: str, limits: _Limits) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            bits = significant_bits(stream)
            with Image.open(stream) as img:
                _check_size(img.width, img.height, name, limits.min_side, limits.max_pixels)
                _check_single_frame(img, name)
                if is_deep_colour(img):  # before anything that loads the image (a PNG's getexif does)
                    stream.seek(0)
                    data, notes = _deep_colour(stream, bits, name, limits)
                    return DecodedImage(data, (img.height, img.width), notes)
                size_hw = _oriented_size(img)
                factor = _reduction(img.width, img.height, limits.reduce_for)
                if factor > 1 and img.format == "JPEG":
                    img.draft(img.mode, (-(-img.width // factor), -(-img.height // factor)))
                img.load()  # a full decode: truncated files fail here, not later
                small = _reduce(img, _reduction(img.width, img.height, limits.reduce_for))
                ImageOps.exif_transpose(small, in_place=True)
                rgb, notes = _pil_to_rgb(small, name, bits)
                return DecodedImage(rgb, size_hw, notes)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to decode safely ({exc}): crop or downscale it first.") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image PIL can read: give a JPEG, PNG, BMP, TIFF, WebP or GIF "
                         "file.") from exc
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"{name} could not be decoded ({exc}): the file is truncated or corrupt; copy it again.") from exc


def _check_single_frame(img: Image.Image, name: str) -> None:
    if img.format == "MPO":  # a camera JPEG with its previews (Multi-Picture Format): the first image is the photo
        return
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        raise ImageError(f"{name} holds {frames} frames (pages or an animation) and the analyzer reads one image: "
                         "save each frame as its own file.")


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(height, width) after the EXIF orientation, read before any reduction."""
    orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    return (img.width, img.height) if orientation in _TRANSPOSING_ORIENTATIONS else (img.height, img.width)


def _reduction(width: int, height: int, reduce_for: int | None) -> int:
    """The integer factor that keeps the shorter side at least 2x `reduce_for` (1: no reduction)."""
    if reduce_for is None or reduce_for < 1:
        return 1
    factor = min(width, height) // (2 * reduce_for)
    return factor if factor >= 2 else 1


def _reduce(img: Image.Image, factor: int) -> Image.Image:
    if factor < 2:
        return img
    if img.mode in ("P", "PA", "1"):  # palette indices and bits cannot be averaged
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    elif img.mode in _SIXTEEN_BIT_MODES:
        img = img.convert("I")
    return img.reduce(factor)


def _deep_colour(stream: IO[bytes], bits: int | None, name: str, limits: _Limits) -> tuple[np.ndarray, tuple[str, ...]]:
    data = deep_colour_pixels(stream)
    factor = _reduction(data.shape[1], data.shape[0], limits.reduce_for)
    if factor > 1:
        data = block_mean(data, factor).astype(np.uint16)
    scaled, note = scale_to_uint8(data, bits)
    rgb = array_to_rgb(scaled, min_side=1, max_pixels=limits.max_pixels)
    return rgb, (note,) if note else ()


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Average `factor` x `factor` blocks of an HxW[xC] array (the last partial blocks are dropped)."""
    h, w = array.shape[0] // factor * factor, array.shape[1] // factor * factor
    blocks = array[:h, :w].reshape(h // factor, factor, w // factor, factor, *array.shape[2:])
    return np.round(blocks.mean(axis=(1, 3)))


def _check_size(width: int, height: int, name: str, min_side: int, max_pixels: int) -> None:
    if min(width, height) < min_side:
        raise ImageError(
            f"{name} is {width}x{height} px, smaller than the minimum side of {min_side} px: give a crop of a whole cell."
        )
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} px ({width * height / 1e6:.0f} MP), above the limit of "
            f"{max_pixels / 1e6:.0f} MP: give a cell image or a camera field (downscale or split a slide scan first)."
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"{name} is {width}x{height} px, {max(width, height) / min(width, height):.0f} times longer than wide; "
            f"a cell image or camera frame is at most {MAX_ASPECT}:1: crop the cell out of it."
        )


def _pil_to_rgb(img: Image.Image, name: str, bits: int | None) -> tuple[np.ndarray, tuple[str, ...]]:
    if img.mode in _SIXTEEN_BIT_MODES:
        # PIL's convert("L") clips 16-bit values instead of scaling them.
        values = np.asarray(img, dtype=np.int64)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise ImageError(f"{name} holds 32-bit integer values outside 0..65535, which are not camera pixels: give "
                             "8- or 16-bit image data.")
        data = values.astype(np.uint16)
        scaled, note = scale_to_uint8(data, bits)
        return array_to_rgb(scaled, min_side=1, max_pixels=MAX_PIXELS), (note,) if note else ()
    if img.mode == "F":
        return array_to_rgb(np.asarray(img, dtype=np.float32), min_side=1, max_pixels=MAX_PIXELS), ()
    if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
        return _composite_on_white(np.asarray(img.convert("RGBA"))), ()
    return np.array(img.convert("RGB"), dtype=np.uint8), ()


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
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 255.0:
            raise ImageError(f"{name} has float values from {low:.4g} to {high:.4g}, outside 0..1 and 0..255: give "
                             "pixel values (not normalised or high-bit-depth data scaled to 0..255).")
        scale = 255.0 if high <= 1.0 else 1.0
        return np.round(array * scale).astype(np.uint8)
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

"""16-bit PNGs as cameras write them: the significant bits (sBIT) and full-depth colour.

Scientific cameras with 10-, 12- or 14-bit sensors often store their raw counts in 16-bit PNGs
(0..4095 for 12 bits) and say so in the `sBIT` chunk. Read as 16-bit, such an image is almost
black. Pillow reads 16-bit greyscale at full depth (mode "I;16") but 16-bit RGB(A) only by its
high bytes, and it does not report `sBIT`; this module reads both so that `dorl.data.images`
can scale the data by the bits that are really used.
"""

from __future__ import annotations

import struct
from typing import IO

import numpy as np
from PIL import Image, ImageFile

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_HEADER_CHUNKS = 64  # sBIT comes before the first IDAT; stop looking after this many chunks
_HIGH_TO_LOW = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def significant_bits(stream: IO[bytes]) -> int | None:
    """The largest per-channel value of a PNG's `sBIT` chunk, or None (no chunk, not a PNG).

    The stream's position is restored.
    """
    start = stream.tell()
    try:
        if stream.read(8) != PNG_SIGNATURE:
            return None
        for _ in range(_MAX_HEADER_CHUNKS):
            header = stream.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind == b"sBIT":
                data = stream.read(min(length, 4))
                return max(data) if data else None
            if kind in (b"IDAT", b"IEND"):
                return None
            stream.seek(length + 4, 1)  # the chunk's data and CRC
        return None
    finally:
        stream.seek(start)


def is_deep_colour(img: ImageFile.ImageFile) -> bool:
    """True for a 16-bit RGB or RGBA PNG that Pillow would read by its high bytes only."""
    return img.format == "PNG" and len(img.tile) == 1 and img.tile[0].args in _HIGH_TO_LOW


def deep_colour_pixels(reopen: IO[bytes]) -> np.ndarray:
    """The full 16-bit values [H, W, C] of a 16-bit RGB(A) PNG.

    Pillow unfilters the rows at the full depth and then keeps one byte of each sample: the
    high byte under the big-endian raw mode and the low byte under the little-endian one. Two
    decodes give both bytes.

    Args:
        reopen: the encoded file, seekable; it is read twice from its current position.
    """
    start = reopen.tell()
    planes = []
    for high in (True, False):
        reopen.seek(start)
        with Image.open(reopen) as img:
            raw = str(img.tile[0].args)
            if not high:
                img.tile = [img.tile[0]._replace(args=_HIGH_TO_LOW[raw])]
            img.load()
            planes.append(np.asarray(img, dtype=np.uint16))
    return (planes[0] << 8) | planes[1]


def scale_to_uint8(data: np.ndarray, bits: int | None) -> tuple[np.ndarray, str | None]:
    """16-bit samples to uint8, by the significant bits when the data fits in them.

    Args:
        data: uint16 samples.
        bits: the PNG's sBIT value (None: not recorded).

    Returns:
        (uint8 data, a note for the record or None). Data recorded with `bits` < 16 significant
        bits and stored unscaled (max below 2**bits) is scaled by 255 / (2**bits - 1); data that
        already spans the 16-bit range (the PNG specification's scaled form) by 255 / 65535.
    """
    top = int(data.max()) if data.size else 0
    if bits is not None and 0 < bits < 16 and top < (1 << bits):
        full = (1 << bits) - 1
        scaled = np.round(data.astype(np.float32) * (255.0 / full)).astype(np.uint8)
        return scaled, f"{bits}-bit data (PNG sBIT) scaled by 255/{full}"
    scaled = np.round(data / 257.0).astype(np.uint8)
    if bits is None and 0 < top < 4096:
        return scaled, (f"16-bit data whose largest value is {top} (at most 12 bits used) and no sBIT chunk: "
                        "scaled as 16-bit, so the image is dark; save it with its sBIT or as 8-bit")
    return scaled, None

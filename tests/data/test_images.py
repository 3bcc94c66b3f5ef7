"""Image decoding and resizing: real cell images, and every bad input made for real."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sample_data import MASKED

from dorl.data.images import (
    MAX_PIXELS,
    array_to_rgb,
    decode_image,
    describe_source,
    find_images,
    load_rgb,
    resize_square,
)
from dorl.errors import ImageError


@pytest.fixture(scope="module")
def wbc_root(wbc_dir: Path) -> Path:
    return wbc_dir


def noise_jpeg(path: Path, size: tuple[int, int] = (96, 80)) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG", quality=90)
    return path.read_bytes()


def huge_png(path: Path, side: int = 10_000) -> None:
    """A valid 1-bit side x side PNG of zeros, written row by row without allocating the image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# -- real images --------------------------------------------------------------------------------
@pytest.mark.parametrize("lab,pattern", [("pbc", "*/*.jpg"), ("bccd", "*/*.jpg"), (MASKED, "neutrophil/*.bmp")])
def test_real_cell_images_decode_like_pil(wbc_root: Path, lab: str, pattern: str) -> None:
    path = min((wbc_root / lab).glob(pattern))
    rgb = load_rgb(path)
    with Image.open(path) as img:
        expected = np.asarray(img.convert("RGB"))
    assert rgb.dtype == np.uint8 and rgb.shape == expected.shape and rgb.shape[2] == 3
    np.testing.assert_array_equal(rgb, expected)
    np.testing.assert_array_equal(load_rgb(path.read_bytes()), rgb)
    np.testing.assert_array_equal(load_rgb(str(path)), rgb)


def test_mask_png_is_grayscale_expanded(wbc_root: Path) -> None:
    path = min((wbc_root / MASKED / "masks").rglob("*.png"))
    rgb = load_rgb(path)
    grey = np.asarray(Image.open(path).convert("L"))
    assert set(np.unique(grey)) <= {0, 128, 255}
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], grey)


# -- bad files ----------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        load_rgb(tmp_path / "nope.jpg")


def test_empty_file_and_empty_bytes(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_rgb(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="empty"):
        load_rgb(b"")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = noise_jpeg(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert load_rgb(tmp_path / "full.jpg").shape == (80, 96, 3)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_rgb(tmp_path / "cut.jpg")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_rgb(data[: len(data) // 2])


def test_text_file(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not an image"):
        load_rgb(tmp_path / "notes.jpg")


def test_one_pixel_image_is_too_small(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    with pytest.raises(ImageError, match="1x1 px, smaller than the minimum side of 8"):
        load_rgb(tmp_path / "dot.png")
    assert load_rgb(tmp_path / "dot.png", min_side=1).tolist() == [[[200, 10, 10]]]


def test_ten_thousand_square_image_is_refused_before_decoding(tmp_path: Path) -> None:
    huge_png(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning leaks out either
        with pytest.raises(ImageError, match="10000x10000 px .100 MP., above the limit of 40 MP"):
            load_rgb(tmp_path / "huge.png")
    assert MAX_PIXELS == 40_000_000


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "square.png")
    assert load_rgb(tmp_path / "square.png").shape == (100, 100, 3)
    with pytest.raises(ImageError, match="above the limit"):
        load_rgb(tmp_path / "square.png", max_pixels=5_000)


def test_pil_decompression_bomb_error_becomes_image_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "square.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_rgb(tmp_path / "square.png")


# -- modes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path: Path, suffix: str) -> None:
    data = (np.arange(64 * 64, dtype=np.uint32) * 16).reshape(64, 64).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / f"deep{suffix}")
    rgb = load_rgb(tmp_path / f"deep{suffix}")
    expected = np.round(data / 257.0).astype(np.uint8)
    assert rgb.shape == (64, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], expected)
    assert data[32, 0] == 32768 and rgb[32, 0, 0] == 128  # scaled; PIL's convert("L") would clip to 255


def test_grayscale_png_and_jpeg(tmp_path: Path) -> None:
    grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb = load_rgb(tmp_path / "grey.png")
    assert rgb.shape == (16, 64, 3)
    np.testing.assert_array_equal(rgb[:, :, 1], grey)
    Image.fromarray(grey).save(tmp_path / "grey.jpg")
    rgb = load_rgb(tmp_path / "grey.jpg")
    assert rgb.shape == (16, 64, 3) and np.abs(rgb[:, :, 0].astype(int) - grey).max() < 16
    np.testing.assert_array_equal(rgb[:, :, 0], rgb[:, :, 2])


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))
    img.save(tmp_path / "pal.png")
    rgb = load_rgb(tmp_path / "pal.png")
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[0, 9].tolist() == [255, 0, 0]
    img.save(tmp_path / "pal_t.png", transparency=0)  # index 0 (red) is transparent
    rgb = load_rgb(tmp_path / "pal_t.png")
    assert rgb[0, 0].tolist() == [0, 0, 255] and rgb[0, 9].tolist() == [255, 255, 255]


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[:, :5] = [255, 0, 0, 128]  # half-transparent red
    rgba[:, 5:] = [0, 0, 255, 0]  # fully transparent blue
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    for source in (tmp_path / "alpha.png", rgba):
        rgb = load_rgb(source)
        assert rgb[0, 0].tolist() == [255, 127, 127]
        assert rgb[0, 9].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (20, 12), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    rgb = load_rgb(tmp_path / "cmyk.jpg")
    assert rgb.shape == (12, 20, 3) and rgb[6, 10, 0] > 200 and rgb[6, 10, 1] < 60


# -- arrays -------------------------------------------------------------------------------------
def test_arrays_of_every_accepted_kind() -> None:
    grey = np.arange(100, dtype=np.uint8).reshape(10, 10)
    np.testing.assert_array_equal(load_rgb(grey)[:, :, 2], grey)
    np.testing.assert_array_equal(load_rgb(grey[:, :, None])[:, :, 0], grey)
    rgb = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    out = load_rgb(rgb)
    np.testing.assert_array_equal(out, rgb)
    assert out is not rgb
    np.testing.assert_array_equal(load_rgb(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(load_rgb(rgb / 255.0), rgb)
    np.testing.assert_array_equal(load_rgb(rgb.astype(np.float32)), rgb)
    np.testing.assert_array_equal(load_rgb(rgb.astype(np.int64)), rgb)
    assert load_rgb(np.ones((8, 8), bool))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_arrays(bad: float) -> None:
    array = np.full((16, 16, 3), bad, np.float32)
    with pytest.raises(ImageError, match="NaN or infinite"):
        load_rgb(array)


@pytest.mark.parametrize("shape", [(16,), (16, 16, 2), (16, 16, 5), (2, 16, 16, 3)])
def test_wrong_ndim_or_channels(shape: tuple[int, ...]) -> None:
    with pytest.raises(ImageError, match="not an image array"):
        array_to_rgb(np.zeros(shape, np.uint8))


def test_integer_array_out_of_range_and_tiny_array() -> None:
    with pytest.raises(ImageError, match="outside 0..255"):
        load_rgb(np.full((10, 10), 300, np.int32))
    with pytest.raises(ImageError, match="smaller than the minimum side"):
        load_rgb(np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ImageError, match="give a path, bytes or a numpy array"):
        load_rgb(12345)  # type: ignore[arg-type]


def test_float_arrays_outside_pixel_ranges_are_refused_not_clipped() -> None:
    rgb = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    with pytest.raises(ImageError, match="float values from .* to 1019, outside 0..1 and 0..255"):
        load_rgb(rgb * 1020)  # 10-bit camera data as floats
    with pytest.raises(ImageError, match="outside 0..1 and 0..255"):
        load_rgb((rgb - 0.485) / 0.229)  # normalised model input
    np.testing.assert_array_equal(load_rgb(rgb * 255), np.round(rgb * 255).astype(np.uint8))


def test_a_path_with_a_nul_character_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="holds a NUL character"):
        load_rgb("frame\0.jpg")


# -- resize and listing -------------------------------------------------------------------------
def test_resize_square_is_pil_bilinear() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (363, 360, 3), dtype=np.uint8)
    out = resize_square(rgb, 224)
    expected = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.Resampling.BILINEAR))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    same = np.zeros((224, 224, 3), np.uint8)
    assert resize_square(same, 224) is not same
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        resize_square(rgb.astype(np.float32), 224)


def test_find_images_recurses_and_skips_non_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/z.JPG", "a/b/y.png", "a/b/x.bmp", "a/readme.txt", "a/b/c.tiff"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "a" / "readme.txt"
    found = find_images([tmp_path / "a", explicit, tmp_path / "a" / "b" / "x.bmp"])  # x.bmp only once
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a/b/c.tiff", "a/b/x.bmp", "a/b/y.png", "a/z.JPG", "a/readme.txt"]


def test_describe_source() -> None:
    assert describe_source(Path("a/b.jpg")) == "a/b.jpg"
    assert describe_source(b"abc") == "<3 bytes>"
    assert describe_source(np.zeros((4, 5, 3), np.uint8)) == "<array 4x5x3 uint8>"


# -- deep data, large frames, frames and paths ------------------------------------------------------
def _png(width: int, height: int, depth: int, colour: int, samples: np.ndarray, sbit: bytes | None) -> bytes:
    from bad_inputs import png

    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    return png(width, height, depth, colour, rows, sbit)


def test_twelve_bit_grey_png_is_scaled_by_its_sbit() -> None:
    counts = (np.arange(32 * 16) * 8).reshape(16, 32)  # 0..4088: 12-bit camera counts, stored unscaled
    decoded = decode_image(_png(32, 16, 16, 0, counts, bytes([12])))
    expected = np.round(counts * 255 / 4095).astype(np.uint8)
    np.testing.assert_array_equal(decoded.rgb[:, :, 0], expected)
    assert decoded.notes == ("12-bit data (PNG sBIT) scaled by 255/4095",)
    dark = decode_image(_png(32, 16, 16, 0, counts, None))  # no sBIT: scaled as 16-bit, and we say so
    assert dark.rgb.max() <= 16 and "at most 12 bits used" in dark.notes[0]
    spread = decode_image(_png(32, 16, 16, 0, counts * 16, bytes([12])))  # sBIT with data already scaled
    np.testing.assert_array_equal(spread.rgb[:, :, 0], np.round(counts * 16 / 257.0).astype(np.uint8))


def test_sixteen_bit_rgb_png_is_read_at_full_depth() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4096, (12, 20, 3))
    decoded = decode_image(_png(20, 12, 16, 2, counts, bytes([12, 12, 12])))
    np.testing.assert_array_equal(decoded.rgb, np.round(counts * 255 / 4095).astype(np.uint8))
    full = rng.integers(0, 65536, (12, 20, 3))
    np.testing.assert_array_equal(load_rgb(_png(20, 12, 16, 2, full, None)), np.round(full / 257.0).astype(np.uint8))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_frames_are_decoded_reduced_and_resize_alike(tmp_path: Path, fmt: str) -> None:
    yy, xx = np.indices((1800, 2000))
    rgb = np.stack([(xx // 7) % 256, (yy // 5) % 256, ((xx + yy) // 11) % 256], axis=2).astype(np.uint8)
    path = tmp_path / f"frame.{fmt.lower()}"
    Image.fromarray(rgb).save(path, format=fmt)
    reduced = decode_image(path, reduce_for=224)
    assert reduced.size_hw == (1800, 2000) and 448 <= min(reduced.rgb.shape[:2]) < 900
    full = load_rgb(path)
    assert full.shape == (1800, 2000, 3)
    diff = np.abs(resize_square(reduced.rgb, 224).astype(int) - resize_square(full, 224).astype(int))
    assert diff.mean() < 3  # what the model sees barely changes
    small = decode_image(path, reduce_for=1000)  # under 4x the input side: decoded exactly
    np.testing.assert_array_equal(small.rgb, full)


def test_multi_frame_files_are_refused_single_frame_gif_is_read(tmp_path: Path) -> None:
    a, b = Image.new("RGB", (32, 32), (200, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 200))
    a.save(tmp_path / "pages.tif", save_all=True, append_images=[b])
    a.save(tmp_path / "anim.gif", save_all=True, append_images=[b], duration=50)
    with pytest.raises(ImageError, match="holds 2 frames .* save each frame as its own file"):
        load_rgb(tmp_path / "pages.tif")
    with pytest.raises(ImageError, match="holds 2 frames"):
        load_rgb(tmp_path / "anim.gif")
    a.save(tmp_path / "one.gif")
    assert load_rgb(tmp_path / "one.gif")[5, 5].tolist() == [200, 0, 0]


def test_a_camera_jpeg_with_a_preview_reads_its_photo(tmp_path: Path) -> None:
    photo = Image.new("RGB", (64, 48), (10, 200, 30))
    photo.save(tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[photo.resize((16, 12))])
    with Image.open(tmp_path / "camera.jpg") as opened:
        assert opened.format == "MPO" and opened.n_frames == 2
    rgb = load_rgb(tmp_path / "camera.jpg")
    assert rgb.shape == (48, 64, 3) and np.abs(rgb[20, 30].astype(int) - [10, 200, 30]).max() < 6


def test_implausible_strips_are_refused_before_decoding(tmp_path: Path) -> None:
    from bad_inputs import blank_png

    (tmp_path / "strip.png").write_bytes(blank_png(4_000_000, 8))
    with pytest.raises(ImageError, match="4000000x8 px, 500000 times longer than wide"):
        load_rgb(tmp_path / "strip.png")
    assert load_rgb(np.zeros((80, 800, 3), np.uint8)).shape == (80, 800, 3)  # 10:1 is still accepted
    with pytest.raises(ImageError, match="times longer than wide"):
        load_rgb(np.zeros((8, 81 * 8, 3), np.uint8)[:, :81])


def test_exif_orientation_is_applied_and_reported_in_the_size(tmp_path: Path) -> None:
    rgb = np.zeros((30, 50, 3), np.uint8)
    rgb[:, :10] = 255  # a white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "rotated.png", exif=exif)
    decoded = decode_image(tmp_path / "rotated.png")
    assert decoded.size_hw == (50, 30) and decoded.rgb.shape == (50, 30, 3)
    assert decoded.rgb[0, 15].tolist() == [255, 255, 255] and decoded.rgb[-1, 15].tolist() == [0, 0, 0]


def test_paths_that_are_not_readable_image_files(tmp_path: Path) -> None:
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    for name, message in [("loop.jpg", "loop of symbolic links"), ("dangling.jpg", "gone.jpg, which does not exist"),
                          ("folder.jpg", "is a folder"), ("pipe.png", "not a regular file")]:
        with pytest.raises(ImageError, match=message):
            load_rgb(tmp_path / name)


def test_signed_32_bit_tiff_values_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((32, 32), -5, np.int32), mode="I").save(tmp_path / "signed.tif")
    with pytest.raises(ImageError, match="32-bit integer values outside 0..65535"):
        load_rgb(tmp_path / "signed.tif")
    Image.fromarray(np.full((32, 32), 4000, np.int32), mode="I").save(tmp_path / "twelve.tif")
    assert load_rgb(tmp_path / "twelve.tif").shape == (32, 32, 3)

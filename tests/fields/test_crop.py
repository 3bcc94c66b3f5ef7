"""The analyzer's crop: square, 1.45 x the nucleus, centred, shifted inside the frame, never padded."""

from __future__ import annotations

import numpy as np

from dorl.fields.crop import MIN_CROP, crop_box, cut


def test_centred_square_a_bit_larger_than_the_nucleus() -> None:
    assert crop_box((200, 100, 300, 180), (480, 640)) == (178, 68, 323, 213)  # side 145, centre (250, 140)
    assert crop_box((200, 100, 300, 180), (480, 640), scale=2.0) == (150, 40, 350, 240)


def test_shifted_inside_the_frame_at_an_edge() -> None:
    x0, y0, x1, y1 = crop_box((0, 400, 100, 480), (480, 640))
    assert (x0, y1) == (0, 480) and x1 - x0 == y1 - y0 == 145


def test_capped_by_the_frame_and_floored_by_the_minimum() -> None:
    assert crop_box((0, 0, 600, 400), (480, 640)) == (60, 0, 540, 480)
    x0, y0, x1, y1 = crop_box((100, 100, 110, 110), (480, 640))
    assert x1 - x0 == y1 - y0 == MIN_CROP


def test_cut_copies_the_pixels() -> None:
    frame = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    piece = cut(frame, (5, 2, 15, 12))
    assert piece.shape == (10, 10, 3) and np.array_equal(piece, frame[2:12, 5:15])
    piece[:] = 0
    assert frame[2:12, 5:15].any()

"""The analyzer's crop: square, 1.45 x the nucleus, centred, shifted inside the frame or cut to it, never padded."""

from __future__ import annotations

import numpy as np

from dorl.fields.crop import MIN_CROP, crop_box, cut, cut_near_middle


def test_centred_square_a_bit_larger_than_the_nucleus() -> None:
    assert crop_box((200, 100, 300, 180), (480, 640)) == (178, 68, 323, 213)  # side 145, centre (250, 140)
    assert crop_box((200, 100, 300, 180), (480, 640), scale=2.0) == (150, 40, 350, 240)


def test_shifted_inside_the_frame_at_an_edge() -> None:
    x0, y0, x1, y1 = crop_box((0, 400, 100, 480), (480, 640))
    assert (x0, y1) == (0, 480) and x1 - x0 == y1 - y0 == 145


def test_a_cell_cut_near_its_middle_is_cut_to_the_frame() -> None:
    # BCCD frame 338: the nucleus is a band along the bottom edge (172 x 104 px); the data set's image of the
    # cell is (285, 307, 458, 480), flush with the edge and only as deep as the centred square reached
    assert cut_near_middle((284, 376, 456, 480), (480, 640))
    assert crop_box((284, 376, 456, 480), (480, 640)) == (282, 304, 458, 480)  # shifted whole: (246, 231, 495, 480)
    # frame 302, a band along the left edge (72 x 152 px); the data set's image is (0, 308, 131, 439)
    assert crop_box((0, 292, 72, 444), (480, 640)) == (0, 295, 146, 441)
    # a nucleus on the edge but not a band along it: the whole square, shifted inside (frame 171)
    assert not cut_near_middle((156, 0, 368, 208), (480, 640))
    assert crop_box((156, 0, 368, 208), (480, 640)) == (108, 0, 415, 307)


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

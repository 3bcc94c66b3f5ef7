"""The "no cell" decision: mask figures, the feature distance and its default threshold."""

from __future__ import annotations

import numpy as np
import pytest

from dorl.runtime.cell_check import (
    QUANTILE,
    CellCheck,
    FeatureDistance,
    MaskLimits,
    NonCellDiscriminant,
    border_share,
    calibrate_threshold,
    fit_non_cell,
    mask_area,
    normal_quantile,
    stain_area,
    stain_floor,
)


def square(side: int, top: int, left: int, size: int = 56) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


def test_mask_figures_and_reasons() -> None:
    centred = square(20, 18, 18)
    assert mask_area(centred) == pytest.approx(400 / 56**2) and border_share(centred) == 0.0
    assert MaskLimits().reasons(centred) == []
    assert MaskLimits().reasons(np.zeros((56, 56), bool)) == ["the mask is empty: nothing was segmented"]
    assert MaskLimits().reasons(square(3, 10, 10)) == []  # a nucleus-only mask of a weak model is still a cell
    (small,) = MaskLimits(min_area=0.01).reasons(square(3, 10, 10))
    assert "covers 0.3% of the image, below 1%" in small
    full = np.ones((56, 56), bool)
    reasons = MaskLimits().reasons(full)
    assert len(reasons) == 2 and "above 95%" in reasons[0] and "runs along 100% of the image's border" in reasons[1]
    corner = square(30, 0, 0)  # a cell cut by two edges of a tight crop: still a cell
    assert border_share(corner) == pytest.approx(59 / 220) and MaskLimits().reasons(corner) == []
    assert MaskLimits().reasons(None) == []


def test_distance_is_the_rms_z_score_under_shrunk_spread() -> None:
    source = {"mean": np.array([1.0, -2.0, 0.0, 4.0]), "std": np.array([1.0, 2.0, 0.5, 1e-9])}
    distance = FeatureDistance.from_source(source, threshold=3.0)
    variance = 0.9 * source["std"] ** 2 + 0.1 * np.mean(source["std"] ** 2)  # near-constant features are damped
    x = np.array([[2.0, 0.0, 0.5, 4.1], [1.0, -2.0, 0.0, 4.0]])
    expected = np.sqrt(np.mean((x - source["mean"]) ** 2 / variance, axis=1))
    np.testing.assert_allclose(distance(x), expected)
    assert distance.calibration == "given" and distance(x)[1] == 0.0


def test_calibrated_threshold_is_the_held_out_quantile() -> None:
    rng = np.random.default_rng(1)
    scale = np.linspace(0.5, 3.0, 16)
    normal = rng.normal(size=(4000, 16)) * scale + 2.0
    true = np.quantile(FeatureDistance.from_source({"mean": np.full(16, 2.0), "std": scale}, 0)(
        rng.normal(size=(200_000, 16)) * scale + 2.0), QUANTILE)
    assert calibrate_threshold(normal) == pytest.approx(true, rel=0.03)
    heavy = rng.standard_t(3, size=(4000, 16)) * scale  # heavier tails than the normal model assumes
    source = {"mean": heavy.mean(0), "std": heavy.std(0, ddof=1), "cov": np.cov(heavy, rowvar=False)}
    held_out = FeatureDistance.from_source(source)(rng.standard_t(3, size=(20_000, 16)) * scale)
    calibrated = calibrate_threshold(heavy)
    assert np.mean(held_out > calibrated) == pytest.approx(1 - QUANTILE, abs=0.003)
    with pytest.raises(ValueError, match="at least 10 feature rows"):
        calibrate_threshold(heavy[:9])


def test_recorded_threshold_wins_over_the_normal_model() -> None:
    source = {"mean": np.zeros(3), "std": np.ones(3), "distance_threshold": np.array([2.5], np.float32)}
    distance = FeatureDistance.from_source(source)
    assert distance.threshold == 2.5 and "recorded" in distance.calibration


def test_normal_quantile_matches_sampled_correlated_features() -> None:
    rng = np.random.default_rng(0)
    d = 24
    mixing = rng.normal(size=(d, d)) * np.linspace(0.2, 2.0, d)
    cov = mixing @ mixing.T / d
    std = np.sqrt(np.diag(cov))
    samples = rng.multivariate_normal(np.zeros(d), cov, size=200_000)
    source = {"mean": np.zeros(d), "std": std, "cov": cov}
    distance = FeatureDistance.from_source(source)
    for quantile in (0.99, 0.999):
        expected = np.quantile(distance(samples), quantile)
        assert normal_quantile(source, distance.scale, quantile) == pytest.approx(expected, rel=0.015)
    assert distance.threshold == normal_quantile(source, distance.scale, 0.999)
    independent = FeatureDistance.from_source({"mean": np.zeros(d), "std": std})  # no covariance recorded
    assert independent.threshold < distance.threshold  # correlation widens the distance's spread
    assert normal_quantile(source, distance.scale, 0.5) < distance.threshold


def test_cell_check_combines_mask_and_feature() -> None:
    distance = FeatureDistance.from_source({"mean": np.zeros(2), "std": np.ones(2)}, threshold=2.0)
    check = CellCheck(distance=distance)
    cell = square(20, 18, 18)
    assert check.reasons(cell, 1.0) == ()
    (far,) = check.reasons(cell, 5.0)
    assert "lies 5.00 (RMS z-score) from the source cells, beyond 2.00" in far
    assert len(check.reasons(np.zeros((56, 56), bool), 5.0)) == 2
    assert CellCheck().reasons(cell, 100.0) == ()  # no source statistics: the mask alone decides


def _groups(rng: np.random.Generator, d: int = 12, shift: float = 4.0) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                             np.ndarray, np.ndarray]:
    """Source cells (correlated features) and non-cells shifted along one direction of them."""
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    cells = rng.normal(size=(20_000, d)) @ mixing + 3.0
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    non_cells = rng.normal(size=(2_000, d)) @ mixing + 3.0 + shift * direction
    fit, held = cells[:4000], cells[4000:]
    source = {"mean": fit.mean(0), "std": fit.std(0, ddof=1), "cov": np.cov(fit, rowvar=False)}
    return source, held, non_cells[:200], non_cells[200:]


def test_non_cell_discriminant_lets_the_quantile_of_source_cells_through() -> None:
    source, held, fit, non_cells = _groups(np.random.default_rng(3))
    fitted = fit_non_cell(source, fit)
    assert set(fitted) == {"noncell_weight", "noncell_threshold", "noncell_images"}
    assert all(v.dtype == np.float32 for v in fitted.values()) and fitted["noncell_images"][0] == 200
    assert fitted["noncell_threshold"][0] == pytest.approx(2.5758, abs=1e-4)  # the normal 99.5 % z-score
    check = NonCellDiscriminant.from_source({**source, **fitted})
    assert check is not None and check.images == 200
    source_scores = check(held)
    assert np.std(source_scores) == pytest.approx(1.0, rel=0.05)  # a z-score along the direction
    assert np.mean(source_scores > check.threshold) == pytest.approx(1 - QUANTILE, abs=0.003)
    assert np.mean(check(non_cells) > check.threshold) > 0.9  # they lie on their own side
    assert NonCellDiscriminant.from_source(source) is None  # nothing fitted: no discriminant
    strict = NonCellDiscriminant.from_source({**source, **fit_non_cell(source, fit, quantile=0.999)})
    assert strict is not None and np.mean(strict(held) > strict.threshold) < 0.004


def test_non_cell_fit_refuses_what_cannot_be_fitted() -> None:
    source, _, fit, _ = _groups(np.random.default_rng(4))
    with pytest.raises(ValueError, match="at least 10 non-cell features of 12 values"):
        fit_non_cell(source, fit[:9])
    with pytest.raises(ValueError, match="at least 10 non-cell features of 12 values"):
        fit_non_cell(source, fit[:, :5])
    with pytest.raises(ValueError, match="needs the source cells' mean and covariance"):
        fit_non_cell({"mean": source["mean"], "std": source["std"]}, fit)
    broken = fit.copy()
    broken[3, 2] = np.nan
    with pytest.raises(ValueError, match="not all finite"):
        fit_non_cell(source, broken)
    same = np.tile(source["mean"], (20, 1))  # the non-cells' mean is the source's: no direction
    with pytest.raises(ValueError, match="do not differ from the source cells'"):
        fit_non_cell(source, same)
    with pytest.raises(ValueError, match="3 weights for 12 features"):
        NonCellDiscriminant.from_source({**source, **fit_non_cell(source, fit), "noncell_weight": np.ones(3)})


def test_cell_check_names_the_non_cell_discriminant() -> None:
    source, _, fit, _ = _groups(np.random.default_rng(5))
    check = CellCheck(non_cell=NonCellDiscriminant.from_source({**source, **fit_non_cell(source, fit)}))
    cell = square(20, 18, 18)
    assert check.reasons(cell, None, 0.5) == () and check.reasons(cell, None, None) == ()
    (why,) = check.reasons(cell, None, 4.0)
    assert "scores 4.00 towards the images without a white cell" in why and "beyond 2.58" in why
    assert check.reasons(cell, None, float("nan")) == ()  # non-finite outputs are refused elsewhere, as failed


PURPLE, PINK = (150, 60, 170), (225, 175, 185)  # a stained nucleus, a red cell: (R + B) / 2 - G = 100 and 30


def test_stain_area_is_the_largest_purple_region_share() -> None:
    image = np.full((224, 224, 3), 235, np.uint8)
    image[20:60, 20:60] = PINK  # red cells are not stained
    assert stain_area(image) == 0.0
    image[100:156, 100:156] = PURPLE  # a 56x56 nucleus: 1/16 of the image
    image[8:16, 180:188] = PURPLE  # a smaller stained speck apart from it
    assert stain_area(image) == pytest.approx(1 / 16)
    from PIL import Image

    odd = np.asarray(Image.fromarray(image).resize((150, 150)))
    assert stain_area(odd) == pytest.approx(1 / 16, abs=0.01)  # a side that is not a multiple of 56
    with pytest.raises(ValueError, match="square RGB image of at least 56 pixels"):
        stain_area(image[:, :100])


def test_bundled_platelets_fall_below_the_floor_of_bundled_cells() -> None:
    from pathlib import Path

    from dorl.data.images import load_rgb, resize_square

    assets = Path(__file__).resolve().parents[2] / "dorl" / "assets"
    areas = [stain_area(resize_square(load_rgb(p), 224)) for p in sorted((assets / "sample" / "pbc").rglob("*.jpg"))]
    platelets = [stain_area(resize_square(load_rgb(p), 224)) for p in sorted((assets / "non_cell").rglob("*.jpg"))]
    floor = stain_floor(np.array(areas))
    assert floor == pytest.approx(np.quantile(areas, 1 - QUANTILE)) and 0.02 < floor < 0.035
    assert max(platelets) < floor < np.median(areas) / 2  # a granulomere is a fraction of a nucleus
    with pytest.raises(ValueError, match="at least 10 source cells"):
        stain_floor(np.array(areas[:9]))
    with pytest.raises(ValueError, match="show no stained"):
        stain_floor(np.zeros(40))


def test_cell_check_reads_and_applies_the_recorded_stain_floor() -> None:
    check = CellCheck.of_source({"mean": np.zeros(2), "std": np.ones(2), "noncell_min_stain": np.array([0.03])})
    assert check.min_stain == pytest.approx(0.03) and CellCheck.of_source(None).min_stain is None
    cell = square(20, 18, 18)
    assert check.reasons(cell, None, None, 0.05) == () and check.reasons(cell, None, None, None) == ()
    (why,) = check.reasons(cell, None, None, 0.012)
    assert "largest stained (purple) region covers 1.2% of the image, below the 3.0% of the source lab's" in why
    with pytest.raises(ValueError, match="stain floor 0.0 is not a share"):
        CellCheck.of_source({"noncell_min_stain": np.array([0.0])})

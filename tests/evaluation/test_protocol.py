"""The cross-domain protocol on synthetic separable features with a known domain shift."""

from __future__ import annotations

import numpy as np
import pytest

from dorl.errors import ConfigError
from dorl.evaluation.domain_maps import align_to_source, standardise_per_domain
from dorl.evaluation.protocol import Method, Protocol, evaluate, evaluate_method, restrict, shared_classes

CLASSES = np.array(["eosinophil", "lymphocyte", "neutrophil"])


SHIFT = np.array([9.0, 0.0, -6.0, 1.0, 0.0, 2.0])  # towards eosinophil and away from neutrophil


def make_domain(n_per_class: int, seed: int, offset: float | np.ndarray = 0.0, scale: float = 1.0,
                classes: np.ndarray = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated class clusters in 6-d; a lab shift moves and stretches every cell alike."""
    rng = np.random.default_rng(seed)
    centres = {c: 4.0 * np.eye(6)[i] for i, c in enumerate(CLASSES)}
    y = np.repeat(classes, n_per_class)
    x = np.stack([centres[c] for c in y]) + rng.normal(0.0, 0.4, (len(y), 6))
    return (scale * x + offset).astype(np.float32), y


@pytest.fixture(scope="module")
def domains() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"src": make_domain(30, 0), "same": make_domain(20, 1), "shifted": make_domain(20, 2, offset=SHIFT, scale=2.0)}


def test_in_domain_perfect_and_shift_collapses_then_standardisation_recovers(domains) -> None:
    protocol = Protocol("src", heads=("svm", "logreg"), folds=5, repeats=2)
    plain = {r.head: r for r in evaluate_method("plain", domains, protocol)}
    for row in plain.values():
        assert list(row.domains) == ["src", "same", "shifted"]
        assert row.domains["src"].accuracy.mean == 1.0 and row.domains["same"].accuracy.mean > 0.98
        assert row.domains["shifted"].accuracy.mean < 0.5  # the lab shift breaks a source-fit scaler
        assert len(row.domains["src"].accuracy.folds) == 10  # 2 seeds x 5 folds
        assert row.domains["src"].confusion.sum() == 2 * 90  # each source cell tested once per seed
        assert row.domains["shifted"].confusion.sum() == 10 * 60  # the whole target, every split
    fixed = {r.head: r for r in evaluate_method("std", standardise_per_domain(domains), protocol)}
    for head, row in fixed.items():
        assert row.domains["shifted"].accuracy.mean > 0.98 > plain[head].domains["shifted"].accuracy.mean
        avg = row.average()
        assert avg.mean == pytest.approx(np.mean([row.domains["same"].accuracy.mean,
                                                  row.domains["shifted"].accuracy.mean]))


def test_site_adaptation_moves_targets_onto_the_source_and_leaves_the_source_alone(domains) -> None:
    from dorl.runtime.site_profile import RunningStats, affine_map

    shifted = align_to_source(domains)  # dorl adapt's default: the mean shift
    np.testing.assert_allclose(shifted["shifted"][0].mean(0), domains["src"][0].mean(0), atol=1e-4)
    np.testing.assert_allclose(shifted["shifted"][0] - domains["shifted"][0],
                               np.broadcast_to(shifted["shifted"][0].mean(0) - domains["shifted"][0].mean(0),
                                               domains["shifted"][0].shape), atol=1e-4)
    aligned = align_to_source(domains, "standardise")
    assert aligned["src"][0] is domains["src"][0]  # the source's own profile is the identity
    src = domains["src"][0].astype(np.float64)
    moved = aligned["shifted"][0].astype(np.float64)
    np.testing.assert_allclose(moved.mean(0), src.mean(0), atol=1e-4)
    np.testing.assert_allclose(moved.std(0, ddof=1), src.std(0, ddof=1), rtol=1e-4)
    stats = RunningStats(6)  # what `dorl adapt` accumulates, fed in pieces as cells arrive
    for part in np.array_split(domains["shifted"][0], 3):
        stats.update(part)
    a, b = affine_map({"mean": src.mean(0), "std": src.std(0, ddof=1)}, stats, "standardise")
    np.testing.assert_allclose(moved, domains["shifted"][0] @ a.T + b, atol=1e-4)
    protocol = Protocol("src", heads=("svm", "logreg"), folds=5)
    plain = {r.head: r for r in evaluate_method("plain", domains, protocol)}
    for row in evaluate_method("adapted", aligned, protocol):
        assert row.domains["src"].accuracy.folds == plain[row.head].domains["src"].accuracy.folds
        assert row.domains["shifted"].accuracy.mean > 0.98 > plain[row.head].domains["shifted"].accuracy.mean


def test_folds_are_seeded_and_stratified(domains) -> None:
    a = evaluate_method("m", domains, Protocol("src", heads=("logreg",), seed=7, repeats=1))[0]
    b = evaluate_method("m", domains, Protocol("src", heads=("logreg",), seed=7, repeats=1))[0]
    assert a.domains["shifted"].accuracy.folds == b.domains["shifted"].accuracy.folds
    np.testing.assert_array_equal(a.domains["src"].confusion.sum(axis=1), [30, 30, 30])


def test_shared_setting_restricts_train_and_test() -> None:
    two = CLASSES[1:]
    data = {"src": make_domain(30, 0), "tgt": make_domain(20, 3, classes=two)}
    assert shared_classes(data, "src") == ["lymphocyte", "neutrophil"]
    result = evaluate([("plain", data)], Protocol("src", heads=("logreg",), folds=3))
    assert result.classes == {"all": tuple(CLASSES), "shared": tuple(two)}
    all_row, shared_row = result.rows["all"][0], result.rows["shared"][0]
    assert all_row.domains["tgt"].confusion.shape == (2, 3)  # target classes x the classes the head knows
    assert shared_row.domains["src"].confusion.shape == (2, 2)
    assert shared_row.domains["src"].confusion.sum() == 3 * 60  # 3 seeds
    d = result.to_dict()
    assert d["targets"] == ["tgt"] and set(d["settings"]) == {"all", "shared"}
    assert d["settings"]["shared"]["rows"][0]["cross_domain_average"]["mean"] == shared_row.average().mean


def test_restrict_and_too_few_shared_classes() -> None:
    data = {"src": make_domain(10, 0), "tgt": make_domain(10, 1, classes=CLASSES[:1])}
    assert [len(y) for _, y in restrict(data, ["eosinophil"]).values()] == [10, 10]
    result = evaluate([("plain", data)], Protocol("src", heads=("logreg",), folds=2))
    assert "shared" not in result.rows and "fewer than 2" in result.notes[0]


def test_bad_inputs_raise_clear_errors(domains) -> None:
    with pytest.raises(ConfigError, match="unknown heads"):
        Protocol("src", heads=("rf",))
    with pytest.raises(ConfigError, match="at least 1 seed"):
        Protocol("src", repeats=0)
    with pytest.raises(ConfigError, match="class settings"):
        Protocol("src", settings=("most",))
    with pytest.raises(ConfigError, match="not among the domains"):
        evaluate([("m", domains)], Protocol("lab"))
    with pytest.raises(ConfigError, match="lower --folds"):
        evaluate([("m", {"src": make_domain(3, 0)})], Protocol("src"))
    with pytest.raises(ConfigError, match="not .* as the first method"):
        evaluate([("m", domains), ("n", {"src": domains["src"]})], Protocol("src"))


def test_method_transform_runs_after_the_class_restriction() -> None:
    data = {"src": make_domain(10, 0), "tgt": make_domain(10, 1, classes=CLASSES[1:])}
    method = Method("std", data, standardise_per_domain)
    restricted = method.arrays(["lymphocyte", "neutrophil"])
    for x, y in restricted.values():  # statistics of the kept cells only: exactly centred
        assert set(y) == {"lymphocyte", "neutrophil"}
        np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    full_src = method.arrays()["src"][0]
    assert full_src.shape == (30, 6) and abs(full_src[10:].mean()) > 1e-3  # the eosinophils shifted the mean


def test_counts_majority_and_small_classes_come_with_the_rows() -> None:
    """The majority row is the count fraction of each domain's most frequent class; classes under 5 named."""
    data = {"src": make_domain(10, 0), "tgt": (np.zeros((9, 6)), np.array(["neutrophil"] * 6 + ["lymphocyte"] * 3))}
    result = evaluate([("plain", data)], Protocol("src", heads=("logreg",), folds=2, repeats=1, settings=("all",)))
    d = result.to_dict()["settings"]["all"]
    assert d["class_counts"]["tgt"] == {"lymphocyte": 3, "neutrophil": 6}
    assert d["majority"]["tgt"] == {"class": "neutrophil", "accuracy": 6 / 9, "balanced_accuracy": 0.5,
                                    "macro_f1": pytest.approx((2 * (6 / 9) / (1 + 6 / 9)) / 2)}
    assert d["majority"]["src"]["accuracy"] == pytest.approx(1 / 3)
    assert d["small_classes"] == {"tgt": ["lymphocyte"]}
    row = d["rows"][0]
    assert set(row["cross_lab"]) == {"balanced_accuracy", "macro_f1", "accuracy"}
    assert len(row["cross_lab"]["balanced_accuracy"]["folds"]) == 2


def test_intervals_shrink_with_more_splits(domains) -> None:
    """Noisy target: the 95 % interval over 3 seeds x 5 folds is narrower than over 1 seed x 3 folds."""
    rng = np.random.default_rng(3)
    noisy = {name: (x + rng.normal(0, 2.5, x.shape), y) for name, (x, y) in domains.items()}
    few = evaluate_method("m", noisy, Protocol("src", heads=("logreg",), folds=3, repeats=1))[0]
    many = evaluate_method("m", noisy, Protocol("src", heads=("logreg",), folds=5, repeats=3))[0]
    narrow, wide = many.average(metric="balanced_accuracy"), few.average(metric="balanced_accuracy")
    assert len(narrow.folds) == 15 and len(wide.folds) == 3
    assert 0 < narrow.ci95 < wide.ci95


def with_views(x: np.ndarray, noise: float, seed: int, views: int = 4) -> np.ndarray:
    """[N,V,D]: the plain view first, then views with independent noise around the same cell."""
    rng = np.random.default_rng(seed)
    extra = x[:, None] + rng.normal(0.0, noise, (len(x), views - 1, x.shape[1]))
    return np.concatenate([x[:, None], extra], axis=1).astype(np.float32)


def test_views_train_on_the_plain_view_and_average_the_probabilities() -> None:
    from dorl.evaluation.protocol import fit_predictor
    from dorl.training.config import HeadTrainConfig
    from dorl.training.heads import fit_head

    x, y = make_domain(30, 0)
    garbage = np.concatenate([x[:, None], np.full((len(x), 3, 6), 1e3, np.float32)], axis=1)
    predict = fit_predictor("logreg", garbage, y, seed=3)  # the other views never reach the head
    plain = fit_predictor("logreg", x, y, seed=3)
    test, _ = make_domain(10, 5, offset=SHIFT * 0.3)
    np.testing.assert_array_equal(predict(test), plain(test))
    views = with_views(test, 2.0, seed=6)
    classes, index = np.unique(y, return_inverse=True)
    fitted = fit_head(x, index, HeadTrainConfig(kind="logreg"), 3)
    mean = np.mean([fitted.probabilities(views[:, v]) for v in range(4)], axis=0)
    np.testing.assert_array_equal(predict(views), classes[mean.argmax(1)])
    assert (predict(views) != predict(views[:, 0])).any()  # the averaging decides some cells


def test_noisy_views_averaged_beat_the_plain_view_alone() -> None:
    src, tgt = make_domain(30, 0), make_domain(40, 1)
    # four views of each cell, each with its own noise: averaging them is what helps
    x = (tgt[0][:, None] + np.random.default_rng(9).normal(0, 2.0, (len(tgt[0]), 4, 6))).astype(np.float32)
    protocol = Protocol("src", heads=("svm",), folds=5, repeats=1)
    plain = evaluate_method("plain", {"src": src, "tgt": (x[:, 0], tgt[1])}, protocol)[0]
    tta = evaluate_method("tta", {"src": (with_views(src[0], 0.0, 3), src[1]), "tgt": (x, tgt[1])}, protocol)[0]
    assert tta.domains["src"].accuracy.mean == plain.domains["src"].accuracy.mean == 1.0
    assert tta.domains["tgt"].balanced_accuracy.mean > plain.domains["tgt"].balanced_accuracy.mean + 0.03


def test_adaptation_of_views_takes_its_statistics_from_the_plain_view(domains) -> None:
    src, shifted = domains["src"], domains["shifted"]
    views = np.concatenate([shifted[0][:, None], shifted[0][:, None] + 5.0], axis=1)
    adapted = align_to_source({"src": src, "shifted": (views, shifted[1])}, method="standardise")
    moved = adapted["shifted"][0]
    assert moved.shape == views.shape
    np.testing.assert_allclose(moved[:, 0].mean(0), src[0].mean(0), atol=1e-4)  # the plain view lands on the source
    np.testing.assert_allclose(moved[:, 0].std(0, ddof=1), src[0].std(0, ddof=1), rtol=1e-3)
    step = moved[:, 1] - moved[:, 0]  # one affine map for every view: the +5 of view 1 is scaled alike in every cell
    np.testing.assert_allclose(step, np.broadcast_to(step[0], step.shape), atol=1e-3)
    assert not np.allclose(step[0], 5.0)
    standardised = standardise_per_domain({"shifted": (views, shifted[1])})["shifted"][0]
    np.testing.assert_allclose(standardised[:, 0].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardised[:, 0].std(0), 1.0, atol=1e-4)
    with pytest.raises(ConfigError, match=r"\[N,V,D\] with V views"):
        evaluate([("bad", {"src": (src[0][:, None, None], src[1])})], Protocol("src"))

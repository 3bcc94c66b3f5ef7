"""The differential: Wilson intervals against published values, counts, exclusions and warnings."""

from __future__ import annotations

import pytest

from dorl.fields.differential import Differential, differential, is_rejected, wilson_interval

LABELS = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


@pytest.mark.parametrize(("count", "total", "low", "high"), [
    (0, 10, 0.0, 0.2775),  # Brown, Cai & DasGupta (2001) / Newcombe (1998) tables
    (1, 10, 0.0179, 0.4042),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (81, 263, 0.2553, 0.3662),  # Wilson's example in Newcombe (1998), 81/263
])
def test_wilson_interval_matches_published_values(count: int, total: int, low: float, high: float) -> None:
    lo, hi = wilson_interval(count, total)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_interval_of_nothing_is_everything() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def cell(frame: int, index: int, label: str | None, **extra: object) -> dict:
    probs = {name: (0.9 if name == label else 0.025) for name in LABELS}
    return {"status": "cell", "frame": f"f{frame}.jpg", "frame_index": frame, "cell": index, "label": label,
            "uncertain": False, "edge": False, "error": None, "probs": probs, **extra}


def run() -> list[dict]:
    records = [cell(0, 0, "neutrophil"), cell(0, 1, "lymphocyte", uncertain=True),
               cell(1, 0, "neutrophil", edge=True),  # cut by the edge: reported, not counted
               {"status": "empty", "frame": "f2.jpg", "frame_index": 2, "error": None},
               {"status": "error", "frame": "f3.jpg", "frame_index": 3, "error": "f3.jpg could not be decoded"},
               cell(4, 0, None, error="non-finite outputs"),  # rejected
               cell(5, 0, "eosinophil", no_cell=True)]  # rejected: the analyzer says it is no cell
    records += [cell(6 + i, 0, "neutrophil") for i in range(3)]
    return records


def test_counts_exclusions_and_percentages() -> None:
    result = differential(run())
    assert result.frames == 9 and result.empty_frames == 1 and result.failed_frames == 1
    assert result.cells_found == 8 and result.edge_cut == 1 and result.rejected == 2
    assert result.counted == 5 and result.uncertain == 1
    assert result.labels == LABELS  # the head's order, including types never counted
    rows = {r.label: r for r in result.rows}
    assert rows["neutrophil"].count == 4 and rows["neutrophil"].percent == pytest.approx(80.0)
    assert rows["lymphocyte"].percent == pytest.approx(20.0)
    assert rows["basophil"].count == 0 and rows["basophil"].interval[1] == pytest.approx(100 * wilson_interval(0, 5)[1])
    low, high = rows["neutrophil"].interval
    assert (low, high) == pytest.approx(tuple(100 * v for v in wilson_interval(4, 5)))


def test_warnings_below_the_usual_count_and_for_failed_frames() -> None:
    warnings = differential(run()).warnings
    assert any("only 5 cells were counted, fewer than the usual 100" in w for w in warnings)
    assert any("1 of 9 frames could not be read" in w for w in warnings)
    assert any("1 of 5 counted cells are uncertain" in w for w in warnings)
    enough = differential([cell(i, 0, "neutrophil") for i in range(100)])
    assert enough.counted == 100 and enough.warnings == []
    assert differential([cell(i, 0, "neutrophil") for i in range(5)], min_cells=5).warnings == []


def test_nothing_counted_says_so() -> None:
    assert "no frames were analysed" in differential([]).warnings[0]
    empty = differential([{"status": "empty", "frame": "a.jpg", "frame_index": 0}], labels=LABELS)
    assert empty.counted == 0 and "no white cell was counted" in empty.warnings[0]
    assert all(r.percent == 0.0 for r in empty.rows)


def test_to_dict_is_the_json_report() -> None:
    data = differential(run()).to_dict()
    assert data["cells"] == {"found": 8, "edge_cut": 1, "rejected": 2, "counted": 5, "uncertain": 1}
    assert data["frames"] == {"analysed": 9, "without_white_cell": 1, "failed": 1}
    neutrophil = next(d for d in data["differential"] if d["label"] == "neutrophil")
    assert neutrophil["count"] == 4 and neutrophil["percent"] == 80.0
    assert neutrophil["ci95_percent"][0] < 80.0 < neutrophil["ci95_percent"][1]


def test_rejected_means_no_usable_label() -> None:
    assert is_rejected({"label": None}) and is_rejected({"label": "x", "error": "boom"})
    assert is_rejected({"label": "x", "no_cell": True}) and not is_rejected({"label": "x", "error": None})
    assert Differential().counted == 0

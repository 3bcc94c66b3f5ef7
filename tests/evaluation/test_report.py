"""The report: JSON, a markdown table in the paper's layout whose numbers are the JSON's, PNGs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from dorl.evaluation.domain_maps import standardise_per_domain
from dorl.evaluation.protocol import Protocol, evaluate
from dorl.evaluation.report import counts_table, headline, interval, markdown, percent, table, write_report


@pytest.fixture(scope="module")
def results() -> dict:
    rng = np.random.default_rng(0)
    classes = np.array(["eosinophil", "lymphocyte", "neutrophil", "platelet"])

    def domain(n: int, shift: float, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(names, n)
        x = np.stack([3.0 * np.eye(5)[list(classes).index(c)] for c in y]) + rng.normal(0, 0.8, (len(y), 5)) + shift
        return x, y

    data = {"pbc": domain(15, 0.0, classes), "bccd": domain(8, 1.5, classes[:3]), "jtsc": domain(6, -1.0, classes[:3])}
    methods = [("pooled tokens", data), ("pooled tokens, per-domain standardised", standardise_per_domain(data))]
    return evaluate(methods, Protocol("pbc", heads=("svm", "logreg"), folds=3)).to_dict()


def test_table_has_the_paper_layout_and_the_json_numbers(results: dict) -> None:
    text = table(results, "all")
    lines = text.splitlines()
    assert lines[0] == "| method | head | pbc→pbc | pbc→bccd | pbc→jtsc | cross-domain avg | avg (all columns) |"
    assert len(lines) == 2 + 4  # header, rule, 2 methods x 2 heads
    rows = results["settings"]["all"]["rows"]
    for line, row in zip(lines[2:], rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == [row["method"], row["head"]]
        expected = [percent(row["domains"][d]["accuracy"]) for d in ("pbc", "bccd", "jtsc")]
        expected += [percent(row["cross_domain_average"]), percent(row["average_all_columns"])]
        assert cells[2:] == expected
        mean, std = (float(v) for v in re.match(r"([\d.]+) ± ([\d.]+)", cells[3]).groups())
        assert mean == pytest.approx(100 * row["domains"]["bccd"]["accuracy"]["mean"], abs=0.05)
        assert std == pytest.approx(100 * row["domains"]["bccd"]["accuracy"]["std"], abs=0.05)
        targets = [row["domains"][d]["accuracy"]["mean"] for d in ("bccd", "jtsc")]
        assert row["cross_domain_average"]["mean"] == pytest.approx(np.mean(targets))


def test_markdown_covers_both_settings_and_metrics(results: dict) -> None:
    text = markdown(results)
    assert "## All source classes" in text and "## Classes shared by every domain" in text
    assert text.count("**accuracy per domain**") == 2 and text.count("**macro-F1 per domain**") == 2
    assert text.count("**balanced accuracy per domain**") == 2
    assert "Classes the heads learn: eosinophil, lymphocyte, neutrophil, platelet." in text
    assert "Classes the heads learn: eosinophil, lymphocyte, neutrophil." in text


def test_write_report_files(results: dict, tmp_path: Path) -> None:
    paths = write_report(results, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(results))
    assert paths["markdown"].read_text() == markdown(results)
    assert len(paths["confusion"]) == 2 * 2 * 2  # settings x methods x heads
    assert [p.name for p in paths["summary"]] == ["summary_all.png", "summary_shared.png"]
    assert paths["summary"][0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = paths["confusion"][0]
    assert png.name == "confusion_all_pooled-tokens_svm.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_report(results, tmp_path / "no_png", confusion=False)["confusion"] == []


def test_missing_values_print_as_dash_and_json_has_no_nan(results: dict, tmp_path: Path) -> None:
    assert percent({"mean": float("nan"), "std": 0.0}) == "–" and percent({"mean": None, "std": None}) == "–"
    broken = json.loads(json.dumps(results))
    broken["settings"]["all"]["rows"][0]["domains"]["jtsc"]["accuracy"]["mean"] = float("nan")
    path = write_report(broken, tmp_path, confusion=False)["json"]
    assert json.loads(path.read_text())["settings"]["all"]["rows"][0]["domains"]["jtsc"]["accuracy"]["mean"] is None


def test_headline_shows_intervals_and_the_majority_row(results: dict) -> None:
    lines = headline(results, "all").splitlines()
    assert lines[0].startswith("| method | head | pbc accuracy (in-domain) | cross-lab balanced accuracy |")
    rows = results["settings"]["all"]["rows"]
    assert len(lines) == 2 + len(rows) + 1
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first[3] == interval(rows[0]["cross_lab"]["balanced_accuracy"]) and "±" in first[3]
    majority = [c.strip() for c in lines[-1].strip("|").split("|")]
    # bccd and jtsc hold 3 classes each, evenly: a constant answer scores 1/3 on each, pbc (4 classes) 1/4
    assert majority[:3] == ["majority class of each domain", "constant", "25.0"]
    assert majority[3] == "33.3" and majority[5] == "33.3"


def test_counts_table_and_small_classes(results: dict) -> None:
    text = counts_table(results, "all")
    assert "| bccd | 8 | 8 | 8 | 0 | 24 |" in text
    assert results["settings"]["all"]["small_classes"] == {}
    assert interval({"mean": 0.5, "ci95": None}) == "50.0" and interval({"mean": None}) == "–"

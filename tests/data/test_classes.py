from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from dorl.data.classes import (
    CANONICAL_CLASSES,
    canonical_class,
    canonical_classes,
    normalize_name,
    resolve_class_list,
)
from dorl.data.domains import Domain, load_domain
from dorl.errors import ConfigError


@pytest.mark.parametrize(("name", "expected"), [
    ("seg neutrophil", "neutrophil"), ("Segmented_Neutrophil", "neutrophil"), ("band-neutrophil", "neutrophil"),
    ("SNE", "neutrophil"), ("BNE", "neutrophil"), ("neutrophils", "neutrophil"), ("NEUTROPHIL", "neutrophil"),
    ("lymphocytes", "lymphocyte"), ("Lymphocyte", "lymphocyte"), ("monocytes", "monocyte"),
    ("eosinophils", "eosinophil"), ("basophils", "basophil"), ("immature granulocyte", "ig"),
    ("Immature_Granulocytes", "ig"), ("IG", "ig"), ("MMY", "ig"), ("promyelocyte", "ig"),
    ("erythroblasts", "erythroblast"), ("ERB", "erythroblast"), ("platelets", "platelet"),
    ("thrombocyte", "platelet"), ("Thrombocytes", "platelet"), ("  Mono ", "monocyte"), ("NGS", "neutrophil"),
])
def test_aliases_map_to_canonical_names(name: str, expected: str) -> None:
    assert canonical_class(name) == expected


def test_canonical_names_map_to_themselves() -> None:
    assert [canonical_class(c) for c in CANONICAL_CLASSES] == list(CANONICAL_CLASSES)


@pytest.mark.parametrize(("name", "expected"), [
    ("  Smudge__Cell ", "smudge cell"), ("Atypical-Lymphocyte", "atypical lymphocyte"), ("blast", "blast"),
    ("LYA", "lya"), ("hairy\tcell", "hairy cell"),
])
def test_unknown_names_are_kept_normalised(name: str, expected: str) -> None:
    assert canonical_class(name) == expected
    assert normalize_name(name) == expected


@pytest.mark.parametrize("name", ["", "   ", "__", "-"])
def test_empty_name_is_an_error(name: str) -> None:
    with pytest.raises(ConfigError, match="empty"):
        canonical_class(name)


def test_canonical_classes_merge_aliases_in_order() -> None:
    assert canonical_classes(["SNE", "lymphocytes", "BNE", "neutrophil", "blast"]) == ("neutrophil", "lymphocyte", "blast")


@dataclass(frozen=True)
class FakeDomain:
    name: str
    class_names: tuple[str, ...]


ANCHOR = FakeDomain("pbc", ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil"))
OTHER = FakeDomain("jtsc", ("eosinophil", "lymphocyte", "monocyte", "neutrophil"))
THIRD = FakeDomain("bccd", ("lymphocyte", "monocyte", "neutrophil", "platelet"))


def test_anchor_mode_takes_every_anchor_class() -> None:
    assert resolve_class_list([ANCHOR, OTHER]) == ANCHOR.class_names


def test_shared_mode_takes_classes_in_every_domain() -> None:
    assert resolve_class_list([ANCHOR, OTHER, THIRD], mode="shared") == ("lymphocyte", "monocyte", "neutrophil")


def test_explicit_list_keeps_order_and_maps_aliases() -> None:
    assert resolve_class_list([ANCHOR, OTHER], ["Neutrophils", "LYM", "ig"]) == ("neutrophil", "lymphocyte", "ig")


def test_explicit_class_missing_from_anchor() -> None:
    with pytest.raises(ConfigError, match=r"\['platelet'\] are not in the anchor domain 'pbc'"):
        resolve_class_list([ANCHOR, THIRD], ["neutrophil", "platelets"])


def test_explicit_list_repeating_a_class_through_aliases() -> None:
    with pytest.raises(ConfigError, match="more than once"):
        resolve_class_list([ANCHOR], ["SNE", "BNE"])


def test_fewer_than_two_classes_and_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="fewer than two"):
        resolve_class_list([ANCHOR, FakeDomain("x", ("neutrophil", "platelet"))], mode="shared")
    with pytest.raises(ConfigError, match="no domains"):
        resolve_class_list([])
    with pytest.raises(ConfigError, match="unknown class-list mode"):
        resolve_class_list([ANCHOR], mode="union")  # type: ignore[arg-type]


def test_real_domains_share_the_five_wbc_classes(pbc_domain: Domain, masked_domain: Domain, tmp_path: Path) -> None:
    # pbc with two more classes than the other lab, as the full Acevedo-20 set has
    extra = tmp_path / "pbc"
    for name in ("ig", "platelet"):
        (extra / name).mkdir(parents=True)
        shutil.copy(pbc_domain.samples[0].path, extra / name / "cell.jpg")
    for sample in pbc_domain.samples:
        (extra / sample.label).mkdir(exist_ok=True)
        shutil.copy(sample.path, extra / sample.label / sample.path.name)
    pbc = load_domain("pbc", extra)
    assert len(resolve_class_list([pbc, masked_domain])) == 7
    shared = resolve_class_list([pbc, masked_domain], mode="shared")
    assert shared == ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")

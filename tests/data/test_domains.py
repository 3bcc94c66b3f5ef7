from __future__ import annotations

from pathlib import Path

import pytest

from dorl.data.domains import Domain, Sample, load_domain, load_domains, parse_domain_option
from dorl.errors import ConfigError


def test_bundled_pbc_loads_80_images_in_5_classes(pbc_domain: Domain) -> None:
    assert len(pbc_domain) == 80
    assert pbc_domain.summary() == {c: 16 for c in ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")}
    assert pbc_domain.skipped == () and pbc_domain.num_masks == 0
    assert all(s.path.parent.name == s.label for s in pbc_domain.samples)


def test_finds_every_mask_and_masks_is_not_a_class(masked_domain: Domain) -> None:
    assert len(masked_domain) == 51 and masked_domain.num_masks == 51
    assert "masks" not in masked_domain.class_names
    assert masked_domain.summary() == {"basophil": 3, "eosinophil": 12, "lymphocyte": 12, "monocyte": 12,
                                       "neutrophil": 12}
    for s in masked_domain.samples:
        assert s.mask_path == masked_domain.root / "masks" / s.label / f"{s.path.stem}.png"
    assert "51 images" in masked_domain.describe() and "51 masks" in masked_domain.describe()


@pytest.mark.shared_data
def test_jtsc_finds_every_expert_mask(jtsc_domain: Domain) -> None:
    assert len(jtsc_domain) == 100 and jtsc_domain.num_masks == 100
    assert jtsc_domain.summary() == {"basophil": 1, "eosinophil": 6, "lymphocyte": 16, "monocyte": 18, "neutrophil": 59}


def test_bccd_with_a_class_list(bccd_root: Path) -> None:
    domain = load_domain("bccd", bccd_root, classes=["Neutrophils", "eosinophil"], check=False)
    assert domain.summary() == {"eosinophil": 12, "neutrophil": 12}
    assert domain.ignored_classes == ("basophil", "lymphocyte", "monocyte")


def test_messy_tree_reports_every_unusable_file(messy_domain: Path) -> None:
    domain = load_domain("lab", messy_domain)
    names = {s.path.name: s for s in domain.samples}
    assert sorted(names) == ["a.jpg", "b.jpeg", "deep16.tif", "gray.png", "nested.PNG"]
    assert domain.summary() == {"lymphocyte": 3, "neutrophil": 2}  # "SNE" and "Neutrophils" merge
    assert names["a.jpg"].mask_path == messy_domain / "masks" / "SNE" / "a.png"
    assert names["gray.png"].mask_path is None  # its mask is corrupt: kept without it, reported
    reasons = {p.name: r for p, r in domain.skipped}
    assert set(reasons) == {"broken.jpg", "notes.jpg", "README.txt", "index.csv", "gray.png"}
    assert "truncated or corrupt" in reasons["broken.jpg"]
    assert "not an image PIL can read" in reasons["notes.jpg"]
    assert "not an image file" in reasons["README.txt"]
    assert "not inside a class folder" in reasons["index.csv"]
    assert "kept without a mask" in reasons["gray.png"]


def test_without_check_nothing_is_decoded(messy_domain: Path) -> None:
    domain = load_domain("lab", messy_domain, check=False)
    assert {s.path.name for s in domain.samples} >= {"broken.jpg", "notes.jpg"}
    assert {p.name for p, _ in domain.skipped} == {"README.txt", "index.csv"}


def test_folder_without_usable_images(tmp_path: Path) -> None:
    (tmp_path / "neutrophil").mkdir()
    (tmp_path / "neutrophil" / "x.jpg").write_text("text")
    with pytest.raises(ConfigError, match=r"no usable images .*not an image PIL can read"):
        load_domain("empty", tmp_path)
    with pytest.raises(ConfigError, match="no usable images"):
        load_domain("empty", tmp_path / "neutrophil")  # images directly in the root are not in a class


def test_domain_is_frozen_and_counts() -> None:
    domain = Domain("d", Path("."), (Sample(Path("a.png"), "b"), Sample(Path("c.png"), "a"), Sample(Path("d.png"), "b")))
    assert domain.class_names == ("a", "b") and domain.labels == ("b", "a", "b")
    assert domain.summary() == {"a": 1, "b": 2}
    with pytest.raises(AttributeError):
        domain.name = "other"  # type: ignore[misc]


def test_parse_domain_option(tmp_path: Path) -> None:
    assert parse_domain_option(f" pbc = {tmp_path} ") == ("pbc", tmp_path)
    assert parse_domain_option(f"lab-2.b_x={tmp_path}") == ("lab-2.b_x", tmp_path)


@pytest.mark.parametrize(("option", "message"), [
    ("pbc", "has no '='"),
    ("=data/pbc", "empty name"),
    ("p b c={tmp}", "must start with a letter or digit"),
    ("-x={tmp}", "must start with a letter or digit"),
    ("pbc=", "empty path"),
    ("pbc={tmp}/missing", "does not exist"),
    ("pbc={tmp}/file.txt", "is a file, not a folder"),
])
def test_parse_domain_option_errors(tmp_path: Path, option: str, message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match=message):
        parse_domain_option(option.format(tmp=tmp_path))


def test_load_domains_keeps_order_anchor_first(messy_domain: Path, tmp_path: Path, write_image) -> None:  # type: ignore[no-untyped-def]
    write_image(tmp_path / "other" / "monocyte" / "m.png")
    domains = load_domains([f"lab={messy_domain}", ("other", tmp_path / "other")])
    assert [d.name for d in domains] == ["lab", "other"]
    assert domains[1].summary() == {"monocyte": 1}


def test_load_domains_errors(messy_domain: Path) -> None:
    with pytest.raises(ConfigError, match="more than once"):
        load_domains([f"lab={messy_domain}", f"lab={messy_domain}"])
    with pytest.raises(ConfigError, match="no domains"):
        load_domains([])
    with pytest.raises(ConfigError, match="has no '='"):
        load_domains([str(messy_domain)])


def test_lab_folders_as_labs_spell_them(tmp_path: Path, write_image) -> None:  # type: ignore[no-untyped-def]
    import os
    import unicodedata

    lab = tmp_path / "lab"
    write_image(lab / "Neutrophils" / "a.jpg")
    write_image(tmp_path / "share" / "more" / "b.jpg")
    os.symlink(tmp_path / "share", lab / "Neutrophils" / "linked")  # a linked sub-folder is followed
    os.symlink(lab / "Neutrophils", lab / "Neutrophils" / "loop")  # a link back up is walked once
    write_image(lab / "Masks" / "neutrophil" / "a.png", mode="L")  # the masks folder, capitalised and spelt apart
    write_image(lab / unicodedata.normalize("NFD", "Lymphocyté") / "c.jpg")
    domain = load_domain("lab", lab)
    assert sorted(p.name for p in (s.path for s in domain.samples)) == ["a.jpg", "b.jpg", "c.jpg"]
    assert "masks" not in domain.class_names and domain.num_masks == 1
    other = tmp_path / "other"
    write_image(other / unicodedata.normalize("NFC", "Lymphocyté") / "d.jpg")
    (spelt,) = load_domain("other", other).class_names
    assert spelt in domain.class_names  # the Mac's (NFD) é is the Linux's (NFC) é


def test_a_lab_without_the_classes_asked_for_says_so(tmp_path: Path, write_image) -> None:  # type: ignore[no-untyped-def]
    write_image(tmp_path / "lab" / "monocyte" / "a.jpg")
    with pytest.raises(ConfigError, match="holds none of the classes asked for \\(it has monocyte; asked: neutrophil\\)"):
        load_domain("lab", tmp_path / "lab", classes=["neutrophil"])

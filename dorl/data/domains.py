"""Domains as data: one lab's cell images, one folder per class, optional expert masks.

A domain root is an ImageFolder tree, `<root>/<class>/<image>` (class folders may nest
sub-folders), with optional masks mirroring it under `<root>/masks/<class>/<stem>.png`; see
`../shared/data/wbc/README.md`. Class folder names are mapped to canonical names
(`dorl.data.classes`). Files that cannot be used are listed in `Domain.skipped` with the reason,
never dropped silently. The first domain of a run is the anchor (source) domain.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dorl.data.classes import canonical_class
from dorl.data.images import IMAGE_SUFFIXES, load_rgb
from dorl.data.masks import read_mask
from dorl.data.scan import scan_images
from dorl.errors import ConfigError, ImageError

MASKS_FOLDER = "masks"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class Sample:
    """One cell image with its canonical class label and, when an expert drew one, its mask."""

    path: Path
    label: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class Domain:
    """The usable images of one domain, and every file that was left out with the reason.

    `ignored_classes` are class folders left out on purpose because a class list was given.
    """

    name: str
    root: Path
    samples: tuple[Sample, ...]
    skipped: tuple[tuple[Path, str], ...] = ()
    ignored_classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The canonical classes that have at least one sample, sorted."""
        return tuple(sorted({s.label for s in self.samples}))

    @property
    def labels(self) -> tuple[str, ...]:
        """The label of every sample, in sample order."""
        return tuple(s.label for s in self.samples)

    @property
    def num_masks(self) -> int:
        """How many samples have an expert mask."""
        return sum(s.mask_path is not None for s in self.samples)

    def summary(self) -> dict[str, int]:
        """Number of samples per class, classes sorted by name."""
        counts = Counter(self.labels)
        return {name: counts[name] for name in sorted(counts)}

    def describe(self) -> str:
        """One line for reports: name, counts per class, masks and skipped files."""
        per_class = ", ".join(f"{k} {v}" for k, v in self.summary().items())
        return (f"{self.name} ({self.root}): {len(self)} images ({per_class}); "
                f"{self.num_masks} masks; {len(self.skipped)} skipped")


def parse_domain_option(option: str) -> tuple[str, Path]:
    """Parse one `--domain NAME=PATH` value.

    Args:
        option: "NAME=PATH", e.g. "pbc=../shared/data/wbc/pbc".

    Returns:
        The name and the folder path (user-expanded).

    Raises:
        ConfigError: no '=', an empty or unusable name, an empty path, or a path that is not an
            existing folder.
    """
    if "=" not in option:
        raise ConfigError(f"--domain {option!r} has no '=': write it as NAME=PATH, e.g. pbc=data/wbc/pbc.")
    name, _, raw_path = option.partition("=")
    name, raw_path = name.strip(), raw_path.strip()
    if not name:
        raise ConfigError(f"--domain {option!r} has an empty name: write it as NAME=PATH, e.g. pbc=data/wbc/pbc.")
    _check_name(name)
    if not raw_path:
        raise ConfigError(f"--domain {option!r} has an empty path: give the domain's folder after '='.")
    path = Path(raw_path).expanduser()
    if not path.exists():
        raise ConfigError(f"domain {name!r}: folder {path} does not exist; check the path.")
    if not path.is_dir():
        raise ConfigError(f"domain {name!r}: {path} is a file, not a folder of class folders.")
    return name, path


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"domain name {name!r} must start with a letter or digit and hold only "
                          "letters, digits, '_', '-' and '.'.")


def _mask_folders(root: Path, folder: str) -> list[Path]:
    """Where the masks of the class folder `folder` may be: its namesakes in the domain's masks folder (that
    folder's name in any case, the class under any of its spellings: "Neutrophils" and "neutrophil")."""
    masks = next((e for e in sorted(root.iterdir()) if e.is_dir() and e.name.lower() == MASKS_FOLDER), None)
    if masks is None:
        return []
    label = canonical_class(folder)
    return [e for e in sorted(masks.iterdir()) if e.is_dir() and (e.name == folder or canonical_class(e.name) == label)]


def _mask_for(candidates: list[Path], relative: Path) -> Path | None:
    return next((m for m in (c / relative.with_suffix(".png") for c in candidates) if m.is_file()), None)


def _check_sample(sample: Sample) -> tuple[Sample | None, tuple[Path, str] | None]:
    """Decode a sample's image and mask: (the sample, or None if unusable; the skipped entry)."""
    try:
        load_rgb(sample.path)
    except ImageError as exc:
        return None, (sample.path, str(exc))
    if sample.mask_path is not None:
        try:
            read_mask(sample.mask_path)
        except ImageError as exc:
            return Sample(sample.path, sample.label), (sample.mask_path, f"{exc} The image is kept without a mask.")
    return sample, None


def _scan_class_folder(root: Path, folder: Path, label: str, skipped: list[tuple[Path, str]]) -> list[Sample]:
    scan = scan_images([folder])  # linked sub-folders followed, each folder once; links that go nowhere are said
    skipped.extend((entry.path, str(entry.problem)) for entry in scan.problems)
    for path in scan.ignored:  # hidden files, and a folder reached a second time, pass without a word
        if not path.name.startswith(".") and not path.is_dir():
            reason = f"not an image file (suffix {path.suffix or 'none'!r}; expected one of {', '.join(IMAGE_SUFFIXES)})"
            skipped.append((path, reason))
    masks = _mask_folders(root, folder.name)
    return [Sample(path, label, _mask_for(masks, path.relative_to(folder))) for path in sorted(scan.files)]


def load_domain(name: str, root: str | Path, classes: Iterable[str] | None = None, check: bool = True) -> Domain:
    """Load one domain from its ImageFolder tree.

    Args:
        name: the domain's name in reports (e.g. "pbc").
        root: the folder holding one sub-folder per class (and optionally masks/).
        classes: keep only these classes (any spelling); other class folders are listed in
            `ignored_classes`. None keeps every class.
        check: decode every image (and mask) to find unreadable files; they go to `skipped`.

    Returns:
        The domain, samples sorted by class folder then path.

    Raises:
        ConfigError: the root is not a folder, or no usable image was found.
    """
    _check_name(name)
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"domain {name!r}: {root} is not a folder; check the path.")
    wanted = None if classes is None else {canonical_class(c) for c in classes}
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    ignored: set[str] = set()
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or (entry.is_dir() and entry.name.lower() == MASKS_FOLDER):
            continue
        if not entry.is_dir():
            skipped.append((entry, "a file directly in the domain folder, not inside a class folder"))
            continue
        label = canonical_class(entry.name)
        if wanted is not None and label not in wanted:
            ignored.add(label)
            continue
        samples.extend(_scan_class_folder(root, entry, label, skipped))
    if check:
        # PIL releases the GIL while decoding, so threads share the decoding of a few thousand files.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            checked = list(pool.map(_check_sample, samples))
        skipped.extend(entry for _, entry in checked if entry is not None)
        samples = [sample for sample, _ in checked if sample is not None]
    if not samples and ignored and not skipped:
        raise ConfigError(f"domain {name!r}: {root} holds none of the classes asked for (it has "
                          f"{', '.join(sorted(ignored))}; asked: {', '.join(sorted(wanted or ()))}): give a lab with "
                          "cells of those classes, or train with its classes.")
    if not samples:
        detail = f" ({len(skipped)} files skipped, first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise ConfigError(f"domain {name!r}: no usable images under {root}{detail}; it must hold one "
                          f"folder per class with images ({', '.join(IMAGE_SUFFIXES)}) inside.")
    return Domain(name, root, tuple(samples), tuple(skipped), tuple(sorted(ignored)))


def load_domains(specs: Sequence[str | tuple[str, str | Path]], classes: Iterable[str] | None = None,
                 check: bool = True) -> list[Domain]:
    """Load several domains; the first is the anchor (source) domain.

    Args:
        specs: "NAME=PATH" strings (the CLI's repeatable --domain) or (name, path) pairs.
        classes: passed to every `load_domain`.
        check: passed to every `load_domain`.

    Returns:
        The domains, in the order given.

    Raises:
        ConfigError: no specs, a malformed spec, or a name given twice.
    """
    if not specs:
        raise ConfigError("no domains given: pass at least one --domain NAME=PATH.")
    class_list = None if classes is None else list(classes)
    parsed = [parse_domain_option(s) if isinstance(s, str) else (s[0], Path(s[1])) for s in specs]
    names = [n for n, _ in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"domain names {repeated} are given more than once: give each domain its own name.")
    return [load_domain(n, p, class_list, check) for n, p in parsed]

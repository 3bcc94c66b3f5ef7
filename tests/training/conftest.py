"""Fixtures of the training tests: a handful of real cells per lab and a tiny model config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sample_data import MASKED

from dorl.config import ModelConfig
from dorl.data.domains import Domain, load_domain

CLASSES = ModelConfig().class_names


def small_domain(wbc_dir: Path, name: str, per_class: int) -> Domain:
    """A real domain cut to `per_class` cells of each of the model's classes (fewer where it has fewer)."""
    domain = load_domain(name, wbc_dir / name, classes=CLASSES, check=False)
    kept: dict[str, list] = {}
    for sample in domain.samples:
        if len(kept.setdefault(sample.label, [])) < per_class:
            kept[sample.label].append(sample)
    return dataclasses.replace(domain, samples=tuple(s for group in kept.values() for s in group))


@pytest.fixture(scope="session")
def tiny_domains(wbc_dir: Path) -> list[Domain]:
    """pbc (anchor, 3 per class), bccd (2 per class), the made lab with masks (2 per class)."""
    return [small_domain(wbc_dir, "pbc", 3), small_domain(wbc_dir, "bccd", 2), small_domain(wbc_dir, MASKED, 2)]

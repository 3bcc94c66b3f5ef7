"""White-blood-cell class names: one spelling per class, whichever lab wrote the folder names.

Each lab names its class folders its own way ("SNE", "Segmented_neutrophil", "NEUTROPHILS",
"immature granulocytes"). `canonical_class` maps all of them to one name so that domains can be
compared class by class; names it does not know are kept, only normalised, so a new dataset's
classes still load. `resolve_class_list` then fixes the explicit class list a model is trained
on and saved with.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

from dorl.errors import ConfigError

CANONICAL_CLASSES = (
    "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet",
)

# Normalised alias -> canonical name. Plurals need no entry (see `canonical_class`). The short
# codes are Acevedo-20's file prefixes (SNE, BNE, MMY, MY, PMY, ERB...) and Matek-19's folder
# names (NGS, NGB, LYT, MON, EOS, BAS, EBO, MMZ, MYB, PMO). Acevedo-20 groups metamyelocytes,
# myelocytes and promyelocytes as "ig"; so do we.
_ALIASES = {
    "neutrophil": ("seg neutrophil", "segmented neutrophil", "band neutrophil", "band", "segmented",
                   "sne", "bne", "neu", "neut", "ngs", "ngb", "neutrophilic granulocyte"),
    "lymphocyte": ("lym", "lymph", "lympho", "lyt", "typical lymphocyte", "small lymphocyte",
                   "large lymphocyte"),
    "monocyte": ("mon", "mono", "mo"),
    "eosinophil": ("eos", "eo", "eosinophilic granulocyte"),
    "basophil": ("bas", "baso", "ba", "basophilic granulocyte"),
    "ig": ("immature granulocyte", "immature granulocytes", "metamyelocyte", "myelocyte", "promyelocyte",
           "mmy", "my", "pmy", "mmz", "myb", "pmo"),
    "erythroblast": ("erb", "ebo", "nrbc", "normoblast", "nucleated red blood cell", "nucleated rbc"),
    "platelet": ("thrombocyte", "plt", "giant platelet"),
}
_ALIAS_TO_CLASS = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}
_ALIAS_TO_CLASS.update({name: name for name in CANONICAL_CLASSES})


def normalize_name(name: str) -> str:
    """Lower-case a name (in Unicode's composed form: a Mac's and a Linux's "é" are one letter) and turn
    underscores, hyphens and runs of white space into one space."""
    return re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFC", name)).strip().lower()


def canonical_class(name: str) -> str:
    """The canonical name of a white-blood-cell class.

    Args:
        name: a class name as a dataset spells it ("SNE", "Band_Neutrophil", "lymphocytes").

    Returns:
        One of `CANONICAL_CLASSES` when the name (or its singular) is a known alias; otherwise the
        normalised name (lower case, single spaces), so unknown classes are kept, not rejected.

    Raises:
        ConfigError: the name is empty once normalised.
    """
    key = normalize_name(name)
    if not key:
        raise ConfigError(f"class name {name!r} is empty: give each class folder a name.")
    if key in _ALIAS_TO_CLASS:
        return _ALIAS_TO_CLASS[key]
    if key.endswith("s") and key[:-1] in _ALIAS_TO_CLASS:
        return _ALIAS_TO_CLASS[key[:-1]]
    return key


def canonical_classes(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical names of `names`, in order, each once (aliases of one class merge)."""
    return tuple(dict.fromkeys(canonical_class(n) for n in names))


class HasClasses(Protocol):
    """Anything with a name and the class names it holds (a `dorl.data.domains.Domain`)."""

    @property
    def name(self) -> str: ...

    @property
    def class_names(self) -> tuple[str, ...]: ...


def resolve_class_list(
    domains: Sequence[HasClasses],
    classes: Sequence[str] | None = None,
    mode: Literal["anchor", "shared"] = "anchor",
) -> tuple[str, ...]:
    """The explicit class list a model is trained on and saved with.

    Args:
        domains: the loaded domains; the first is the anchor (source) domain.
        classes: an explicit list (any spelling); it wins over `mode`. Each class must be in the
            anchor domain, since the classifier learns only from it.
        mode: "anchor": every class of the anchor domain; "shared": only the classes present in
            every domain (the protocol of cross-domain tables).

    Returns:
        Canonical class names: in the given order for an explicit list, else sorted.

    Raises:
        ConfigError: no domains, an unknown mode, a repeated or missing class, or fewer than two
            classes in the result.
    """
    if not domains:
        raise ConfigError("no domains given: pass at least one --domain NAME=PATH.")
    anchor = domains[0]
    if classes is not None:
        resolved = tuple(canonical_class(c) for c in classes)
        repeated = sorted({c for c in resolved if resolved.count(c) > 1})
        if repeated:
            raise ConfigError(f"classes {repeated} are given more than once (after alias mapping): list each once.")
        missing = [c for c in resolved if c not in anchor.class_names]
        if missing:
            raise ConfigError(
                f"classes {missing} are not in the anchor domain {anchor.name!r}, which has "
                f"{list(anchor.class_names)}: drop them or choose another anchor domain."
            )
    elif mode == "anchor":
        resolved = tuple(sorted(anchor.class_names))
    elif mode == "shared":
        shared = set(anchor.class_names).intersection(*(d.class_names for d in domains[1:]))
        resolved = tuple(sorted(shared))
    else:
        raise ConfigError(f"unknown class-list mode {mode!r}: choose 'anchor' or 'shared'.")
    if len(resolved) < 2:
        per_domain = "; ".join(f"{d.name}: {list(d.class_names)}" for d in domains)
        raise ConfigError(f"the class list {list(resolved)} has fewer than two classes ({per_domain}): "
                          "a classifier needs at least two; check the class folders.")
    return resolved

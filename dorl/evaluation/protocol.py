"""The paper's cross-domain protocol on plain feature arrays.

For every fold of a stratified k-fold split of the source domain, repeated with several
seeds (1234, 1235, 1236 by default: every seed splits anew and seeds the head), each head
(standard scaler + linear SVM, logistic regression or MLP: the heads `dorl train` fits) is
fit on the source training folds, then tested on the held-out fold (in-domain) and on *all*
of every other domain.
Balanced accuracy (the headline: a constant answer cannot score well on it), macro-F1 and
accuracy are reported as mean ± std with a 95 % interval over the seeds x folds values, with
per-class recall and a confusion matrix summed over them; each domain's class counts and
the score of its majority class stand beside them.

Two class settings: `all` trains on every source class and scores each target on its own
labels (a target cell of a class the source lacks is always wrong); `shared` restricts
training and every test set to the classes present in the source and in every target.

A method is a name and `dict[domain -> (X, y)]` (plus an optional transform run after the
class restriction, `dorl.evaluation.domain_maps`), so new rows (baselines, site adaptation)
are other arrays, not other code. X is [N, D], or [N, V, D] for test-time augmentation: V views
of each cell, the plain view first. The heads are fit on the plain view alone, as `dorl train`
fits the deployed head, and a cell's label is the argmax of its probabilities averaged over its
views, as the analyzer decides with `--tta`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dorl.data.splits import stratified_kfold
from dorl.errors import ConfigError
from dorl.evaluation.metrics import FoldSummary, MeanStd, Scores, majority_scores, summarise
from dorl.training.config import HEAD_KINDS, HeadTrainConfig
from dorl.training.progress import NullReporter, Reporter

DomainArrays = Mapping[str, tuple[np.ndarray, np.ndarray]]
Transform = Callable[[DomainArrays], DomainArrays]
HEADS = HEAD_KINDS
SETTINGS = ("all", "shared")
METRIC_NAMES = ("balanced_accuracy", "macro_f1", "accuracy")
SMALL_CLASS = 5  # a class with fewer cells than this in a test domain is named as such: its recall is noise


@dataclass(frozen=True)
class Protocol:
    """What the protocol varies: the source domain, the heads, the folds, the seeds, the class settings."""

    source: str
    heads: tuple[str, ...] = HEADS
    folds: int = 5
    seed: int = 1234  # the first seed; the others follow it (seed + 1, ...)
    repeats: int = 3  # how many seeds split the source and seed the heads
    settings: tuple[str, ...] = SETTINGS

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + i for i in range(self.repeats))

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"the protocol needs at least 1 seed, got repeats={self.repeats}.")
        if not self.settings or any(s not in SETTINGS for s in self.settings):
            raise ConfigError(f"class settings must be among {', '.join(SETTINGS)}, got {list(self.settings)}.")
        bad = [h for h in self.heads if h not in HEADS]
        if bad or not self.heads:
            raise ConfigError(f"unknown heads {bad or '(none)'}: choose among {', '.join(HEADS)}.")
        if self.folds < 2:
            raise ConfigError(f"cross-validation needs at least 2 folds, got {self.folds}.")


@dataclass(frozen=True)
class Method:
    """One row family of the table: a name, every domain's (features, labels), and optionally a
    transform applied after the class setting's restriction (e.g. per-domain standardisation,
    so that its statistics come from the cells the setting keeps)."""

    name: str
    domains: DomainArrays
    transform: Transform | None = None
    tags: Mapping[str, str] = field(default_factory=dict)  # e.g. feature, framing, adaptation (for comparisons)

    def arrays(self, classes: Sequence[Any] | None = None) -> DomainArrays:
        """The domains restricted to `classes` (None: all), then transformed."""
        data = self.domains if classes is None else restrict(self.domains, classes)
        return self.transform(data) if self.transform is not None else data


@dataclass(frozen=True)
class Row:
    """One method with one head in one class setting: a summary per test domain."""

    method: str
    head: str
    domains: dict[str, FoldSummary]
    source: str
    tags: Mapping[str, str] = field(default_factory=dict)

    def average(self, targets_only: bool = True, metric: str = "accuracy") -> MeanStd:
        """Per-split mean of `metric` over the target domains (or over every column, as the paper's table)."""
        names = [d for d in self.domains if d != self.source or not targets_only]
        if not names:
            return MeanStd.of([])
        per_fold = np.mean([getattr(self.domains[d], metric).folds for d in names], axis=0)
        return MeanStd.of(per_fold.tolist())

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "head": self.head,
            "tags": dict(self.tags),
            "domains": {d: s.to_dict() for d, s in self.domains.items()},
            "cross_lab": {m: self.average(True, m).to_dict() for m in METRIC_NAMES},
            "cross_domain_average": self.average(True).to_dict(),
            "average_all_columns": self.average(False).to_dict(),
        }


@dataclass
class Evaluation:
    """Every row of both class settings, in the order the methods were given."""

    protocol: Protocol
    domains: tuple[str, ...]  # the source first
    classes: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # setting -> classes the heads learn
    rows: dict[str, list[Row]] = field(default_factory=dict)  # setting -> rows
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # what was evaluated (bundle, domains, schedules)
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # setting -> domain -> class -> cells
    majority: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # setting -> domain -> scores
    comparisons: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # setting -> paired differences

    def to_dict(self) -> dict[str, Any]:
        p = self.protocol
        return {
            "source": p.source,
            "targets": [d for d in self.domains if d != p.source],
            "protocol": {"heads": list(p.heads), "folds": p.folds, "seed": p.seed, "seeds": list(p.seeds),
                         "split": "StratifiedKFold(shuffle=True), one split per seed",
                         "std": "population (ddof=0)", "ci95": "Student t over the seeds x folds values"},
            "settings": {s: {"classes": [str(c) for c in self.classes[s]], "rows": [r.to_dict() for r in rows],
                             "class_counts": self.counts.get(s, {}), "majority": self.majority.get(s, {}),
                             "small_classes": small_classes(self.counts.get(s, {})),
                             "comparisons": self.comparisons.get(s, [])}
                         for s, rows in self.rows.items()},
            "notes": list(self.notes),
            "info": dict(self.info),
        }


def class_counts(domains: DomainArrays) -> dict[str, dict[str, int]]:
    """domain -> class -> number of cells."""
    out = {}
    for name, (_, y) in domains.items():
        labels, counts = np.unique(np.asarray(y), return_counts=True)
        out[name] = {str(label): int(n) for label, n in zip(labels.tolist(), counts.tolist())}
    return out


def small_classes(counts: Mapping[str, Mapping[str, int]], below: int = SMALL_CLASS) -> dict[str, list[str]]:
    """domain -> its classes with fewer than `below` cells (their recall rests on a handful of cells)."""
    return {d: sorted(c for c, n in per_class.items() if n < below) for d, per_class in counts.items()
            if any(n < below for n in per_class.values())}


def plain_view(x: np.ndarray) -> np.ndarray:
    """The plain view's features [N, D] of features [N, D] or [N, V, D]."""
    return x if np.ndim(x) == 2 else x[:, 0]


def fit_predictor(kind: str, x: np.ndarray, y: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Fit the training stage's head (scaler + classifier) on (x, y); return its label predictor.

    The head is the one `dorl train` deploys (`dorl.training.heads.fit_head`), so the table
    scores the classifier that ends up in the exported graph. It is fit on the plain view of x; the
    predictor takes features [N, D], or [N, V, D] and averages the head's probabilities over the views.
    """
    from dorl.training.heads import fit_head  # imports torch: only when a head is fit

    classes, index = np.unique(y, return_inverse=True)
    fitted = fit_head(np.asarray(plain_view(x), dtype=np.float32), index, HeadTrainConfig(kind=kind), seed)

    def predict(features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float32)
        if f.ndim == 2:
            return classes[fitted.predict(f)]
        probs = np.mean([fitted.probabilities(f[:, v]) for v in range(f.shape[1])], axis=0)
        return classes[fitted.classes[probs.argmax(axis=1)]]

    return predict


def shared_classes(domains: DomainArrays, source: str) -> list[Any]:
    """Classes of the source present in every other domain, in sorted order."""
    common = set(np.unique(domains[source][1]).tolist())
    for name, (_, y) in domains.items():
        if name != source:
            common &= set(np.unique(y).tolist())
    return sorted(common)


def restrict(domains: DomainArrays, classes: Sequence[Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keep only the cells whose label is in `classes`."""
    out = {}
    for name, (x, y) in domains.items():
        keep = np.isin(y, np.asarray(list(classes)))
        out[name] = (x[keep], y[keep])
    return out


def check_source(y: Any, protocol: Protocol) -> None:
    """Refuse source labels the cross-validation cannot split (checked before any token is computed).

    Raises:
        ConfigError: fewer than 2 classes, or a class with fewer cells than folds.
    """
    _, counts = np.unique(np.asarray(y), return_counts=True)
    if counts.size < 2:
        raise ConfigError(f"the source domain {protocol.source!r} holds fewer than 2 classes: nothing to classify.")
    if counts.min() < protocol.folds:
        raise ConfigError(f"the smallest class of the source domain {protocol.source!r} has {counts.min()} cells, "
                          f"fewer than the {protocol.folds} folds: add cells or lower --folds.")


def _splits(y: np.ndarray, protocol: Protocol) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(seed, train indices, test indices) of every fold of every seed's split."""
    check_source(y, protocol)
    return [(seed, train, test) for seed in protocol.seeds for train, test in stratified_kfold(y, protocol.folds, seed)]


def _check_arrays(method: str, arrays: DomainArrays, domains: tuple[str, ...]) -> None:
    if set(arrays) != set(domains):
        raise ConfigError(f"method {method!r} holds domains {list(arrays)}, not {list(domains)} as the first method.")
    for name, (x, y) in arrays.items():
        if np.ndim(x) not in (2, 3) or len(x) != len(y) or len(y) == 0:
            raise ConfigError(f"method {method!r}, domain {name!r}: need features [N,D] (or [N,V,D] with V views) "
                              f"and N labels with N > 0, got {np.shape(x)} and {np.shape(y)}.")


def _labels(y: np.ndarray) -> list[Any]:
    return sorted(np.unique(y).tolist())


def evaluate_method(name: str, domains: DomainArrays, protocol: Protocol,
                    tags: Mapping[str, str] | None = None) -> list[Row]:
    """Run the protocol for one method's features: one row per head.

    Args:
        name: the method's name in the report.
        domains: domain -> (features [N,D], labels [N]); must hold `protocol.source`.
        protocol: source, heads, folds, seeds.
        tags: what the method is (feature, framing, adaptation), copied to its rows.

    Returns:
        One `Row` per head; its domains are the source first, then the others in the given order;
        every score holds one value per seed and fold (seed-major).
    """
    x_src, y_src = domains[protocol.source]
    classes = _labels(y_src)
    order = [protocol.source] + [d for d in domains if d != protocol.source]
    scores: dict[tuple[str, str], list[Scores]] = {(h, d): [] for h in protocol.heads for d in order}
    for seed, train, test in _splits(y_src, protocol):
        for head in protocol.heads:
            predict = fit_predictor(head, x_src[train], y_src[train], seed)
            for d in order:
                x, y = (x_src[test], y_src[test]) if d == protocol.source else domains[d]
                scores[head, d].append(Scores.of(y, predict(x), _labels(domains[d][1]), classes))
    return [Row(name, h, {d: summarise(scores[h, d], _labels(domains[d][1]), classes) for d in order},
                protocol.source, dict(tags or {})) for h in protocol.heads]


def evaluate(methods: Sequence[Method | tuple[str, DomainArrays]], protocol: Protocol,
             reporter: Reporter | None = None) -> Evaluation:
    """Run the protocol for every method in both class settings.

    Args:
        methods: `Method`s or (name, domain -> (X, y)) pairs; every method must hold the same domains.
        protocol: source, heads, folds, seed.
        reporter: progress, one step per method and class setting.

    Returns:
        The rows of both settings; the `shared` setting is skipped (with a note) when fewer
        than two classes are shared.
    """
    if not methods:
        raise ConfigError("nothing to evaluate: give at least one method's features.")
    rows_of = [m if isinstance(m, Method) else Method(*m) for m in methods]
    domains = tuple(rows_of[0].domains)
    if protocol.source not in domains:
        raise ConfigError(f"the source domain {protocol.source!r} is not among the domains {list(domains)}.")
    for method in rows_of:
        _check_arrays(method.name, method.domains, domains)
    ordered = (protocol.source, *[d for d in domains if d != protocol.source])
    result = Evaluation(protocol, ordered)
    shared = shared_classes(rows_of[0].domains, protocol.source)
    result.classes["all"] = tuple(_labels(rows_of[0].domains[protocol.source][1]))
    reporter = reporter or NullReporter()
    reporter.start("cross-validation", len(protocol.settings) * len(methods))
    for setting in protocol.settings:
        if setting == "shared" and len(shared) < 2:
            result.notes.append(f"classes shared by every domain: {shared}; fewer than 2, so no `shared` scores.")
            reporter.advance("cross-validation", len(methods))
            continue
        if setting == "shared":
            result.classes["shared"] = tuple(shared)
        result.rows[setting] = []
        for i, method in enumerate(rows_of):
            data = method.arrays(shared if setting == "shared" else None)
            if i == 0:  # the labels are every method's: count them once
                result.counts[setting] = class_counts(data)
                result.majority[setting] = {d: majority_scores(y) for d, (_, y) in data.items()}
            result.rows[setting].extend(evaluate_method(method.name, data, protocol, method.tags))
            reporter.advance("cross-validation")
    reporter.finish("cross-validation")
    return result


"""Stage 3: the classifier on the anchor domain's CAE CLS features, and its torch form.

The heads are DoRL's: a linear SVM (scikit-learn `LinearSVC`, one-vs-rest, so the decision
is one linear layer), logistic regression, or an MLP with 100 hidden units, each behind a
`StandardScaler` fit on the source features. `to_torch_head` copies the fitted head into the
model's `LinearHead`/`MLPHead` and folds the scaler into its first Linear, so the deployed
graph computes exactly scikit-learn's decision function: the logits are `decision_function`
(linear heads) or the MLP's output before softmax (`softmax(logits) == predict_proba`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from dorl.errors import ConfigError
from dorl.models.heads import LinearHead, MLPHead, fold_scaler
from dorl.training.config import HeadTrainConfig
from dorl.training.features import cae_features

ABSENT_BIAS = -1e4  # logit of a class the source domain has no cell of: never predicted


@dataclass
class FittedHead:
    """A scaler + classifier fit on source features; `classes` are the class indices it saw."""

    kind: str
    scaler: Any  # sklearn StandardScaler
    classifier: Any  # LinearSVC, LogisticRegression or MLPClassifier
    classes: np.ndarray

    def decision(self, features: np.ndarray) -> np.ndarray:
        """scikit-learn's decision_function (linear heads) or predict_proba (MLP) on raw features."""
        scaled = self.scaler.transform(features)
        if self.kind == "mlp":
            return self.classifier.predict_proba(scaled)
        return self.classifier.decision_function(scaled)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """The deployed graph's `probs` over `classes` [N, K]: softmax of the decision function (linear
        heads; a two-class head's single column d is the logits [0, d], as exported) or the MLP's
        predict_proba."""
        from dorl.contract import softmax

        decision = self.decision(features)
        if self.kind == "mlp":
            return np.asarray(decision, dtype=np.float32)
        if decision.ndim == 1:
            decision = np.stack([np.zeros_like(decision), decision], axis=1)
        return softmax(decision)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class indices."""
        return self.classifier.predict(self.scaler.transform(features))


def make_classifier(config: HeadTrainConfig, seed: int = 1234, num_cells: int | None = None,
                    num_classes: int = 2) -> Any:
    """An unfitted scikit-learn classifier for `config.kind`.

    The MLP's early stopping holds out 10 % of the cells; with too few cells for every class
    to be in that split (tiny data sets) it is switched off.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import LinearSVC

    if config.kind == "svm":
        return LinearSVC(C=config.c, max_iter=config.max_iter, random_state=seed)
    if config.kind == "logreg":
        return LogisticRegression(C=config.c, max_iter=config.max_iter, random_state=seed)
    early = config.early_stopping and (num_cells is None or 0.1 * num_cells >= num_classes)
    return MLPClassifier(hidden_layer_sizes=(config.hidden,), max_iter=config.max_iter, early_stopping=early,
                         random_state=seed)


def fit_head(features: np.ndarray, labels: np.ndarray, config: HeadTrainConfig, seed: int = 1234) -> FittedHead:
    """Fit the scaler and the classifier on source features.

    Args:
        features: [N,C] CAE CLS features of the anchor domain.
        labels: [N] class indices (into the model's class list).
        config: which head and its settings.
        seed: the classifier's random state.

    Raises:
        ConfigError: fewer than two classes among the labels.
    """
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(labels)
    if len(classes) < 2:
        raise ConfigError(f"the anchor domain has cells of {len(classes)} class(es) only: a head needs two or more.")
    scaler = StandardScaler().fit(features)
    classifier = make_classifier(config, seed, len(labels), len(classes)).fit(scaler.transform(features), labels)
    return FittedHead(config.kind, scaler, classifier, classifier.classes_)


def _output_layer(weight: np.ndarray, bias: np.ndarray, classes: np.ndarray, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A [num_classes, in] layer from sklearn's [K', in] output (K' = 1 for two classes: logits [0, d])."""
    w = torch.zeros(num_classes, weight.shape[1], dtype=torch.float64)
    b = torch.full((num_classes,), ABSENT_BIAS, dtype=torch.float64)
    b[torch.as_tensor(classes)] = 0.0
    rows = classes[1:] if weight.shape[0] == 1 else classes
    w[torch.as_tensor(rows)] = torch.from_numpy(np.asarray(weight, np.float64))
    b[torch.as_tensor(rows)] = torch.from_numpy(np.asarray(bias, np.float64))
    return w.float(), b.float()


@torch.no_grad()
def to_torch_head(fitted: FittedHead, in_dim: int, num_classes: int, hidden: int = 100) -> nn.Module:
    """The fitted head as the model's head module, with the scaler folded into its first Linear.

    Args:
        fitted: the output of `fit_head`.
        in_dim: the feature width.
        num_classes: the model's number of classes (classes the source lacks get logit −1e4).
        hidden: the MLP head's hidden width (must match the fitted MLP).

    Returns:
        A LinearHead (svm, logreg) or MLPHead (mlp) in eval mode.
    """
    clf = fitted.classifier
    head: LinearHead | MLPHead
    if fitted.kind == "mlp":
        if clf.coefs_[0].shape[1] != hidden:
            raise ConfigError(f"the fitted MLP has {clf.coefs_[0].shape[1]} hidden units, the model head {hidden}.")
        head = MLPHead(in_dim, num_classes, hidden)
        head.fc1.weight.copy_(torch.from_numpy(clf.coefs_[0].T.astype(np.float32)))
        head.fc1.bias.copy_(torch.from_numpy(clf.intercepts_[0].astype(np.float32)))
        output = head.fc2
        weight, bias = clf.coefs_[1].T, clf.intercepts_[1]
    else:
        head = LinearHead(in_dim, num_classes)
        output, weight, bias = head.fc, clf.coef_, clf.intercept_
    w, b = _output_layer(weight, bias, fitted.classes, num_classes)
    output.weight.copy_(w)
    output.bias.copy_(b)
    scaler = fitted.scaler
    fold_scaler(head.first, torch.from_numpy(scaler.mean_), torch.from_numpy(scaler.scale_))
    return head.eval()


def anchor_features(model: Any, anchor: Any, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """CAE CLS features [N,C] of the anchor domain's cached tokens and their class indices [N].

    Args:
        model: the DoRL model (its CAE and class list are used).
        anchor: the anchor domain's `TokenSet`.
        batch_size: token maps per CAE pass.
    """
    index = {name: i for i, name in enumerate(model.config.class_names)}
    labels = np.asarray([index[label] for label in anchor.labels])
    return cae_features(model.cae, anchor.tokens.numpy(), batch_size), labels


def head_summary(fitted: FittedHead, features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """What to record about a fitted head: kind, classes seen, training accuracy, convergence."""
    iterations = getattr(fitted.classifier, "n_iter_", None)
    return {
        "kind": fitted.kind,
        "classes_seen": [int(c) for c in fitted.classes],
        "train_accuracy": float(np.mean(fitted.predict(features) == labels)),
        "n_iter": np.asarray(iterations).max().item() if iterations is not None else None,
    }

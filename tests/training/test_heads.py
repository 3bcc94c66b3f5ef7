import numpy as np
import pytest
import torch

from dorl.config import ModelConfig
from dorl.data.domains import Domain
from dorl.errors import ConfigError
from dorl.models.heads import LinearHead, MLPHead
from dorl.models.registry import build_model
from dorl.training.config import HeadTrainConfig
from dorl.training.features import extract_features
from dorl.training.heads import ABSENT_BIAS, fit_head, head_summary, to_torch_head

TINY = ModelConfig(encoder="sam_vit_test", cae_depth=1, cae_decoder_depth=1)


@pytest.fixture(scope="module")
def real_features(tiny_domains: list[Domain]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled encoder tokens [N,96] of real pbc and bccd cells, with class indices."""
    torch.manual_seed(0)
    model = build_model(TINY)
    samples = [s for d in tiny_domains[:2] for s in d.samples]
    features = extract_features(model, [s.path for s in samples], batch_size=8).pooled
    labels = np.asarray([TINY.class_names.index(s.label) for s in samples])
    return features.astype(np.float64), labels


def logits_of(head: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head(torch.from_numpy(features).float()).double().numpy()


@pytest.mark.parametrize("kind", ["svm", "logreg"])
def test_linear_heads_reproduce_decision_function_and_predict(kind: str, real_features) -> None:
    features, labels = real_features
    fitted = fit_head(features, labels, HeadTrainConfig(kind=kind, max_iter=20000))
    head = to_torch_head(fitted, 96, 5)
    assert isinstance(head, LinearHead)
    logits = logits_of(head, features)
    decision = fitted.decision(features)
    np.testing.assert_allclose(logits, decision, atol=1e-3 * max(1.0, np.abs(decision).max()))
    np.testing.assert_array_equal(logits.argmax(1), fitted.predict(features))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a few iterations suffice here
def test_mlp_head_reproduces_predict_proba(real_features) -> None:
    features, labels = real_features
    fitted = fit_head(features, labels, HeadTrainConfig(kind="mlp", max_iter=300))
    head = to_torch_head(fitted, 96, 5, hidden=100)
    assert isinstance(head, MLPHead)
    probs = torch.from_numpy(logits_of(head, features)).softmax(1).numpy()
    np.testing.assert_allclose(probs, fitted.decision(features), atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(1), fitted.predict(features))
    with pytest.raises(ConfigError, match="hidden"):
        to_torch_head(fitted, 96, 5, hidden=50)


def test_classes_the_source_lacks_are_never_predicted(real_features) -> None:
    features, labels = real_features
    keep = np.isin(labels, [0, 1, 3])
    fitted = fit_head(features[keep], labels[keep], HeadTrainConfig(kind="svm", max_iter=20000))
    logits = logits_of(to_torch_head(fitted, 96, 5), features)
    assert (logits[:, [2, 4]] == ABSENT_BIAS).all()
    np.testing.assert_allclose(logits[:, [0, 1, 3]], fitted.decision(features), atol=1e-3)


@pytest.mark.parametrize("kind", ["svm", "logreg", "mlp"])
def test_two_classes_give_logits_zero_and_the_decision(kind: str, real_features) -> None:
    features, labels = real_features
    keep = np.isin(labels, [1, 4])
    config = HeadTrainConfig(kind=kind, max_iter=20000)  # 10 cells: too few for the MLP's validation split
    fitted = fit_head(features[keep], labels[keep], config)
    logits = logits_of(to_torch_head(fitted, 96, 5), features)
    assert (logits[:, [0, 2, 3]] == ABSENT_BIAS).all()
    np.testing.assert_array_equal(np.where(logits[:, 4] > logits[:, 1], 4, 1), fitted.predict(features))
    if kind == "logreg":
        proba = fitted.classifier.predict_proba(fitted.scaler.transform(features))[:, 1]
        np.testing.assert_allclose(torch.from_numpy(logits[:, [1, 4]]).softmax(1)[:, 1].numpy(), proba, atol=1e-5)


def test_one_class_is_refused_and_summary_records_training_accuracy(real_features) -> None:
    features, labels = real_features
    with pytest.raises(ConfigError, match="two or more"):
        fit_head(features[:3], np.zeros(3, int), HeadTrainConfig())
    fitted = fit_head(features, labels, HeadTrainConfig(kind="logreg"))
    summary = head_summary(fitted, features, labels)
    assert summary["kind"] == "logreg" and summary["classes_seen"] == [0, 1, 2, 3, 4]
    assert 0.2 <= summary["train_accuracy"] <= 1.0


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(("kind", "classes"), [("svm", [0, 1, 3]), ("svm", [1, 4]), ("logreg", [0, 1, 3]),
                                               ("mlp", [0, 1, 3])])
def test_probabilities_are_the_deployed_graphs_probs(kind: str, classes: list[int], real_features) -> None:
    """What test-time augmentation averages: softmax of the exported head's logits, over the classes seen."""
    features, labels = real_features
    keep = np.isin(labels, classes)
    fitted = fit_head(features[keep], labels[keep], HeadTrainConfig(kind=kind, max_iter=300 if kind == "mlp" else 20000))
    deployed = torch.from_numpy(logits_of(to_torch_head(fitted, 96, 5), features)).softmax(1).numpy()
    probs = fitted.probabilities(features)
    assert probs.shape == (len(features), len(classes))
    np.testing.assert_allclose(probs, deployed[:, classes], atol=1e-4)
    np.testing.assert_array_equal(fitted.classes[probs.argmax(1)], fitted.predict(features))

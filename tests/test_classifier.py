"""The classifier built from a config: a scikit-learn estimator, saved without pickle, applied
and used to predict."""

from __future__ import annotations

import numpy as np

from autolayer.classifier import FusionTextClassifier
from autolayer.config import FusionConfig, ModelChoice
from tests.conftest import run


def _tiny_config(spec: str, layer: int = 2) -> FusionConfig:
    from autolayer import zoo

    return FusionConfig(
        models=(ModelChoice(spec, zoo.resolve(spec).identity, layer, 5),),
        operator="concat",
        width=16,
        hidden=8,
        dropout=0.0,
        lr=3e-3,
        batch_size=8,
        epochs=5,
        label_names=("neg", "pos"),
    )


def test_estimator_works_in_sklearn_pipeline_and_cross_validation(home, tiny_models, tiny_dataset):
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    from autolayer.data import load_dataset

    data = load_dataset(str(tiny_dataset))
    texts = list(data.split("train").texts)
    labels = [data.label_names[i] for i in data.split("train").labels]
    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["bert"])))
    scores = cross_val_score(clone(estimator), texts, labels, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    fitted = estimator.fit(texts, labels)
    assert set(fitted.predict(texts[:5])) <= {"neg", "pos"}
    np.testing.assert_allclose(fitted.predict_proba(texts[:5]).sum(axis=1), 1, atol=1e-5)


def test_saved_model_round_trips_without_pickle(home, tmp_path, tiny_models, tiny_dataset):
    from autolayer.data import load_dataset

    data = load_dataset(str(tiny_dataset))
    texts = list(data.split("train").texts)
    labels = [data.label_names[i] for i in data.split("train").labels]
    estimator = FusionTextClassifier(_tiny_config(str(tiny_models["llama"]))).fit(texts, labels)
    estimator.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.yaml",
        "features.json",
        "head.json",
        "head.safetensors",
    ]
    loaded = FusionTextClassifier.load(tmp_path / "m")
    np.testing.assert_allclose(
        loaded.predict_proba(texts), estimator.predict_proba(texts), atol=1e-6
    )


def test_apply_warns_when_config_comes_from_other_data(
    home, tmp_path, tiny_models, tiny_dataset, caplog
):
    from autolayer.classifier import apply

    config = _tiny_config(str(tiny_models["bert"]))
    config = FusionConfig(**{**config.__dict__, "dataset": {"name": "x", "fingerprint": "0" * 64}})
    result = apply(config, str(tiny_dataset), tmp_path / "m")
    assert result.warnings and "fingerprint" in caplog.text


def test_predict_on_empty_input_is_an_error(capsys, home, tmp_path, tiny_models, tiny_dataset):
    from autolayer.classifier import apply

    apply(_tiny_config(str(tiny_models["bert"])), str(tiny_dataset), tmp_path / "m")
    (tmp_path / "empty.txt").write_text("\n \n")
    code, _, err = run(
        capsys, "predict", tmp_path / "m", "-i", tmp_path / "empty.txt", "-o", tmp_path / "p.jsonl"
    )
    assert code != 0 and "no texts" in err and "Traceback" not in err

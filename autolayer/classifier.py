"""Turn a config into a trained classifier: fit, evaluate, save, load, predict.

``FusionTextClassifier`` is a scikit-learn estimator over raw texts: it embeds them with each
configured backbone cut at its chosen layer (cached), trains the fusion head, and predicts.
``apply`` trains it on a dataset's train (+ validation) split and reports test metrics;
``predict_file`` labels new texts with a saved model. Saved models are a folder holding the
config (YAML) and the head (safetensors + JSON), written atomically: no pickle anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from autolayer import zoo
from autolayer.config import FusionConfig, load_config
from autolayer.errors import ConfigError, DataError

logger = logging.getLogger("autolayer")

CONFIG_FILE = "config.yaml"


class FusionTextClassifier(ClassifierMixin, BaseEstimator):
    """Scikit-learn classifier over texts, built from a :class:`FusionConfig` (or its path).

    Learned state lives in attributes ending in ``_``; constructor arguments are stored as
    given (so ``clone`` and ``cross_val_score`` work).
    """

    def __init__(
        self,
        config: FusionConfig | str | Path,
        *,
        device: str | None = None,
        batch_size: int = 256,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
    ) -> None:
        self.config = config
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.use_cache = use_cache

    def _config(self) -> FusionConfig:
        if isinstance(self.config, FusionConfig):
            return self.config
        return load_config(self.config)

    def embed(self, texts) -> list[np.ndarray]:
        """One ``[N, D_i]`` array per configured model, at its chosen layer."""
        from autolayer.extraction import embed_texts

        texts = _as_texts(texts)
        out = []
        for choice in self._config().models:
            emb = embed_texts(
                choice.spec,
                texts,
                layers=[choice.layer],
                pooling=choice.pooling,
                max_length=choice.max_length,
                batch_size=self.batch_size,
                device=self.device,
                cache_dir=self.cache_dir if self.use_cache else None,
            )
            out.append(np.asarray(emb.array[:, 0], dtype=np.float32))
        return out

    def fit(self, X, y) -> FusionTextClassifier:
        """Embed ``X`` and train the head for the config's number of epochs."""
        return self.fit_embedded(self.embed(X), y)

    def fit_embedded(self, features: list[np.ndarray], y) -> FusionTextClassifier:
        """Train the head on precomputed features (one ``[N, D_i]`` per model)."""
        from autolayer.fusion import train_fusion

        config = self._config()
        labels = np.asarray([str(v) for v in y])
        known = list(config.label_names)
        unknown = sorted(set(labels) - set(known))
        self.classes_ = np.asarray(known if not unknown else sorted(set(labels)))
        index = {c: i for i, c in enumerate(self.classes_)}
        params = config.fusion_params()
        result = train_fusion(
            features,
            np.asarray([index[v] for v in labels]),
            None,
            None,
            params=params,
            seed=config.seed,
            device=self.device,
            n_classes=len(self.classes_),
        )
        self.model_ = result.model
        self.train_seconds_ = result.train_seconds
        return self

    def predict_proba(self, X) -> np.ndarray:
        return self.predict_proba_embedded(self.embed(X))

    def predict_proba_embedded(self, features: list[np.ndarray]) -> np.ndarray:
        from autolayer.fusion import predict_proba

        if not hasattr(self, "model_"):
            raise ConfigError("this classifier is not fitted yet: call fit first")
        return predict_proba(self.model_, features)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def save(self, directory: str | Path) -> Path:
        """Write config + head into ``directory`` atomically (all or nothing)."""
        from autolayer.fusion import save_classifier

        if not hasattr(self, "model_"):
            raise ConfigError("this classifier is not fitted yet: call fit first")
        directory = Path(directory)
        config = replace(self._config(), label_names=tuple(str(c) for c in self.classes_))
        parent = directory.resolve().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=parent))
        except OSError as exc:
            raise ConfigError(
                f"cannot write model folder {str(directory)!r}: {exc.strerror}"
            ) from None
        try:
            config.save(tmp / CONFIG_FILE)
            save_classifier(self.model_, tmp)
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path, **kwargs) -> FusionTextClassifier:
        """Rebuild a saved classifier (safetensors + YAML; nothing is unpickled)."""
        from autolayer.fusion import load_classifier

        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{str(directory)!r} is not a saved autolayer model (no {CONFIG_FILE})"
            )
        config = load_config(directory / CONFIG_FILE)
        estimator = cls(config, **kwargs)
        estimator.model_ = load_classifier(directory)
        estimator.classes_ = np.asarray(config.label_names)
        return estimator


def _as_texts(texts) -> list[str]:
    texts = [str(t) for t in texts]
    if not texts:
        raise DataError("no texts given")
    return texts


@dataclass(frozen=True)
class ApplyResult:
    """Test metrics of the final classifier and where it was saved."""

    directory: Path
    accuracy: float
    macro_f1: float
    per_class: dict
    n_train: int
    n_test: int
    warnings: tuple[str, ...]


def split_features(
    config: FusionConfig, data, splits, cache_dir=None, device=None
) -> list[np.ndarray]:
    """Per model, its chosen layer over the given dataset splits (concatenated), taken from
    the extraction cache: the all-layer arrays that ``recommend`` computed are reused."""
    from autolayer.extraction import extract

    features = []
    for choice in config.models:
        parts = [
            extract(
                choice.spec,
                data,
                split,
                layers=[choice.layer],
                pooling=choice.pooling,
                max_length=choice.max_length,
                cache_dir=cache_dir,
                device=device,
            ).array[:, 0]
            for split in splits
        ]
        features.append(np.concatenate(parts).astype(np.float32))
    return features


def check_provenance(config: FusionConfig, fingerprint: str | None) -> list[str]:
    """Warnings when the data or the weights differ from those the config was made on.

    Applying a config to other data is legitimate (that is what transferring a
    recommendation means), so a mismatch warns rather than refuses.
    """
    notes = []
    expected = config.dataset.get("fingerprint")
    if fingerprint and expected and fingerprint != expected:
        notes.append(
            f"dataset fingerprint {fingerprint[:12]} differs from the config's {expected[:12]} "
            f"({config.dataset.get('name', '?')}): the recommendation was made on other data"
        )
    for choice in config.models:
        identity = zoo.resolve(choice.spec).identity
        if identity != choice.identity:
            notes.append(
                f"model {choice.spec!r} has identity {identity}, the config expects "
                f"{choice.identity}: the weights differ"
            )
    return notes


def apply(
    config: FusionConfig | str | Path,
    dataset,
    output: str | Path,
    *,
    device: str | None = None,
    cache_dir: str | Path | None = None,
) -> ApplyResult:
    """Train on train (+ validation), evaluate on test, save to ``output``."""
    from sklearn.metrics import classification_report, f1_score

    from autolayer.data import load_dataset

    config = config if isinstance(config, FusionConfig) else load_config(config)
    data = dataset if not isinstance(dataset, str | Path) else load_dataset(dataset)
    if "test" not in data.splits:
        raise DataError(f"dataset {data.name!r} has no test split to evaluate on")
    notes = check_provenance(config, data.fingerprint)
    for note in notes:
        logger.warning(note)
    names = [s for s in ("train", "validation") if s in data.splits]
    labels = [data.label_names[i] for s in names for i in data.split(s).labels]
    estimator = FusionTextClassifier(config, device=device, cache_dir=cache_dir)
    estimator.fit_embedded(split_features(config, data, names, cache_dir, device), labels)
    test = data.split("test")
    truth = np.asarray([data.label_names[i] for i in test.labels])
    proba = estimator.predict_proba_embedded(
        split_features(config, data, ["test"], cache_dir, device)
    )
    predicted = estimator.classes_[proba.argmax(axis=1)]
    directory = estimator.save(output)
    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    metrics = {
        "accuracy": float((predicted == truth).mean()),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "per_class": {k: v for k, v in report.items() if k in set(truth) | set(predicted)},
        "n_train": len(labels),
        "n_test": len(truth),
    }
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return ApplyResult(directory=directory, warnings=tuple(notes), **metrics)


def predict_file(
    model_dir: str | Path,
    input_path: str | Path,
    output: str | Path,
    *,
    text_column: str = "text",
    device: str | None = None,
) -> int:
    """Label every text of ``input_path``; write JSONL or CSV (by extension) with probabilities."""
    from autolayer.data import load_texts

    estimator = FusionTextClassifier.load(model_dir, device=device, use_cache=False)
    texts = load_texts(input_path, text_column=text_column)
    proba = estimator.predict_proba(texts)
    labels = estimator.classes_[proba.argmax(axis=1)]
    output = Path(output)
    rows = [
        {
            "text": t,
            "label": str(lab),
            "probabilities": {
                str(c): round(float(p), 6) for c, p in zip(estimator.classes_, ps, strict=True)
            },
        }
        for t, lab, ps in zip(texts, labels, proba, strict=True)
    ]
    _write_predictions(rows, output, estimator.classes_)
    return len(rows)


def _write_predictions(rows: list[dict], output: Path, classes) -> None:
    import csv
    import io

    from autolayer.cache import atomic_write_bytes

    if output.suffix.lower() in (".csv", ".tsv"):
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t" if output.suffix.lower() == ".tsv" else ",")
        writer.writerow(["text", "label", *[f"p_{c}" for c in classes]])
        for row in rows:
            writer.writerow([row["text"], row["label"], *row["probabilities"].values()])
        data = buffer.getvalue()
    else:
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write_bytes(output, data.encode("utf-8"))

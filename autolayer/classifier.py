"""Turn a config into a trained classifier: fit, evaluate, save, load, predict.

``FusionTextClassifier`` is a scikit-learn estimator over raw texts: it embeds them with each
configured backbone cut at its chosen layer (cached), trains the config's head, and decides
as the config's task does: one class per text, or (multi-label) a 0/1 indicator of labels,
each at its fitted threshold.
``apply`` trains it on a dataset's train (+ validation) split and reports test metrics
(labelling the texts of a file with a saved model is :mod:`autolayer.predictions`'s job).
Saved models are a folder holding the config (YAML) and the head (safetensors + JSON),
written atomically: no pickle anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from autolayer.config import FusionConfig, ModelChoice, load_config
from autolayer.data import binarize as binarize_labels
from autolayer.errors import ConfigError, DataError
from autolayer.files import (
    RECOMMENDATION,
    atomic_write_bytes,
    check_owned_folder,
    check_writable,
    replace_folder,
    temp_dir,
)
from autolayer.metrics import MULTI_LABEL_METRICS
from autolayer.sources import SourceRecord, resolve_spec
from autolayer.task import DEFAULT as SINGLE_LABEL

if TYPE_CHECKING:
    from autolayer.heads import Head

logger = logging.getLogger("autolayer")

CONFIG_FILE = "config.yaml"
FEATURES_FILE = "features.json"
METRICS_FILE = "metrics.json"
CONFIG_FILES = (CONFIG_FILE, FEATURES_FILE, METRICS_FILE)


def model_files() -> tuple[str, ...]:
    """Everything a saved model folder may hold (such a folder is autolayer's to replace):
    the config's files, and the files of every registered head and source, asked now so
    that a plug-in registered after import counts."""
    from autolayer.heads import HEADS
    from autolayer.sources import SOURCES

    saved = [f for cls in [*HEADS.values(), *SOURCES.values()] for f in cls.files]
    return tuple(dict.fromkeys([*CONFIG_FILES, *saved]))


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
        trust_remote_code: bool = False,
    ) -> None:
        self.config = config
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.trust_remote_code = trust_remote_code

    def _config(self) -> FusionConfig:
        return as_config(self.config)

    def _record(self, choice: ModelChoice) -> SourceRecord:
        """One of the config's models resolved into its record (:func:`resolve_spec`) the
        first time it is asked for, and kept: what kind of source it is and its identity are
        then read from the record, not from a source built again from the spec. Kept by
        spec, max_length and trust_remote_code, so that ``set_params`` changing them
        resolves anew; the cache is not a constructor argument, so ``clone`` starts without."""
        key = (choice.spec, choice.max_length, self.trust_remote_code)
        resolved = self.__dict__.setdefault("_resolved", {})
        if key not in resolved:
            resolved[key] = resolve_spec(
                choice.spec,
                max_length=choice.max_length,
                trust_remote_code=self.trust_remote_code,
            )
        return resolved[key]

    def fit_sources(self, texts) -> FusionTextClassifier:
        """Fit the sources that learn from texts (TF-IDF) on these training texts."""
        texts = _as_texts(texts)
        records = {choice.spec: self._record(choice) for choice in self._config().models}
        self.sources_ = {spec: r.unfitted().fit(texts) for spec, r in records.items() if r.learns}
        return self

    def embed(self, texts) -> list[np.ndarray]:
        """One ``[N, D_i]`` array per configured model, at its chosen layer (a sparse
        matrix for a source fitted by :meth:`fit_sources`)."""
        from autolayer.extraction import embed_texts

        texts = _as_texts(texts)
        out = []
        for choice in self._config().models:
            if choice.spec in getattr(self, "sources_", {}):
                out.append(self.sources_[choice.spec].transform(texts))
                continue
            if self._record(choice).learns:
                raise ConfigError(f"{choice.spec} is not fitted yet: call fit first")
            emb = embed_texts(
                choice.spec,
                texts,
                layers=[choice.layer],
                pooling=choice.pooling,
                max_length=choice.max_length,
                batch_size=self.batch_size,
                device=self.device,
                cache_dir=self.cache_dir,
                use_cache=self.use_cache,
                trust_remote_code=self.trust_remote_code,
            )
            out.append(np.asarray(emb.array[:, 0], dtype=np.float32))
        return out

    def fit(self, X, y) -> FusionTextClassifier:
        """Fit the sources that learn (TF-IDF) on ``X``, embed it, and train the head as
        the config says (the MLP: its ``epochs``, or early-stopped on its own held-out
        ``validation_fraction`` of the rows).

        ``y`` is one label per text, or, for a multi-label config, a list of labels per
        text (as scikit-learn's ``MultiLabelBinarizer`` takes them) or a 0/1 indicator
        matrix ``[N, K]`` (its columns are then the classes ``"0"`` .. ``"K-1"``). A text
        may have no label (an empty list, an all-zero row: "none of these"), as
        scikit-learn's multi-label estimators take it; reading a dataset file refuses one
        unless allowed, as there it is more often a mistake."""
        texts = _as_texts(X)
        _as_target(y, len(texts), self._config())  # checked before the long embedding
        return self.fit_sources(texts).fit_embedded(self.embed(texts), y)

    def fit_embedded(self, features: list[np.ndarray], y) -> FusionTextClassifier:
        """Train the head on precomputed features (one ``[N, D_i]`` per model)."""
        config = self._config()
        target, self.classes_ = _as_target(y, np.shape(features[0])[0] if features else 0, config)
        head = _fitted_rule(config, self.classes_).make_head()
        fit = head.fit(
            features, target, seed=config.seed, device=self.device, n_outputs=len(self.classes_)
        )
        self.head_: Head = head
        self.train_seconds_ = fit.train_seconds
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[N, C]``, columns in ``classes_`` order."""
        check_is_fitted(self, "head_")  # before embedding, which can take long
        return self.predict_proba_embedded(self.embed(X))

    def predict_proba_embedded(self, features: list[np.ndarray]) -> np.ndarray:
        check_is_fitted(self, "head_")
        return self.head_.predict_proba(features)

    def predict(self, X) -> np.ndarray:
        """One label of ``classes_`` per text; for a multi-label task, a 0/1 indicator
        ``[N, K]`` with columns in ``classes_`` order (scikit-learn's convention)."""
        return self.decide(self.predict_proba(X))  # first: it says so when unfitted

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """The labels of ``classes_`` that probabilities ``[N, C]`` decide, by the rule of
        the task the head was trained for (the most probable class, for single-label
        classification; each label above its threshold, as an indicator, for multi-label)."""
        check_is_fitted(self, "head_")
        decided = np.asarray(self.head_.task.decide(proba))
        return decided.astype(np.uint8) if decided.ndim == 2 else self.classes_[decided]

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy of single labels (scikit-learn's ``ClassifierMixin.score``); for a
        multi-label task the config's metric (micro-F1 by default), as the search judged."""
        if not _is_multi_label(y):
            return super().score(X, y, sample_weight=sample_weight)
        check_is_fitted(self, "head_")
        truth = self.binarize(y)
        metrics = multi_label_metrics(truth, self.predict(X), sample_weight=sample_weight)
        return metrics[self._config().metric]

    def binarize(self, y) -> np.ndarray:
        """Label lists (or an indicator) as a 0/1 indicator ``[N, K]`` over ``classes_``;
        a label the classifier does not know is refused, not dropped."""
        check_is_fitted(self, "head_")
        if _is_indicator(y):
            truth = _indicator(y, y.shape[0])
            if truth.shape[1] != len(self.classes_):
                raise DataError(
                    f"y has {truth.shape[1]} label columns; the classifier has "
                    f"{len(self.classes_)} classes"
                )
            return truth
        return binarize_labels(_label_sets(y, len(y)), [str(c) for c in self.classes_], "y")

    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write config + head into ``directory`` atomically (all or nothing).

        ``directory`` may be missing or empty; an existing saved model is replaced only with
        ``overwrite``; a folder holding anything else is never touched (see
        :func:`check_model_folder`).
        """
        check_is_fitted(self, "head_")
        directory = Path(directory).absolute()
        check_model_folder(directory, overwrite=overwrite)
        config = replace(
            self._config(),
            label_names=tuple(str(c) for c in self.classes_),
            task_params=self.head_.task.params(),  # the rule it decides by, as head.json says
        )
        unfitted = [
            m.spec
            for m in config.models
            if self._record(m).learns and m.spec not in getattr(self, "sources_", {})
        ]
        if unfitted:
            raise ConfigError(f"{unfitted[0]} was never fitted: call fit (or fit_sources) first")
        try:
            tmp = temp_dir(directory)
        except OSError as exc:
            raise ConfigError(
                f"cannot write model folder {str(directory)!r}: {exc.strerror}"
            ) from None
        try:
            config.save(tmp / CONFIG_FILE)
            self.head_.save(tmp)
            for source in getattr(self, "sources_", {}).values():
                source.save(tmp)
            features = [
                _feature_record(m, int(d))
                for m, d in zip(config.models, self.head_.input_dims_, strict=True)
            ]
            atomic_write_bytes(tmp / FEATURES_FILE, json.dumps(features, indent=1).encode())
            replace_folder(tmp, directory, model_files(), last=CONFIG_FILE)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: str | Path, **kwargs) -> FusionTextClassifier:
        """Rebuild a saved classifier (safetensors + YAML; nothing is unpickled).

        The head only makes sense on the features it was trained on: a ``config.yaml``
        edited to name another layer, pooling or model is refused, not silently used. Its
        decision rule (``task_params``: a multi-label model's thresholds) is the config's,
        so an edited threshold takes effect.
        """
        from autolayer.heads import load_head

        directory = Path(directory)
        if not directory.exists():
            raise ConfigError(f"model folder {str(directory)!r} does not exist")
        if not (directory / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{str(directory)!r} is not a saved autolayer model (no {CONFIG_FILE})"
            )
        config = load_config(directory / CONFIG_FILE)
        head = load_head(directory)
        _check_trained_on(directory, config, head)
        head.task = config.make_task()
        estimator = cls(config, **kwargs)
        estimator.head_ = head
        estimator.classes_ = np.asarray(config.label_names)
        estimator.sources_ = {}
        for choice, dim in zip(config.models, head.input_dims_, strict=False):
            record = estimator._record(choice)
            if record.learns:
                source = type(record.source).load(directory)
                if source.width != dim:
                    raise ConfigError(
                        f"{directory}: the {choice.spec} vocabulary has {source.width} terms, "
                        f"the head was trained on {dim}; re-run apply"
                    )
                estimator.sources_[choice.spec] = source
        return estimator


def as_config(config: object) -> FusionConfig:
    """A config given as itself or as the path of its file (read and validated)."""
    if isinstance(config, FusionConfig):
        return config
    if not isinstance(config, str | os.PathLike):
        raise ConfigError(
            "config must be a FusionConfig or the path of a config file; "
            f"got {type(config).__name__} {config!r:.60}"
        )
    return load_config(config)


def _feature_record(choice, dim: int) -> dict:
    """What one input of the head was: the backbone, its layer and pooling, and the width."""
    return {
        "spec": choice.spec,
        "identity": choice.identity,
        "layer": choice.layer,
        "pooling": choice.pooling,
        "max_length": choice.max_length,
        "dim": dim,
    }


def _check_trained_on(directory: Path, config: FusionConfig, head: Head) -> None:
    """Refuse a config.yaml that no longer describes the features the head was trained on."""
    where = directory / CONFIG_FILE
    if head.task.name != config.task:
        raise ConfigError(
            f"{where}: task {config.task!r}, but the head was trained for task "
            f"{head.task.name!r}; restore the file or re-run apply"
        )
    if head.n_outputs_ != len(config.label_names):
        raise ConfigError(
            f"{where}: {len(config.label_names)} label_names, but the head was trained on "
            f"{head.n_outputs_} classes; restore the file or re-run apply"
        )
    path = directory / FEATURES_FILE
    if not path.is_file():  # saved before features.json existed: nothing to compare
        return
    try:
        trained = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None
    keys = ("spec", "identity", "layer", "pooling", "max_length")
    now = [{k: getattr(m, k) for k in keys} for m in config.models]
    then = [{k: t.get(k) for k in keys} for t in trained]
    if now != then:
        changed = next(
            (
                f"{k} {a.get(k)!r} (trained on {b.get(k)!r})"
                for a, b in zip(now, then, strict=False)
                for k in keys
                if a.get(k) != b.get(k)
            ),
            f"{len(now)} models (trained on {len(then)})",
        )
        raise ConfigError(
            f"{where} no longer matches the features the head was trained on: {changed}; "
            "restore the file or re-run apply"
        )


def check_model_folder(directory: Path, *, overwrite: bool = False) -> None:
    """Where a model may be saved: a new or empty folder, or (with ``overwrite``) a saved
    model's folder. Never a folder of other files (``-o .`` must not empty the cwd), nor
    recommend's output folder, whose files are autolayer's but not a model's."""
    from autolayer.heads.base import CONFIG_FILE as HEAD_CONFIG
    from autolayer.heads.base import WEIGHTS_FILE as HEAD_WEIGHTS

    directory = Path(directory)
    if (directory / RECOMMENDATION).is_file():
        raise ConfigError(
            f"{str(directory)!r} is recommend's output folder (it holds {RECOMMENDATION}), "
            f"not a model folder; save the model in a new folder, such as "
            f"{str(directory / 'model')!r}"
        )
    check_owned_folder(
        directory,
        (CONFIG_FILE, HEAD_WEIGHTS, HEAD_CONFIG),  # what every saved head writes
        model_files(),
        overwrite=overwrite,
        what="model folder",
    )


def _as_texts(texts) -> list[str]:
    """``X`` as a list of texts, checked as scikit-learn's text vectorizers check theirs: a
    bare string would be iterated as characters, so it is refused, and so is an item that is
    not a string (named by its position). A blank text, which the CLI skips, is refused
    too: an estimator owes one label per row, and a blank one has nothing to classify."""
    if isinstance(texts, str | bytes):
        raise DataError("expected an iterable of texts, got a string: pass [text] for one text")
    try:
        texts = list(texts)
    except TypeError:
        raise DataError(f"expected an iterable of texts, got {type(texts).__name__}") from None
    if not texts:
        raise DataError("no texts given")
    wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if wrong:
        more = f" ({len(wrong)} items are not strings)" if len(wrong) > 1 else ""
        raise DataError(f"X[{wrong[0]}] is {texts[wrong[0]]!r}, not a string{more}")
    blank = [i for i, t in enumerate(texts) if not t.strip()]
    if blank:
        raise DataError(
            f"X[{blank[0]}] is empty or whitespace-only ({len(blank)} such text(s)): nothing "
            "to classify; leave blank texts out (the CLI skips them)"
        )
    return texts


def _as_labels(y, n_texts: int) -> np.ndarray:
    """``y`` as text labels, one per text and of at least two classes (a head trained on
    one class would predict it whatever the text)."""
    labels = np.asarray([str(v) for v in y])
    if len(labels) != n_texts:
        raise DataError(f"y has {len(labels)} label{'s' * (len(labels) != 1)} for {n_texts} texts")
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        shown = f"only {classes[0]!r}" if classes else "none"
        raise DataError(f"fit needs at least 2 classes in y; got {shown}")
    return labels


MULTI_LABEL = "multi_label"
BUILT_IN_TASKS = (SINGLE_LABEL, MULTI_LABEL)


def _as_target(y, n_texts: int, config: FusionConfig) -> tuple[np.ndarray, np.ndarray]:
    """``y`` as the head's target and the classes it names: class indices ``[N]`` for
    single labels, a uint8 indicator ``[N, K]`` for label lists or an indicator matrix.
    Classes are the config's ``label_names`` when they name every label of ``y`` (so a
    recommendation keeps its order), else the labels of ``y``, sorted. The form of ``y``
    must be the config's task's: the head trains for that task only."""
    multi = _is_multi_label(y)
    if config.task in BUILT_IN_TASKS and multi != (config.task == MULTI_LABEL):
        raise DataError(
            f"y is {'a list of labels' if multi else 'one label'} per text, but the config's "
            f"task is {config.task!r}; "
            + ("use a multi_label config" if multi else "give each text a list of labels")
        )
    if not multi:
        labels = _as_labels(y, n_texts)
        classes = _classes(set(labels.tolist()), config.label_names)
        index = {c: i for i, c in enumerate(classes)}
        return np.asarray([index[v] for v in labels]), classes
    if _is_indicator(y):
        target = _indicator(y, n_texts)
        classes = np.asarray([str(i) for i in range(target.shape[1])])
    else:
        sets = _label_sets(y, n_texts)
        classes = _classes({label for row in sets for label in row}, config.label_names)
        target = binarize_labels(sets, classes, "y")
    seen = int(target.any(0).sum())
    if seen < 2:  # as one class: a head would learn nothing of the texts
        raise DataError(f"fit needs at least 2 labels in y; got {seen}")
    return target, classes


def _fitted_rule(config: FusionConfig, classes: np.ndarray) -> FusionConfig:
    """The config, without its fitted decision rule (per-label thresholds) when the classes
    are not the labels it was fitted for (data of another label set): the task's defaults
    decide then, and a ``UserWarning`` says so (a warning, not a log line, so that a
    caller fitting indicator matrices on purpose can filter it)."""
    if not config.task_params or [str(c) for c in classes] == list(config.label_names):
        return config
    warnings.warn(
        "the config's task_params were fitted for its label_names, not for these labels "
        f"({', '.join(map(str, classes[:5]))}): deciding by the {config.task} task's defaults",
        UserWarning,
        stacklevel=4,  # the caller of fit (fit → fit_embedded → here)
    )
    return replace(config, task_params={})


def _classes(seen: set[str], known: tuple[str, ...]) -> np.ndarray:
    """The config's label names when they name every label seen, else the seen ones sorted."""
    return np.asarray(list(known) if seen <= set(known) else sorted(seen))


def _is_indicator(y) -> bool:
    """``y`` is a 2-D array (a 0/1 indicator matrix), dense or sparse."""
    return getattr(y, "ndim", 1) == 2


def _is_label_list(value) -> bool:
    """One text's labels given as a collection (list, tuple, set, array), not one label."""
    return not isinstance(value, str | bytes) and isinstance(
        value, list | tuple | set | frozenset | np.ndarray
    )


def _is_multi_label(y) -> bool:
    """``y`` holds a list of labels per text (or is an indicator matrix); mixing lists with
    single labels is refused, naming the first row that breaks the pattern."""
    if _is_indicator(y):
        return True
    if isinstance(y, str | bytes) or (isinstance(y, np.ndarray) and y.dtype != object):
        return False
    rows = list(y)
    kinds = [_is_label_list(v) for v in rows]
    if any(kinds) and not all(kinds):
        first = kinds.index(not kinds[0])
        raise DataError(
            f"y mixes lists of labels and single labels (y[0] is {rows[0]!r}, y[{first}] is "
            f"{rows[first]!r}); give every text a list of labels, or every text one label"
        )
    return bool(kinds) and kinds[0]


def _indicator(y, n_texts: int) -> np.ndarray:
    """A 0/1 indicator matrix ``[N, K]`` checked (shape, values) and as uint8."""
    dense = y.toarray() if hasattr(y, "toarray") else np.asarray(y)
    if dense.shape[0] != n_texts:
        raise DataError(f"y has {dense.shape[0]} rows for {n_texts} texts")
    if not np.isin(dense, (0, 1)).all():
        raise DataError("an indicator matrix y must hold only 0 and 1")
    return dense.astype(np.uint8)


def _label_sets(y, n_texts: int) -> list[list[str]]:
    """Each text's labels as text (duplicates once), checked to be single labels."""
    sets = []
    for i, row in enumerate(y):
        nested = next((v for v in row if _is_label_list(v)), None)
        if nested is not None:
            raise DataError(f"y[{i}] holds a list ({nested!r}); each label must be a single value")
        sets.append(list(dict.fromkeys(str(v) for v in row)))
    if len(sets) != n_texts:
        raise DataError(f"y has {len(sets)} label lists for {n_texts} texts")
    return sets


def multi_label_metrics(truth: np.ndarray, predicted: np.ndarray, sample_weight=None) -> dict:
    """Micro-, macro- and samples-F1 and subset accuracy of indicator decisions ``[N, K]``,
    by the definitions the search judged by (:mod:`autolayer.metrics`), each row weighing
    its ``sample_weight`` when given."""
    import torch

    from autolayer.metrics import score

    weight = None
    if sample_weight is not None:
        weight = torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
        if weight.shape != (len(truth),):
            raise DataError(f"sample_weight has shape {tuple(weight.shape)} for {len(truth)} rows")
    pred, true = torch.as_tensor(np.asarray(predicted)), torch.as_tensor(np.asarray(truth))
    return {metric: score(pred, true, metric, weight) for metric in MULTI_LABEL_METRICS}


@dataclass(frozen=True)
class ApplyResult:
    """Test metrics of the final classifier and where it was saved."""

    directory: Path
    accuracy: float | None  # None: no test split, or a multi-label task (see metrics)
    macro_f1: float | None
    per_class: dict  # class (multi-label: label) → precision, recall, f1-score, support
    n_train: int
    n_test: int
    warnings: tuple[str, ...]
    task: str = SINGLE_LABEL
    n_held_out: int = 0  # of n_train: held out by the head to stop early, not trained on
    metrics: dict = field(default_factory=dict)  # multi-label: each test metric, config's first


def split_features(
    config: FusionConfig,
    data,
    splits,
    cache_dir=None,
    device=None,
    sources=None,
    *,
    trust_remote_code: bool = False,
) -> list[np.ndarray]:
    """Per model, its chosen layer over the given dataset splits (concatenated), taken from
    the extraction cache: the all-layer arrays that ``recommend`` computed are reused.
    A source fitted on training texts (TF-IDF, in ``sources``) transforms the texts."""
    from autolayer.extraction import extract

    features = []
    for choice in config.models:
        if choice.spec in (sources or {}):
            texts = [t for split in splits for t in data.split(split).texts]
            features.append(sources[choice.spec].transform(texts))
            continue
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
                trust_remote_code=trust_remote_code,
            ).array[:, 0]
            for split in splits
        ]
        features.append(np.concatenate(parts).astype(np.float32))
    return features


def check_provenance(
    config: FusionConfig, fingerprint: str | None, records: list[SourceRecord]
) -> list[str]:
    """Warnings when the data or the weights differ from those the config was made on
    (``records``: the config's models, resolved, in order).

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
    for choice, record in zip(config.models, records, strict=True):
        if record.identity != choice.identity:
            notes.append(
                f"model {choice.spec!r} has identity {record.identity}, the config expects "
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
    overwrite: bool = False,
    all_rows: bool = False,
    trust_remote_code: bool = False,
) -> ApplyResult:
    """Train on train (+ validation), evaluate on test, save to ``output``.

    ``output`` is checked before any work (see :meth:`FusionTextClassifier.save`). A
    dataset without a test split is trained on in full and the result says that nothing
    was held out (its metrics are ``None``). On the data whose few-label draw or capped
    sample the config was chosen on, it trains on that draw again unless ``all_rows``.
    """
    from autolayer.data import LabelledDataset, load_dataset
    from autolayer.device import resolve_device

    output = Path(output)
    check_model_folder(output.absolute(), overwrite=overwrite)
    check_writable(output, "model folder")
    resolve_device(device)
    config = as_config(config)
    data = load_dataset(dataset) if isinstance(dataset, str | Path) else dataset
    if not isinstance(data, LabelledDataset):
        raise ConfigError(
            "dataset must be a name, a path or a loaded dataset; "
            f"got {type(dataset).__name__} {dataset!r:.60}"
        )
    data, drawn = _as_drawn(config, data, all_rows)
    check_labels(config, data)
    estimator = FusionTextClassifier(
        config, device=device, cache_dir=cache_dir, trust_remote_code=trust_remote_code
    )
    records = [estimator._record(choice) for choice in config.models]
    notes = [*drawn, *check_provenance(config, None if drawn else data.fingerprint, records)]
    names = [s for s in ("train", "validation") if s in data.splits]
    labels = [label for s in names for label in _split_labels(data, s)]
    if "test" not in data.splits:
        redrawn = bool(drawn) and not all_rows
        rows = f"the {len(labels)} rows drawn" if redrawn else f"all {len(labels)} rows"
        notes.append(
            f"dataset {data.name!r} has no test split: trained on {rows}, none held out to test on"
        )
    for note in notes:
        logger.warning(note)
    estimator.fit_sources([t for s in names for t in data.split(s).texts])
    features = split_features(
        config,
        data,
        names,
        cache_dir,
        device,
        estimator.sources_,
        trust_remote_code=trust_remote_code,
    )
    estimator.fit_embedded(features, labels)
    metrics = _test_metrics(estimator, config, data, cache_dir, device)
    directory = estimator.save(output, overwrite=overwrite)
    metrics["n_train"] = len(labels)
    if held_out := getattr(estimator.head_, "held_out_", 0):  # else the file is as it was
        metrics["n_held_out"] = held_out
    if config.task != SINGLE_LABEL:  # single-label metrics.json is written as it always was
        metrics = {"task": config.task, **metrics}
    atomic_write_bytes(directory / METRICS_FILE, json.dumps(metrics, indent=1).encode())
    return _apply_result(directory, tuple(notes), metrics)


def _apply_result(directory: Path, notes: tuple[str, ...], written: dict) -> ApplyResult:
    """The result of apply from what metrics.json says: its keys as they are for single
    labels; a multi-label file's metrics (under their own names: no "accuracy", which would
    be subset accuracy) gathered into ``metrics``."""
    if "per_label" not in written:
        return ApplyResult(directory=directory, warnings=notes, **written)
    scores = {m: v for m, v in written.items() if m in MULTI_LABEL_METRICS}
    return ApplyResult(
        directory=directory,
        accuracy=None,
        macro_f1=written["macro_f1"],
        per_class=written["per_label"],
        n_train=written["n_train"],
        n_test=written["n_test"],
        n_held_out=written.get("n_held_out", 0),
        warnings=notes,
        task=written["task"],
        metrics=scores if written["n_test"] else {},
    )


def _as_drawn(config: FusionConfig, data, all_rows: bool = False) -> tuple[object, list[str]]:
    """The config's few-label draw, or capped train sample, of ``data`` (and a note saying
    so) when it was recommended on such a draw of this very data: applying it then trains
    on the rows it was chosen with, not on all of them (which, for a sample capped because
    the set is too large to embed, could take hours), unless ``all_rows``."""
    for key, count, redraw, what in (
        ("draw", "labels_per_class", data.per_class, "draw of {} labels per class"),
        ("sample", "max_train_samples", data.subsample, "sample of {} training rows"),
    ):
        record = config.dataset.get(key)
        if record and data.fingerprint == record.get("source_fingerprint"):
            drawn = f"{what.format(record[count])} (seed {record['seed']}) of {data.name!r}"
            if all_rows:
                return data, [f"trained on every row; the config was chosen on its {drawn}"]
            return redraw(int(record[count]), seed=int(record["seed"])), [
                f"trained on the config's {drawn}"
            ]
    return data, []


def _split_labels(data, split: str) -> list:
    """A split's labels by name: one per text, or a list per text for a multi-label set
    (the form ``fit`` takes, so that the classes follow the names, not the columns)."""
    labels = data.split(split).labels
    names = np.asarray(data.label_names)
    if labels.ndim == 2:
        return [names[np.flatnonzero(row)].tolist() for row in labels]
    return names[labels].tolist()


def _test_metrics(estimator, config, data, cache_dir, device) -> dict:
    """Metrics on the test split (``None`` without one): accuracy, macro-F1 and per-class
    precision, recall and F1; for a multi-label task, micro-, macro- and samples-F1 and
    subset accuracy (the config's metric first) and the same per label."""
    if "test" not in data.splits and config.task == MULTI_LABEL:
        unmeasured = _first(dict.fromkeys(MULTI_LABEL_METRICS), config.metric)
        return {**unmeasured, "per_label": {}, "n_test": 0}
    if "test" not in data.splits:
        return {"accuracy": None, "macro_f1": None, "per_class": {}, "n_test": 0}
    features = split_features(
        config,
        data,
        ["test"],
        cache_dir,
        device,
        estimator.sources_,
        trust_remote_code=estimator.trust_remote_code,
    )
    predicted = estimator.decide(estimator.predict_proba_embedded(features))
    truth = _split_labels(data, "test")
    if predicted.ndim == 2:
        return _multi_label_test(estimator, config, truth, predicted)
    return _single_label_test(np.asarray(truth), predicted)


def _single_label_test(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy, macro-F1 and classification_report's per-class rows (metrics.json's keys
    since its first version)."""
    from sklearn.metrics import classification_report, f1_score

    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    return {
        "accuracy": float((predicted == truth).mean()),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "per_class": {k: v for k, v in report.items() if k in set(truth) | set(predicted)},
        "n_test": len(truth),
    }


def _first(metrics: dict, metric: str) -> dict:
    """``metrics`` with ``metric`` (the config's, if among them) first."""
    return dict(sorted(metrics.items(), key=lambda item: item[0] != metric))


def _multi_label_test(estimator, config, truth: list, predicted: np.ndarray) -> dict:
    """Multi-label test metrics under their own names (the config's first), then each
    label's row (classification_report's keys, and how often it was predicted)."""
    truth = estimator.binarize(truth)
    metrics = _first(multi_label_metrics(truth, predicted), config.metric)
    per_label = label_table(truth, predicted, [str(c) for c in estimator.classes_])
    return {**metrics, "per_label": per_label, "n_test": len(truth)}


def label_table(truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """Each label's precision, recall, F1, support and predicted count, from indicators
    ``[N, K]``. A ratio with nothing to divide by is ``None``, not 0: precision without
    predictions, recall without support, F1 with neither; so the labels whose F1 is a
    number are exactly those macro-F1 averages (:mod:`autolayer.metrics`)."""
    t, p = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    tp, support, decided = (t & p).sum(0), t.sum(0), p.sum(0)

    def ratio(num: int, den: int) -> float | None:
        return float(num / den) if den else None

    return {
        name: {
            "precision": ratio(tp[k], decided[k]),
            "recall": ratio(tp[k], support[k]),
            "f1-score": ratio(2 * tp[k], support[k] + decided[k]),
            "support": int(support[k]),
            "predicted": int(decided[k]),
        }
        for k, name in enumerate(names)
    }


def check_labels(config: FusionConfig, data) -> None:
    """Refuse a config whose classes the data cannot train: a label the config names but the
    data lacks, while the data brings no labels of its own, would give the head a class
    with no examples (a 3-class head for 2-class data). Data with another label set
    (a recommendation transferred to another task) trains on its own labels. A config
    for single labels is refused on multi-label data, and the reverse: its head decides
    one way only."""
    task = getattr(data, "task", SINGLE_LABEL)
    if config.task in BUILT_IN_TASKS and task != config.task:
        said = "a list of labels" if task == MULTI_LABEL else "one label"
        raise ConfigError(
            f"the config's task is {config.task!r}, but dataset {data.name!r} has {said} per "
            "text; apply a config recommended for data of its kind"
        )
    ours, theirs = set(config.label_names), set(data.label_names)
    missing = sorted(ours - theirs)
    if missing and theirs <= ours:
        shown = ", ".join(repr(m) for m in missing[:5])
        raise ConfigError(
            f"the config's label_names include {shown}, absent from dataset {data.name!r} "
            f"(labels: {', '.join(data.label_names)}); remove it from the config"
        )

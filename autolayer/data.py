"""Load, validate, split and fingerprint labelled text datasets → texts, labels.

Also reads texts without labels: `split_texts` (one split, for embedding) and `read_inputs`
(texts to predict on, with their rows and ids so outputs can be matched back to inputs). The
file formats and Hugging Face datasets are read by `autolayer.readers`; this module validates
what they read and holds the resulting `LabelledDataset` (its splits, samples, fingerprints).

Everything downstream (extraction, caching, probing, search) sees only a `LabelledDataset`: the
source format is forgotten here, so a CSV and a JSONL with the same rows fingerprint the same and
share cached embeddings. Bad input fails early with one-line `DataError`s naming the file, the
line or row and what to change, because a bad row found after an hour of extraction is costly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from autolayer.errors import ConfigError, DataError
from autolayer.readers import (
    SPLIT_ORDER,
    TEXT_READERS,
    Columns,
    Raw,
    demo_path,
    read_file,
    read_spec,
    split_files,
)
from autolayer.sampling import stratified_rows

__all__ = [
    "InputTexts",
    "LabelledDataset",
    "Split",
    "demo_path",
    "load_dataset",
    "read_inputs",
    "split_texts",
]

_log = logging.getLogger("autolayer")

_EMPTY_POLICIES = ("drop", "error")
_SHOWN_LABELS = 5  # unknown labels named in an error

_INTEGER = re.compile(r"-?\d+")
_WHOLE_DECIMAL = re.compile(r"(-?\d+)\.0+")  # "1.0": how CSV exports write the label 1
_DECIMAL = re.compile(r"-?\d+\.\d+")  # "0.5" in a CSV is the JSON number 0.5


@dataclass(frozen=True, eq=False)
class Split:
    """One source split: texts in file order and their label indices.

    `eq=False` because comparing arrays field by field is ambiguous; compare `fingerprint`
    (texts and labels) or `text_fingerprint` (texts only, the embedding cache key) instead.
    """

    texts: tuple[str, ...]
    labels: np.ndarray  # int64 [N], indices into LabelledDataset.label_names, read-only
    fingerprint: str
    text_fingerprint: str

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class LabelledDataset:
    """A validated dataset: the source splits plus the label vocabulary of its train split."""

    name: str
    splits: dict[str, Split]
    label_names: tuple[str, ...]
    fingerprint: str
    draw: dict | None = None  # few-label mode: labels per class, seed, source fingerprint
    sample: dict | None = None  # a capped train split: max_train_samples, seed, source fingerprint
    origin: dict | None = None  # where it was read: source and columns (see `load_dataset`)

    def split(self, name: str) -> Split:
        """Return a source split by name, with an error that lists what is there."""
        if name not in self.splits:
            raise _missing_split(self.name, name, self.splits)
        return self.splits[name]

    def train_validation(self, size: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Carve a stratified, seeded validation set out of the "train" split.

        Returns sorted int64 index arrays (train_idx, val_idx) into `split("train")`. This
        ignores any "validation" source split on purpose: callers that find one in `splits`
        should use it instead. Classes with a single example cannot be stratified, so they
        always go to train, with a warning since validation cannot judge them; a DataError is
        raised when fewer than two classes could be validated, or too few examples remain to
        give every other class a place on both sides.
        """
        if not 0.0 < size < 1.0:
            raise ConfigError(f"train_validation size must be a fraction in (0, 1); got {size!r}")
        labels = self.split("train").labels
        counts = np.bincount(labels, minlength=len(self.label_names))
        if (counts > 1).sum() == 1:
            raise DataError(
                f"dataset {self.name!r}: cannot carve a validation split with two classes: only "
                f"class {self.label_names[int(np.argmax(counts))]!r} has 2 or more training "
                f"examples ({self._counts(counts)}); add examples of the others"
            )
        singles = np.flatnonzero(counts[labels] == 1)
        rest = np.flatnonzero(counts[labels] > 1)
        _check_stratifiable(self.name, len(rest), int((counts > 1).sum()), size)
        from sklearn.model_selection import train_test_split

        train_idx, val_idx = train_test_split(
            rest, test_size=size, random_state=seed, stratify=labels[rest]
        )
        self._warn_unvalidated(counts, np.bincount(labels[val_idx], minlength=counts.size))
        train_idx = np.concatenate([train_idx, singles])
        return np.sort(train_idx).astype(np.int64), np.sort(val_idx).astype(np.int64)

    def check_validation(self) -> None:
        """Check the source "validation" split before it judges a search.

        A split of a single class cannot tell configurations apart on any metric (and
        ``macro_f1`` on it is meaningless), so it is refused with its counts, offering a
        carve from train when train could give one; a split lacking some classes of train
        is used, with a warning naming them, since its scores ignore those classes.
        """
        train = np.bincount(self.split("train").labels, minlength=len(self.label_names))
        val = np.bincount(self.split("validation").labels, minlength=train.size)
        present = np.flatnonzero(val)
        if present.size >= 2:
            self._warn_unvalidated(train, val)
            return
        missing = ", ".join(repr(self.label_names[c]) for c in np.flatnonzero(val == 0))
        carve = (
            "; or remove it, and a stratified validation split is carved from train"
            if (train > 1).sum() >= 2
            else ""
        )
        raise DataError(
            f"dataset {self.name!r}: its validation split has a single class "
            f"({self._counts(val)}), so it cannot tell classes apart: add examples of "
            f"{missing} to it{carve}"
        )

    def _warn_unvalidated(self, train: np.ndarray, val: np.ndarray) -> None:
        """Warn, with counts, about classes of train (counts ``train``) that the validation
        split (counts ``val``) lacks: its scores say nothing about them."""
        missing = np.flatnonzero((val == 0) & (train > 0))
        if missing.size == 0:
            return
        named = ", ".join(f"{self.label_names[c]!r} ({train[c]} in train)" for c in missing)
        _log.warning(
            "dataset %r: the validation split has no example of class %s; configurations are "
            "judged on the others only (%s)",
            self.name,
            named,
            self._counts(val),
        )

    def _counts(self, counts: np.ndarray) -> str:
        """``'a': 3, 'b': 1``: each class present and its number of rows."""
        return ", ".join(f"{self.label_names[c]!r}: {counts[c]}" for c in np.flatnonzero(counts))

    def subsample(self, size: int, *, split: str = "train", seed: int = 0) -> LabelledDataset:
        """A copy whose ``split`` keeps ``size`` rows, stratified and seeded.

        For sets too large to embed on a CPU (SST-2 has 67k training sentences): every class
        keeps at least one row and the rest follow class proportions, so the label
        vocabulary is unchanged; the same seed always picks the same rows, hence the same
        embedding cache entry. Rows stay in file order. A train sample records how it was
        drawn (``sample``), so that ``apply`` can repeat it rather than embed every row.
        """
        source = self.split(split)
        n_classes = len(self.label_names)
        if not n_classes <= size:
            raise ConfigError(
                f"a sample of {size} rows cannot hold the {n_classes} classes (one per class): "
                f"ask for {n_classes} or more"
            )
        if size >= len(source):
            return self
        rows = stratified_rows(source.labels, size, seed, per_class=1)
        sampled = self._with_rows(split, rows, self.splits)
        if split != "train":
            return sampled
        record = {"max_train_samples": size, "seed": seed, "source_fingerprint": self.fingerprint}
        return replace(sampled, sample=record)

    def per_class(self, n: int, *, seed: int = 0) -> LabelledDataset:
        """A copy whose train split keeps ``n`` seeded rows of every class (few-label mode).

        The draw is all the labels there are: a "validation" source split is left out, so
        every later stage judges configurations by cross-validation over the draw. The
        same ``n`` and seed always draw the same rows; the test split is unchanged.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"labels per class must be an integer >= 1; got {n!r}")
        labels = self.split("train").labels
        counts = np.bincount(labels, minlength=len(self.label_names))
        rarest = int(np.argmin(counts))
        if n > counts[rarest]:
            raise DataError(
                f"dataset {self.name!r}: {n} labels per class is more than class "
                f"{self.label_names[rarest]!r} has ({counts[rarest]} training examples); "
                + (
                    f"use at most {counts[rarest]}"
                    if counts[rarest] >= 2
                    else "cross-validation needs 2 or more of every class: add examples "
                    "of it or leave it out"
                )
            )
        rng = np.random.default_rng(seed)
        picks = [rng.choice(np.flatnonzero(labels == c), n, False) for c in range(counts.size)]
        rows = np.sort(np.concatenate(picks))
        kept = {k: v for k, v in self.splits.items() if k != "validation"}
        drawn = self._with_rows("train", rows, kept)
        record = {"labels_per_class": n, "seed": seed, "source_fingerprint": self.fingerprint}
        return replace(drawn, draw=record)

    def _with_rows(self, split: str, rows: np.ndarray, splits: dict[str, Split]) -> LabelledDataset:
        """A copy of ``splits`` whose ``split`` keeps ``rows``, with its own fingerprint."""
        source = self.split(split)
        texts = [source.texts[i] for i in rows]
        labels = [self.label_names[source.labels[i]] for i in rows]
        index = {label: i for i, label in enumerate(self.label_names)}
        splits = {**splits, split: _make_split(texts, labels, index)}
        summary = {
            "label_names": self.label_names,
            "splits": {s: v.fingerprint for s, v in splits.items()},
        }
        return LabelledDataset(
            self.name, splits, self.label_names, _sha256(summary), origin=self.origin
        )


def _missing_split(dataset: str, split: str, available: Iterable[str]) -> DataError:
    """The same error for labelled datasets and `split_texts`: it lists what is there."""
    listed = ", ".join(repr(s) for s in available)
    return DataError(f"dataset {dataset!r} has no split {split!r}; available: {listed}")


@dataclass(frozen=True)
class InputTexts:
    """Unlabelled texts to predict on, and where each came from.

    Empty texts are skipped, so `rows` (0-based positions among the input's records) and `ids`
    (the `id_column` values, unchanged) are what lets a caller match outputs to inputs.
    """

    texts: tuple[str, ...]
    rows: tuple[int, ...]
    ids: tuple[Any, ...] | None
    source: str


def load_dataset(
    spec: str | os.PathLike[str] = "demo",
    *,
    text_column: str = "text",
    label_column: str = "label",
    empty: str = "drop",
) -> LabelledDataset:
    """Load a labelled text-classification dataset from any supported source.

    `spec` is "demo"; a folder holding train.<ext> and optionally test.<ext> and
    validation/valid/dev.<ext>; a single file (a "train" split only); or a Hugging Face dataset
    id `name`, `org/name`, optionally `:config`. Extensions: jsonl, json, csv, tsv, parquet.
    Empty or whitespace-only texts are dropped with a warning (`empty="drop"`) or rejected
    (`empty="error"`): dropping is the default because a few blank rows are common in scraped
    data and carry no signal.
    """
    if empty not in _EMPTY_POLICIES:
        raise ConfigError(f"empty must be one of {_EMPTY_POLICIES}; got {empty!r}")
    if text_column == label_column:
        raise ConfigError(
            f"text_column and label_column are both {text_column!r}: the labels would be "
            "the texts themselves; name two different columns",
            params=("text_column", "label_column"),
        )
    name, raws = read_spec(spec, text_column, label_column)
    origin = {"source": _source(spec), "text_column": text_column, "label_column": label_column}
    return replace(_assemble(name, raws, empty), origin=origin)


def _source(spec: str | os.PathLike[str]) -> str:
    """``spec`` as another working directory can read it again: a local path made absolute,
    'demo' and a hub id as given. A config records it, so ``apply`` finds the data itself."""
    path = Path(spec).expanduser()
    if spec == "demo" or not path.exists():
        return str(spec)
    return str(path.resolve())


def split_texts(
    spec: str | os.PathLike[str], split: str = "train", *, text_column: str = "text"
) -> tuple[str, tuple[str, ...]]:
    """The texts of one split and a display source ("mr/train"), without needing labels.

    Embedding needs no labels, so a local file is not required to have a label column or two
    classes, and a .txt file (one text per line) is accepted; a single file is the "train"
    split. "demo" and Hugging Face ids go through `load_dataset`. Empty texts are dropped as
    `load_dataset` drops them, so a labelled file gives the same texts, hence the same
    embedding cache key (`text_fingerprint`).
    """
    path = Path(spec).expanduser()
    if spec == "demo" or not (path.is_dir() or path.is_file()):
        data = load_dataset(spec, text_column=text_column)
        return f"{data.name}/{split}", data.split(split).texts
    if path.is_dir():
        name, files = path.resolve().name, split_files(path)
    else:
        name, files = path.stem, {"train": path}
    if split not in files:
        raise _missing_split(name, split, files)
    raw = read_file(files[split], Columns(text_column), TEXT_READERS)
    _check_texts(raw)
    return f"{name}/{split}", tuple(raw.texts[i] for i in _drop_empty(raw, "drop"))


def read_inputs(
    path: str | os.PathLike[str], *, text_column: str = "text", id_column: str | None = None
) -> InputTexts:
    """Unlabelled texts to predict on: a .txt file (one text per line) or any table format.

    Empty or whitespace-only texts are skipped with a warning, since there is nothing to
    embed; the result keeps each text's row and, with `id_column`, its id, so every output
    can be matched to its input. The empty string after a .txt file's final newline is not a
    line. An input with no text at all is an error.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"input {str(path)!r} is a folder, not a file of texts: give a .txt (one text per "
            "line) or a CSV/TSV/JSONL/Parquet file"
        )
    if not path.is_file():
        raise DataError(f"input file not found: {str(path)!r}")
    raw = read_file(path, Columns(text_column, id_column, "id_column"), TEXT_READERS)
    _require_strings(raw)
    rows = tuple(i for i, text in enumerate(raw.texts) if text.strip())
    if not rows:
        raise DataError(f"{path}: no texts to predict on (the input is empty or all blank)")
    blank = [i for i, text in enumerate(raw.texts) if not text.strip()]
    if blank:
        _log.warning(
            "%s: skipped %d empty or whitespace-only text(s) at %s; they get no prediction",
            path,
            len(blank),
            raw.where(blank),
        )
    return InputTexts(
        texts=tuple(raw.texts[i] for i in rows),
        rows=rows,
        ids=None if id_column is None else tuple(raw.labels[i] for i in rows),
        source=str(path),
    )


def _clean(raw: Raw, empty: str) -> tuple[list[str], list[str]]:
    """Validate one split's values; labels become text (`_label_text`), so that CSV "1" and
    "1.0", JSON 1 and 1.0 and Parquet 1.0 are one class in every format."""
    _check_texts(raw)
    bad = [i for i, label in enumerate(raw.labels) if not _is_label(label)]
    if bad:
        raise DataError(
            f"{raw.source}: label is null, empty, a fraction or not a string/integer at "
            f"{raw.where(bad)} (first value: {raw.labels[bad[0]]!r})"
        )
    labels = _strip_labels(raw)
    keep = _drop_empty(raw, empty)
    return [raw.texts[i] for i in keep], [_label_text(labels[i]) for i in keep]


def _check_texts(raw: Raw) -> None:
    """A split must have rows, and every text must be a string."""
    if not raw.texts:
        raise DataError(f"{raw.source}: no rows; a dataset needs examples")
    _require_strings(raw)


def _require_strings(raw: Raw) -> None:
    """Null or numeric texts mean a wrong column or a broken export: fail, naming the rows."""
    bad = [i for i, text in enumerate(raw.texts) if not isinstance(text, str)]
    if bad:
        raise DataError(
            f"{raw.source}: text is null or not a string at {raw.where(bad)} "
            f"(first value: {raw.texts[bad[0]]!r}); fix those rows or choose another text_column",
            params=("text_column",),
        )


def _strip_labels(raw: Raw) -> list[Any]:
    """Labels without surrounding whitespace: "pos " (common in hand-edited files) must not
    become a class apart from "pos". Warned about, once per source, since it changes data."""
    padded = [
        i for i, label in enumerate(raw.labels) if isinstance(label, str) and label != label.strip()
    ]
    if padded:
        _log.warning(
            "%s: stripped surrounding whitespace from %d label(s) at %s",
            raw.source,
            len(padded),
            raw.where(padded),
        )
    return [label.strip() if isinstance(label, str) else label for label in raw.labels]


def _is_label(label: Any) -> bool:
    """A non-blank string, an integer, or a whole float (1.0: pandas writes an integer
    column with gaps as floats); a fraction (0.5) looks like a regression target, whether
    a JSON number or the text of one (CSV/TSV have no types: "0.5" is how they write 0.5)."""
    if isinstance(label, str):
        text = label.strip()
        return bool(text) and not (_DECIMAL.fullmatch(text) and not _WHOLE_DECIMAL.fullmatch(text))
    if isinstance(label, float):
        return label.is_integer()
    return isinstance(label, int) and not isinstance(label, bool)


def _label_text(label: str | int | float) -> str:
    """A label's class name: its text as written (a number as Python writes it), except
    that a whole decimal ("1.0", "-2.00") names the integer ("1", "-2"). Labels are
    otherwise compared as text, so "01", "+1" and "1e0" stay apart from "1", as they would
    in a JSON string."""
    text = str(label)
    whole = _WHOLE_DECIMAL.fullmatch(text)
    return whole.group(1) if whole else text


def _drop_empty(raw: Raw, empty: str) -> list[int]:
    """Indices of rows to keep after the empty-text policy (see `load_dataset`)."""
    blank = [i for i, text in enumerate(raw.texts) if not text.strip()]
    if not blank:
        return list(range(len(raw.texts)))
    found = f"{len(blank)} empty or whitespace-only texts at {raw.where(blank)}"
    if empty == "error":
        raise DataError(f"{raw.source}: {found}; remove them or pass empty='drop'")
    if len(blank) == len(raw.texts):
        raise DataError(f"{raw.source}: every text is empty or whitespace-only")
    _log.warning("%s: dropped %s", raw.source, found)
    blank_set = set(blank)
    return [i for i in range(len(raw.texts)) if i not in blank_set]


def _assemble(name: str, raws: dict[str, Raw], empty: str) -> LabelledDataset:
    """Validate every split against the train labels and fingerprint the result."""
    cleaned = {split: _clean(raws[split], empty) for split in SPLIT_ORDER if split in raws}
    label_names = _label_names(raws["train"].source, cleaned["train"][1])
    index = {label: i for i, label in enumerate(label_names)}
    splits = {}
    for split, (texts, labels) in cleaned.items():
        _check_known(raws[split].source, labels, label_names)
        _warn_conflicts(raws[split].source, texts, labels)
        splits[split] = _make_split(texts, labels, index)
    summary = {"label_names": label_names, "splits": {s: v.fingerprint for s, v in splits.items()}}
    return LabelledDataset(name, splits, label_names, _sha256(summary))


def _warn_conflicts(source: str, texts: list[str], labels: list[str]) -> None:
    """Warn about identical texts carrying different labels: no classifier can get both
    right, so they cap accuracy; they are kept because dropping data silently is worse."""
    seen: dict[str, str] = {}
    conflicts = set()
    for text, label in zip(texts, labels, strict=True):
        if seen.setdefault(text, label) != label:
            conflicts.add(text)
    if conflicts:
        example = next(iter(sorted(conflicts)))[:60]
        _log.warning(
            "%s: %d text(s) appear with conflicting labels (e.g. %r); they are kept",
            source,
            len(conflicts),
            example,
        )


def _check_known(source: str, labels: list[str], label_names: tuple[str, ...]) -> None:
    """A label unseen in train can never be predicted, so it points to a mislabelled file."""
    unknown = sorted(set(labels) - set(label_names))
    if unknown:
        shown = ", ".join(repr(label) for label in unknown[:_SHOWN_LABELS])
        raise DataError(
            f"{source}: labels not in the train split: {shown}; "
            f"train labels: {', '.join(label_names)}"
        )


def _label_names(source: str, labels: list[str]) -> tuple[str, ...]:
    """Sorted unique labels: numerically if all are integers (so "10" follows "9")."""
    unique = set(labels)
    if len(unique) < 2:
        raise DataError(
            f"{source}: only one class ({next(iter(unique))!r}) in the train split; "
            "classification needs at least 2"
        )
    if all(_INTEGER.fullmatch(label) for label in unique):
        return tuple(sorted(unique, key=lambda label: (int(label), label)))
    return tuple(sorted(unique))


def _make_split(texts: list[str], labels: list[str], index: dict[str, int]) -> Split:
    ids = np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels))
    ids.flags.writeable = False
    return Split(tuple(texts), ids, _sha256([texts, labels]), text_fingerprint(texts))


def text_fingerprint(texts: Sequence[str]) -> str:
    """Content hash of an ordered list of texts: the embedding cache's key for them."""
    return _sha256(list(texts))


def _sha256(value: Any) -> str:
    """Content hash of a JSON-serialisable value: stable across runs, machines and formats."""
    return hashlib.sha256(json.dumps(value).encode("ascii")).hexdigest()


def _check_stratifiable(name: str, n: int, n_classes: int, size: float) -> None:
    """Pre-empt sklearn's stratification errors with one that says what to change."""
    n_val = int(np.ceil(size * n))
    if n_classes >= 1 and min(n_val, n - n_val) >= n_classes:
        return
    raise DataError(
        f"dataset {name!r}: cannot carve a stratified validation split of {size:.0%}: "
        f"{n} train examples in {n_classes} classes with 2+ examples give {n_val} for validation "
        f"and {n - n_val} for training, and each side needs one per class; add data, or judge "
        "by cross-validation (cv_folds) instead",
        params=("cv_folds",),
    )

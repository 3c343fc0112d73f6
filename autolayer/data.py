"""Load, validate, split and fingerprint labelled text datasets → texts, labels.

Also reads texts without labels: `split_texts` (one split, for embedding) and `read_inputs`
(texts to predict on, with their rows and ids so outputs can be matched back to inputs). The
file formats and Hugging Face datasets are read by `autolayer.readers`; this module validates
what they read and holds the resulting `LabelledDataset` (its splits, samples, fingerprints).

Everything downstream (extraction, caching, probing, search) sees only a `LabelledDataset`: the
source format is forgotten here, so a CSV and a JSONL with the same rows fingerprint the same and
share cached embeddings. Bad input fails early with one-line `DataError`s naming the file, the
line or row and what to change, because a bad row found after an hour of extraction is costly.

A row's label may be a set of labels (multi-label: JSON or Parquet lists, a hub `Sequence`, or
text split at `label_sep`); such a dataset holds a 0/1 indicator per row.
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
from typing import Any, NamedTuple

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
from autolayer.sampling import covering_rows, rarest_label, stratified_rows

__all__ = [
    "InputTexts",
    "LabelledDataset",
    "Split",
    "binarize",
    "demo_path",
    "load_dataset",
    "read_inputs",
    "split_texts",
]

_log = logging.getLogger("autolayer")

_EMPTY_POLICIES = ("drop", "error")
_SHOWN_LABELS = 5  # unknown labels named in an error, or labels in a warning
_SHOWN_TRAIN_LABELS = 10  # train labels an unknown-label error lists
_LIST_SEPARATORS = (";", "|", ",")  # what joins a label list in a CSV/TSV cell
_JOINED_SHARE = 0.05  # the share of train rows with joined labels that warns of a list column

_INTEGER = re.compile(r"-?\d+")
_WHOLE_DECIMAL = re.compile(r"(-?\d+)\.0+")  # "1.0": how CSV exports write the label 1
_DECIMAL = re.compile(r"-?\d+\.\d+")  # "0.5" in a CSV is the JSON number 0.5


@dataclass(frozen=True, eq=False)
class Split:
    """One source split: texts in file order and their label indices (single-label) or a 0/1
    indicator of their labels (multi-label).

    `eq=False` because comparing arrays field by field is ambiguous; compare `fingerprint`
    (texts and labels) or `text_fingerprint` (texts only, the embedding cache key) instead.
    """

    texts: tuple[str, ...]
    # int64 [N], indices into LabelledDataset.label_names, or (multi-label) uint8 [N, K], a
    # column per label name; read-only
    labels: np.ndarray
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

    @property
    def task(self) -> str:
        """The task the labels pose: "multi_label" when the train labels are an indicator
        [N, K], else "single_label"."""
        return "multi_label" if self.split("train").labels.ndim == 2 else "single_label"

    @property
    def nouns(self) -> tuple[str, str]:
        """What one target is called in messages: a class, or a label of a label set."""
        return ("label", "labels") if self.task == "multi_label" else ("class", "classes")

    def check_single_label(self, option: str) -> None:
        """Refuse few-label mode (``option``: ``labels_per_class`` or ``cv_folds``) on
        multi-label data, before any work: its per-class draw, folds, anchor and margins
        count classes of one label per row. The one refusal, whichever way it is asked."""
        if self.task == "multi_label":
            raise ConfigError(
                f"{option} (few-label mode) is single-label only: dataset {self.name!r} is "
                "multi-label; cap its training rows with max_train_samples instead",
                params=(option, "max_train_samples"),
            )

    def train_validation(self, size: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Carve a stratified, seeded validation set out of the "train" split.

        Returns sorted int64 index arrays (train_idx, val_idx) into `split("train")`. This
        ignores any "validation" source split on purpose: callers that find one in `splits`
        should use it instead. Classes with a single example cannot be stratified, so they
        always go to train, with a warning since validation cannot judge them; a DataError is
        raised when fewer than two classes could be validated, or too few examples remain to
        give every other class a place on both sides. Multi-label rows are stratified by their
        rarest label (`rarest_label`), and then every label of 2+ rows gets a row on each
        side where it can: the validation split tunes each label's threshold.
        """
        if not 0.0 < size < 1.0:
            raise ConfigError(f"train_validation size must be a fraction in (0, 1); got {size!r}")
        labels = self.split("train").labels
        multi = labels.ndim == 2
        strata = rarest_label(labels) if multi else labels
        counts = np.bincount(strata, minlength=len(self.label_names))
        if not multi and (counts > 1).sum() == 1:
            raise DataError(
                f"dataset {self.name!r}: cannot carve a validation split with two classes: only "
                f"class {self.label_names[int(np.argmax(counts))]!r} has 2 or more training "
                f"examples ({self._counts(counts)}); add examples of the others"
            )
        singles = np.flatnonzero(counts[strata] == 1)
        rest = np.flatnonzero(counts[strata] > 1)
        _check_stratifiable(self.name, len(rest), int((counts > 1).sum()), size, multi)
        from sklearn.model_selection import train_test_split

        train_idx, val_idx = train_test_split(
            rest, test_size=size, random_state=seed, stratify=strata[rest]
        )
        train_idx = np.concatenate([train_idx, singles])
        if multi:
            train_idx, val_idx = _on_both_sides(labels, val_idx, seed)
            self._check_carved(labels[val_idx])
        k = len(self.label_names)
        self._warn_unvalidated(_label_counts(labels, k), _label_counts(labels[val_idx], k))
        return np.sort(train_idx).astype(np.int64), np.sort(val_idx).astype(np.int64)

    def _check_carved(self, val: np.ndarray) -> None:
        """A carved multi-label validation split must hold two labels to tell them apart (rows
        of one label set, or of none, can all be strata of their own)."""
        counts = _label_counts(val, len(self.label_names))
        if np.count_nonzero(counts) < 2:
            raise DataError(
                f"dataset {self.name!r}: cannot carve a validation split with two labels: its "
                f"rows hold {self._counts(counts) or 'no label'}; add examples of other labels"
            )

    def check_validation(self) -> None:
        """Check the source "validation" split before it judges a search.

        A split of a single class cannot tell configurations apart on any metric (and
        ``macro_f1`` on it is meaningless), so it is refused with its counts, offering a
        carve from train when train could give one; a split lacking some classes of train
        is used, with a warning naming them, since its scores ignore those classes. Multi-label:
        the same, counting each label's positive rows.
        """
        k = len(self.label_names)
        train = _label_counts(self.split("train").labels, k)
        val = _label_counts(self.split("validation").labels, k)
        present = np.flatnonzero(val)
        if present.size >= 2:
            self._warn_unvalidated(train, val)
            return
        missing = _capped([repr(self.label_names[c]) for c in np.flatnonzero(val == 0)])
        carve = (
            "; or remove it, and a stratified validation split is carved from train"
            if (train > 1).sum() >= 2
            else ""
        )
        noun, nouns = self.nouns
        held = f"a single {noun} ({self._counts(val)})" if present.size else f"no {noun}"
        raise DataError(
            f"dataset {self.name!r}: its validation split has {held}, so it cannot tell "
            f"{nouns} apart: add examples of {missing} to it{carve}"
        )

    def _warn_unvalidated(self, train: np.ndarray, val: np.ndarray) -> None:
        """Warn, with counts, about classes of train (counts ``train``) that the validation
        split (counts ``val``) lacks: its scores say nothing about them. The first few of
        each list are named: a run repeats the warning, and 90 labels make it a page."""
        missing = np.flatnonzero((val == 0) & (train > 0))
        if missing.size == 0:
            return
        named = _capped([f"{self.label_names[c]!r} ({train[c]} in train)" for c in missing])
        _log.warning(
            "dataset %r: the validation split has no example of %s %s; configurations are "
            "judged on the others only (%s)",
            self.name,
            self.nouns[0],
            named,
            self._counts(val),
        )

    def _counts(self, counts: np.ndarray) -> str:
        """``'a': 3, 'b': 1``: each class present (the first few) and its number of rows."""
        return _capped([f"{self.label_names[c]!r}: {counts[c]}" for c in np.flatnonzero(counts)])

    def subsample(self, size: int, *, split: str = "train", seed: int = 0) -> LabelledDataset:
        """A copy whose ``split`` keeps ``size`` rows, stratified and seeded.

        For sets too large to embed on a CPU (SST-2 has 67k training sentences): every class
        keeps at least one row and the rest follow class proportions, so the label
        vocabulary is unchanged; the same seed always picks the same rows, hence the same
        embedding cache entry. Rows stay in file order. A train sample records how it was
        drawn (``sample``), so that ``apply`` can repeat it rather than embed every row.
        Multi-label: every label keeps a row (`covering_rows`), the rest follow the
        rarest-label strata.
        """
        source = self.split(split)
        n_classes = len(self.label_names)
        noun, nouns = self.nouns
        if not n_classes <= size:
            raise ConfigError(
                f"a sample of {size} rows cannot hold the {n_classes} {nouns} (one per {noun}): "
                f"ask for {n_classes} or more"
            )
        if size >= len(source):
            return self
        if source.labels.ndim == 2:
            rows = covering_rows(source.labels, size, seed)
        else:
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
        Single-label only: a multi-label row belongs to several classes at once.
        """
        self.check_single_label("labels_per_class")
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
        splits = {**splits, split: _make_split(texts, source.labels[rows], self.label_names)}
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
    label_sep: str | None = None,
    allow_empty_labels: bool = False,
) -> LabelledDataset:
    """Load a labelled text-classification dataset from any supported source.

    `spec` is "demo"; a folder holding train.<ext> and optionally test.<ext> and
    validation/valid/dev.<ext>; a single file (a "train" split only); or a Hugging Face dataset
    id `name`, `org/name`, optionally `:config`. Extensions: jsonl, json, csv, tsv, parquet.
    Empty or whitespace-only texts are dropped with a warning (`empty="drop"`) or rejected
    (`empty="error"`): dropping is the default because a few blank rows are common in scraped
    data and carry no signal.

    Multi-label data gives each row a list of labels (JSON/Parquet lists, a hub `Sequence`),
    or text that `label_sep` splits ("earn;acq" with ";"; any format). A row with no label is
    refused unless `allow_empty_labels` (it then means "none of these"). With the default
    `label_column` "label" absent and a "labels" column present, "labels" is read; `origin`
    records the column read, and `label_sep` / `allow_empty_labels` when given.
    """
    if empty not in _EMPTY_POLICIES:
        raise ConfigError(f"empty must be one of {_EMPTY_POLICIES}; got {empty!r}")
    if label_sep is not None and not (isinstance(label_sep, str) and label_sep):
        raise ConfigError(
            f"label_sep must be a non-empty string; got {label_sep!r}", params=("label_sep",)
        )
    if text_column == label_column:
        raise ConfigError(
            f"text_column and label_column are both {text_column!r}: the labels would be "
            "the texts themselves; name two different columns",
            params=("text_column", "label_column"),
        )
    name, raws = read_spec(spec, text_column, label_column)
    origin: dict[str, Any] = {
        "source": _source(spec),
        "text_column": text_column,
        "label_column": raws["train"].column or label_column,
    }
    if label_sep is not None:
        origin["label_sep"] = label_sep
    if allow_empty_labels:
        origin["allow_empty_labels"] = True
    data = _assemble(name, raws, _Rules(empty, label_sep, allow_empty_labels))
    return replace(data, origin=origin)


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


class _Rules(NamedTuple):
    """How `load_dataset` was told to read rows: blank texts, label sets."""

    empty: str
    label_sep: str | None
    allow_empty_labels: bool


class _Cleaned(NamedTuple):
    """One split's validated rows."""

    texts: list[str]
    labels: list[Any]  # a class name per row, or (multi) a sorted tuple of label names
    multi: bool


def _clean(raw: Raw, rules: _Rules) -> _Cleaned:
    """Validate one split's values; labels become text (`_label_text`), so that CSV "1" and
    "1.0", JSON 1 and 1.0 and Parquet 1.0 are one class in every format. A split is
    multi-label when `label_sep` is given or any of its labels is a list."""
    _check_texts(raw)
    multi = rules.label_sep is not None or any(isinstance(label, list) for label in raw.labels)
    labels = _label_sets(raw, rules) if multi else _single_labels(raw)
    keep = _drop_empty(raw, rules.empty)
    return _Cleaned([raw.texts[i] for i in keep], [labels[i] for i in keep], multi)


def _single_labels(raw: Raw) -> list[str]:
    """One class name per row."""
    bad = [i for i, label in enumerate(raw.labels) if not _is_label(label)]
    if bad:
        raise DataError(
            f"{raw.source}: label is null, empty, a fraction or not a string/integer at "
            f"{raw.where(bad)} (first value: {raw.labels[bad[0]]!r})"
        )
    return [_label_text(row[0]) for row in _strip_labels(raw, [[label] for label in raw.labels])]


def _label_sets(raw: Raw, rules: _Rules) -> list[tuple[str, ...]]:
    """Each row's label names, sorted, duplicates merged; each label checked as a single
    label is. A row without any is refused unless `allow_empty_labels`: it is more often a
    lost annotation than a deliberate "none of these"."""
    rows = [_as_list(label, rules.label_sep) for label in raw.labels]
    odd = [i for i, row in enumerate(rows) if row is None]
    if odd:
        raise _not_a_list(raw, odd, rules.label_sep)
    bad = [i for i, row in enumerate(rows) if not all(_is_label(label) for label in row)]
    if bad:
        first = next(label for label in rows[bad[0]] if not _is_label(label))
        raise DataError(
            f"{raw.source}: a label in a list is null, empty, a fraction or not a "
            f"string/integer at {raw.where(bad)} (first value: {first!r})"
        )
    sets = [tuple(sorted({_label_text(x) for x in row})) for row in _strip_labels(raw, rows)]
    none = [i for i, names in enumerate(sets) if not names]
    if none and not rules.allow_empty_labels:
        raise DataError(
            f"{raw.source}: no label (an empty list or text) at {raw.where(none)}; give each "
            "row a label, or pass allow_empty_labels=True to keep such rows as 'none of these'",
            params=("allow_empty_labels",),
        )
    return sets


def _as_list(label: Any, label_sep: str | None) -> list[Any] | None:
    """A row's labels as a list: a list as it is; with `label_sep`, text split at it (blank
    pieces dropped: "a;" and "a; b" are common) and any other value one label. None where it
    cannot be: a single value without `label_sep`, or null."""
    if isinstance(label, list):
        return label
    if label_sep is None or label is None:
        return None
    if isinstance(label, str):
        return [piece.strip() for piece in label.split(label_sep) if piece.strip()]
    return [label]


def _not_a_list(raw: Raw, rows: list[int], label_sep: str | None) -> DataError:
    """Why some rows of a multi-label split give no label list."""
    found = f"at {raw.where(rows)} (first value: {raw.labels[rows[0]]!r})"
    if label_sep is not None:
        return DataError(f"{raw.source}: label is null {found}")
    return DataError(
        f"{raw.source}: some labels are lists and some are not: not a list {found}; write "
        'a single label as a one-item list (["a"]), or pass label_sep to split text labels',
        params=("label_sep",),
    )


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


def _strip_labels(raw: Raw, rows: list[list[Any]]) -> list[list[Any]]:
    """Each row's labels without surrounding whitespace: "pos " (common in hand-edited files)
    must not become a class apart from "pos". Warned about, once per source, since it changes
    data."""
    padded = [
        i
        for i, row in enumerate(rows)
        if any(isinstance(label, str) and label != label.strip() for label in row)
    ]
    if padded:
        _log.warning(
            "%s: stripped surrounding whitespace from %d label(s) at %s",
            raw.source,
            len(padded),
            raw.where(padded),
        )
    return [[label.strip() if isinstance(label, str) else label for label in row] for row in rows]


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


def _assemble(name: str, raws: dict[str, Raw], rules: _Rules) -> LabelledDataset:
    """Validate every split against the train labels and fingerprint the result."""
    cleaned = {split: _clean(raws[split], rules) for split in SPLIT_ORDER if split in raws}
    train = cleaned["train"]
    if not train.multi:
        _warn_joined(raws["train"].source, train.labels)
    label_names = _label_names(raws["train"].source, _every_label(train), train.multi)
    splits = {}
    for split, rows in cleaned.items():
        if rows.multi != train.multi:
            raise DataError(_kind_mismatch(raws[split].source, rows.multi))
        _check_known(raws[split].source, _every_label(rows), label_names, train.multi)
        _warn_conflicts(raws[split].source, rows.texts, rows.labels)
        splits[split] = _make_split(rows.texts, _targets(rows, label_names), label_names)
    summary = {"label_names": label_names, "splits": {s: v.fingerprint for s, v in splits.items()}}
    return LabelledDataset(name, splits, label_names, _sha256(summary))


def _every_label(rows: _Cleaned) -> list[str]:
    """Every label of a split's rows, as often as it occurs."""
    return [label for names in rows.labels for label in names] if rows.multi else rows.labels


def _kind_mismatch(source: str, multi: bool) -> str:
    """A split whose labels are lists where train's are single values, or the reverse."""
    kinds = ("lists", "single values")
    found, train = kinds if multi else kinds[::-1]
    return (
        f"{source}: labels are {found} but the train split's are {train}; write every split's "
        "labels the same way (label_sep splits text labels in every split)"
    )


def _warn_conflicts(source: str, texts: list[str], labels: list[Any]) -> None:
    """Warn about identical texts carrying different labels: no classifier can get both
    right, so they cap accuracy; they are kept because dropping data silently is worse."""
    seen: dict[str, Any] = {}
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


def _check_known(source: str, labels: list[str], label_names: tuple[str, ...], multi: bool) -> None:
    """A label unseen in train can never be predicted, so it points to a mislabelled file,
    or (single-label, "acq;crude") to label lists read without `label_sep`."""
    unknown = sorted(set(labels) - set(label_names))
    if not unknown:
        return
    shown = _capped([repr(label) for label in unknown])
    known = _capped(list(label_names), _SHOWN_TRAIN_LABELS)
    message = f"{source}: labels not in the train split: {shown}; train labels: {known}"
    joined = None if multi else next(filter(None, map(_joined_by, unknown)), None)
    if joined is None:
        raise DataError(message)
    raise DataError(
        f"{message}; if labels are lists joined by {joined!r}, pass label_sep {joined!r}",
        params=("label_sep",),
    )


def _warn_joined(source: str, labels: list[str]) -> None:
    """Warn when many single labels look like lists joined by a separator ("acq;crude"):
    read without `label_sep`, multi-label CSV/TSV data would silently train on each
    combination as a class of its own. A few such labels are common in ordinary data
    ("R&D, sales"), so only a share of rows warns."""
    counts: dict[str, list[str]] = {}
    for label in labels:
        sep = _joined_by(label)
        if sep is not None:
            counts.setdefault(sep, []).append(label)
    if not counts:
        return
    sep, joined = max(counts.items(), key=lambda item: len(item[1]))
    if len(joined) >= max(2, _JOINED_SHARE * len(labels)):
        _log.warning(
            "%s: labels look like lists joined by %r (e.g. %r): for multi-label data pass "
            "label_sep=%r (--label-sep %r on the command line)",
            source,
            sep,
            joined[0],
            sep,
            sep,
        )


def _joined_by(label: str) -> str | None:
    """The first of `_LIST_SEPARATORS` that splits ``label`` into two or more non-blank
    parts, or None."""
    for sep in _LIST_SEPARATORS:
        if sum(bool(part.strip()) for part in label.split(sep)) >= 2:
            return sep
    return None


def _capped(items: list[str], shown: int = _SHOWN_LABELS) -> str:
    """``items`` joined by commas, the first ``shown`` of them and how many more: a message
    stays one readable line with 90 labels."""
    more = f", … and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _label_names(source: str, labels: list[str], multi: bool) -> tuple[str, ...]:
    """Sorted unique labels: numerically if all are integers (so "10" follows "9")."""
    unique = set(labels)
    if len(unique) < 2:
        noun = "label" if multi else "class"
        found = f"only one {noun} ({next(iter(unique))!r})" if unique else f"no {noun}"
        raise DataError(f"{source}: {found} in the train split; classification needs at least 2")
    if all(_INTEGER.fullmatch(label) for label in unique):
        return tuple(sorted(unique, key=lambda label: (int(label), label)))
    return tuple(sorted(unique))


def _targets(rows: _Cleaned, label_names: tuple[str, ...]) -> np.ndarray:
    """Class indices int64 [N], or (multi-label) a uint8 indicator [N, K]."""
    if rows.multi:
        return binarize(rows.labels, label_names)
    index = {label: i for i, label in enumerate(label_names)}
    return np.fromiter((index[label] for label in rows.labels), np.int64, len(rows.labels))


def binarize(
    label_sets: Iterable[Iterable[str]], label_names: Sequence[str], where: str = "labels"
) -> np.ndarray:
    """Each row's label names as a uint8 indicator ``[N, K]``, a column per name of
    ``label_names`` in its order: what a multi-label `Split` holds and a multi-label head
    trains on. A label not among ``label_names`` is a DataError naming it (``where``: what
    held it)."""
    index = {str(label): i for i, label in enumerate(label_names)}
    sets = [list(row) for row in label_sets]
    unknown = sorted({label for row in sets for label in row} - set(index))
    if unknown:
        shown = ", ".join(list(index)[:_SHOWN_LABELS]) + ", …" * (len(index) > _SHOWN_LABELS)
        raise DataError(
            f"{where}: label {unknown[0]!r} is not one of the {len(index)} labels ({shown})"
        )
    indicator = np.zeros((len(sets), len(index)), dtype=np.uint8)
    for row, names in enumerate(sets):
        indicator[row, [index[label] for label in names]] = 1
    return indicator


def _make_split(texts: list[str], targets: np.ndarray, label_names: tuple[str, ...]) -> Split:
    """A read-only split fingerprinted by its texts and label names (each row's sorted names,
    multi-label), so that neither the format nor the label order of a row matters."""
    targets.flags.writeable = False
    if targets.ndim == 2:
        named = [sorted(label_names[j] for j in np.flatnonzero(row)) for row in targets]
    else:
        named = [label_names[i] for i in targets]
    return Split(tuple(texts), targets, _sha256([texts, named]), text_fingerprint(texts))


def text_fingerprint(texts: Sequence[str]) -> str:
    """Content hash of an ordered list of texts: the embedding cache's key for them."""
    return _sha256(list(texts))


def _sha256(value: Any) -> str:
    """Content hash of a JSON-serialisable value: stable across runs, machines and formats."""
    return hashlib.sha256(json.dumps(value).encode("ascii")).hexdigest()


def _check_stratifiable(name: str, n: int, n_strata: int, size: float, multi: bool) -> None:
    """Pre-empt sklearn's stratification errors with one that says what to change: for
    single labels, a class is a stratum and cross-validation a way out; multi-label rows
    are stratified by their rarest label, and cross-validation is few-label mode, which
    is single-label only, so only more data (or a validation split of its own) helps."""
    n_val = int(np.ceil(size * n))
    if n_strata >= 1 and min(n_val, n - n_val) >= n_strata:
        return
    carve = f"dataset {name!r}: cannot carve a stratified validation split of {size:.0%}: {n}"
    sides = f"give {n_val} for validation and {n - n_val} for training, and each side needs"
    if multi:
        raise DataError(
            f"{carve} train examples in {n_strata} rarest-label strata (rows grouped by their "
            f"least frequent label) with 2+ examples {sides} one per stratum; add examples "
            "of the rare labels, or give the dataset a validation split of its own"
        )
    raise DataError(
        f"{carve} train examples in {n_strata} classes with 2+ examples {sides} one per "
        "class; add data, or judge by cross-validation (cv_folds) instead",
        params=("cv_folds",),
    )


def _label_counts(labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Rows per class, or (an indicator) positive rows per label."""
    if labels.ndim == 2:
        return labels.sum(axis=0, dtype=np.int64)
    return np.bincount(labels, minlength=n_labels)


def _on_both_sides(
    indicator: np.ndarray, val_idx: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) rows after giving each label of 2+ rows a row on both sides where
    the carve ``val_idx`` left it on one: a seeded row of it moves across, rarest labels
    first, never one holding the last row of another label on its side.

    sklearn's proportions put a stratum of 2 or 3 rows wholly in train, and a label that is
    no row's rarest has no stratum (nor, a single row's, a place in validation); a
    multi-label validation split fits each label's threshold, so a label should have a row
    there (and train one to learn it from)."""
    rng = np.random.default_rng(seed)
    in_val = np.zeros(len(indicator), dtype=bool)
    in_val[val_idx] = True
    total = indicator.sum(axis=0, dtype=np.int64)
    in_val_counts = indicator[in_val].sum(axis=0, dtype=np.int64)
    for label in np.argsort(total, kind="stable"):
        if total[label] < 2 or 0 < in_val_counts[label] < total[label]:
            continue
        to_val = in_val_counts[label] == 0
        left = total - in_val_counts if to_val else in_val_counts  # on the side rows leave
        rows = np.flatnonzero(indicator[:, label] & (in_val != to_val))
        safe = rows[np.all((indicator[rows] == 0) | (left >= 2), axis=1)]
        if safe.size:
            row = rng.choice(safe)
            in_val[row] = to_val
            moved = indicator[row].astype(np.int64)
            in_val_counts += moved if to_val else -moved
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)

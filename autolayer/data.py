"""Load, validate, split and fingerprint labelled text datasets → texts, labels.

Also reads texts without labels: `split_texts` (one split, for embedding) and `read_inputs`
(texts to predict on, with their rows and ids so outputs can be matched back to inputs).

Everything downstream (extraction, caching, probing, search) sees only a `LabelledDataset`: the
source format is forgotten here, so a CSV and a JSONL with the same rows fingerprint the same and
share cached embeddings. Bad input fails early with one-line `DataError`s naming the file, the
line or row and what to change, because a bad row found after an hour of extraction is costly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from autolayer.errors import ConfigError, DataError
from autolayer.hub import offline
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

_SPLIT_ALIASES = {
    "train": "train",
    "test": "test",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
}
_SPLIT_ORDER = ("train", "validation", "test")
_EMPTY_POLICIES = ("drop", "error")
_SHOWN_POSITIONS = 5
# `name`, `org/name`, optionally `:config`; anything else that does not exist is a missing path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")
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


@dataclass(frozen=True)
class _Columns:
    """The columns a reader picks: the texts and optionally one more, read into `_Raw.labels`
    (the labels, or the ids of `read_inputs`). Errors cite each column by the option that
    names it, so a wrong name is a one-step fix."""

    text: str
    other: str | None = None
    other_option: str = "label_column"

    def options(self) -> dict[str, str]:
        """Option name → column name, texts first."""
        named = {"text_column": self.text}
        if self.other is not None:
            named[self.other_option] = self.other
        return named


@dataclass(frozen=True)
class _Raw:
    """Column values as read from one source, before validation; positions locate rows.

    Index i is the i-th record (blank CSV rows and JSONL lines are skipped, not records), which
    `read_inputs` reports as `rows`; `positions[i]` is where to find it in the file.
    """

    source: str
    unit: str  # "line" (1-based, in a text file) or "row index" (0-based, in a table)
    texts: list[Any]
    labels: list[Any]  # or ids; None each when `_Columns.other` is None
    positions: list[int]

    def where(self, indices: Sequence[int]) -> str:
        """Name the first few offending rows so the user can find them in their file."""
        shown = ", ".join(str(self.positions[i]) for i in indices[:_SHOWN_POSITIONS])
        more = len(indices) - _SHOWN_POSITIONS
        return f"{self.unit} {shown}" + (f" and {more} more" if more > 0 else "")


def demo_path() -> Path:
    """Folder of the bundled demo set (MR sentence polarity sample: train.jsonl, test.jsonl)."""
    return Path(__file__).parent / "demo"


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
    name, raws = _read_spec(spec, text_column, label_column)
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
        name, files = path.resolve().name, _split_files(path)
    else:
        name, files = path.stem, {"train": path}
    if split not in files:
        raise _missing_split(name, split, files)
    raw = _read_file(files[split], _Columns(text_column), _TEXT_READERS)
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
    raw = _read_file(path, _Columns(text_column, id_column, "id_column"), _TEXT_READERS)
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


def _read_spec(
    spec: str | os.PathLike[str], text_column: str, label_column: str
) -> tuple[str, dict[str, _Raw]]:
    """Resolve `spec` to a name and raw splits: demo, folder, file, then hub id."""
    columns = _Columns(text_column, label_column)
    if isinstance(spec, str) and spec == "demo":
        return "demo", _read_folder(demo_path(), columns)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve().name, _read_folder(path, columns)
    if path.is_file():
        return path.stem, {"train": _read_file(path, columns)}
    if isinstance(spec, str) and not _looks_like_path(spec):
        return spec, _read_hub(spec, text_column, label_column)
    raise DataError(
        f"no such file or folder: {str(path)!r}; give 'demo', a file or folder ({_formats()}) "
        "or a Hugging Face dataset id"
    )


def _looks_like_path(spec: str) -> bool:
    """Whether a missing `spec` was meant as a local path, so it fails at once: asking the
    hub about a mistyped path costs half a minute of retries, and their log lines. Not a
    hub id (`./x`, `~/x`, `/x`, `a/b/c`, a backslash), a data file's extension, or an
    `org/name` whose `org` is a local folder."""
    path = Path(spec)
    return (
        not _HUB_ID.fullmatch(spec)
        or path.suffix.lower() in _DATA_SUFFIXES
        or (len(path.parts) > 1 and path.parent.is_dir())
    )


def _read_folder(folder: Path, columns: _Columns) -> dict[str, _Raw]:
    """Read train.<ext> and any test/validation file beside it, train first."""
    return {split: _read_file(path, columns) for split, path in _split_files(folder).items()}


def _split_files(folder: Path) -> dict[str, Path]:
    """Each split's file in `folder`, in `_SPLIT_ORDER`; a train file is required."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        split = _SPLIT_ALIASES.get(path.stem.lower())
        if split is None or path.suffix.lower() not in _READERS or not path.is_file():
            continue
        if split in files:
            raise DataError(
                f"{folder}: both {files[split].name} and {path.name} give the {split!r} split; "
                "keep one"
            )
        files[split] = path
    if "train" not in files:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise DataError(
            f"{folder}: no train file; expected train.<ext> with ext in {_formats()}, "
            f"found: {found}"
        )
    return {split: files[split] for split in _SPLIT_ORDER if split in files}


def _read_file(path: Path, columns: _Columns, readers: dict[str, _Reader] | None = None) -> _Raw:
    """Dispatch on the extension to one of `readers` (default: the labelled formats)."""
    readers = _READERS if readers is None else readers
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{path}: unsupported file extension {path.suffix!r}; "
            f"supported: {', '.join(sorted(readers))}"
        )
    return reader(path, columns)


def _decode(path: Path) -> str:
    """Read a text file as strict UTF-8 (a BOM is allowed), locating any bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: not valid UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start} "
            f"(line {line}); re-save the file as UTF-8"
        ) from None


def _read_lines(path: Path, columns: _Columns) -> _Raw:
    """A .txt file of unlabelled texts, one per line ("\n" or "\r\n"). The empty string after
    the final newline is not a line; other blank lines are kept, so indices are line indices."""
    if columns.other is not None:
        raise DataError(
            f"{path}: {columns.other_option}={columns.other!r} needs a table with columns "
            f"({_formats()}); a .txt file holds only texts, one per line"
        )
    text = _decode(path)
    lines = re.split(r"\r?\n", text)
    if text.endswith("\n"):
        lines.pop()
    return _Raw(str(path), "line", lines, [None] * len(lines), list(range(1, len(lines) + 1)))


def _read_jsonl(path: Path, columns: _Columns) -> _Raw:
    """JSON Lines: one object per line; blank lines are skipped."""
    return _from_records(str(path), "line", _jsonl_records(path, _decode(path)), columns)


def _jsonl_records(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    """Parse line by line so errors name the line; split on "\\n" only, since JSON strings
    may hold raw U+2028 characters that `str.splitlines` would break on."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path} line {number}: malformed JSON ({err.msg} at column {err.colno})"
            ) from None


def _read_json(path: Path, columns: _Columns) -> _Raw:
    """A .json file is either one array of objects or, as often in practice, JSON Lines."""
    text = _decode(path)
    if not text.lstrip().startswith("["):
        return _from_records(str(path), "line", _jsonl_records(path, text), columns)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} line {err.lineno}: malformed JSON ({err.msg})") from None
    return _from_records(str(path), "row index", enumerate(rows), columns)


def _from_records(
    source: str, unit: str, records: Iterable[tuple[int, Any]], columns: _Columns
) -> _Raw:
    """Pick the columns out of JSON objects, naming the record that lacks one."""
    wanted = columns.options().values()
    texts, labels, positions = [], [], []
    for position, record in records:
        if not isinstance(record, dict):
            raise DataError(
                f"{source} {unit} {position}: expected a JSON object, got {type(record).__name__}"
            )
        if not all(column in record for column in wanted):
            _require_columns(f"{source} {unit} {position}", list(record), columns)
        texts.append(record[columns.text])
        labels.append(None if columns.other is None else record[columns.other])
        positions.append(position)
    return _Raw(source, unit, texts, labels, positions)


def _read_csv(path: Path, columns: _Columns, *, delimiter: str) -> _Raw:
    """CSV/TSV with a header row; quoting as written by `csv.writer`, pandas and Excel."""
    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return _Raw(str(path), "line", [], [], [])
        _require_columns(str(path), header, columns)
        text_at = header.index(columns.text)
        other_at = None if columns.other is None else header.index(columns.other)
        texts, labels, positions = [], [], []
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path} line {reader.line_num}: {len(row)} fields but the header has "
                    f"{len(header)}; quote fields that contain {delimiter!r}"
                )
            texts.append(row[text_at])
            labels.append(None if other_at is None else row[other_at])
            positions.append(reader.line_num)
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV ({err})") from None
    return _Raw(str(path), "line", texts, labels, positions)


def _read_parquet(path: Path, columns: _Columns) -> _Raw:
    """Parquet through pyarrow (already a dependency of `datasets`), reading the wanted columns
    only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        _require_columns(str(path), parquet.schema_arrow.names, columns)
        table = parquet.read(columns=list(columns.options().values()))
    except pa.ArrowException as err:
        raise DataError(f"{path}: cannot read as Parquet ({_first_line(err)})") from None
    texts = table.column(columns.text).to_pylist()
    labels = (
        [None] * len(texts) if columns.other is None else table.column(columns.other).to_pylist()
    )
    return _Raw(str(path), "row index", texts, labels, list(range(len(texts))))


def _read_hub(spec: str, text_column: str, label_column: str) -> dict[str, _Raw]:
    """Load `name[:config]` with `datasets`, keeping train/test/validation splits."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as err:  # offline, not found, gated, bad config: all mean the same here
        if offline(datasets=True):  # `datasets` looked in its local cache only
            raise DataError(
                f"no such file or folder: {spec!r}, and offline no Hugging Face dataset of that "
                f"name is cached ({type(err).__name__}: {_first_line(err)}); "
                f"local files ({_formats()}) are accepted"
            ) from err
        raise DataError(
            f"{spec!r} is not a local file or folder and could not be loaded from the Hugging Face "
            f"hub ({type(err).__name__}: {_first_line(err)}); "
            f"local files ({_formats()}) are accepted"
        ) from err
    raws: dict[str, _Raw] = {}
    for hub_split, table in loaded.items():
        split = _SPLIT_ALIASES.get(hub_split.lower())
        if split is None:
            continue
        if split in raws:
            raise DataError(f"{spec!r}: several hub splits map to {split!r}; keep one")
        raw = _hub_split(table, f"{spec!r} split {hub_split!r}", text_column, label_column)
        if split != "train" and all(label is None for label in raw.labels):
            _log.warning("%s has no labels (all -1); skipped", raw.source)
            continue
        raws[split] = raw
    if "train" not in raws:
        raise DataError(f"{spec!r} has no train split; hub splits: {', '.join(loaded)}")
    return raws


def _hub_split(table: Any, source: str, text_column: str, label_column: str) -> _Raw:
    """Convert one `datasets.Dataset`; ClassLabel ids become their names, -1 (unlabelled) None."""
    import datasets

    _require_columns(source, table.column_names, _Columns(text_column, label_column))
    texts = list(table[text_column])
    labels = list(table[label_column])
    feature = table.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        labels = [None if label is None or label < 0 else feature.names[label] for label in labels]
    return _Raw(source, "row index", texts, labels, list(range(len(texts))))


def _require_columns(source: str, found: Sequence[str], columns: _Columns) -> None:
    """Fail with the columns that do exist, so a wrong column name is a one-step fix."""
    for parameter, column in columns.options().items():
        if column not in found:
            listed = ", ".join(repr(c) for c in found) or "none"
            raise DataError(
                f"{source}: {parameter}={column!r} is not a column; columns found: {listed}"
            )


def _first_line(err: Exception) -> str:
    """Third-party messages can span lines; ours must stay on one."""
    return (str(err).strip().splitlines() or [""])[0][:200]


def _formats() -> str:
    return ", ".join(sorted(_READERS))


_Reader = Callable[[Path, _Columns], _Raw]
_READERS: dict[str, _Reader] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": partial(_read_csv, delimiter=","),
    ".tsv": partial(_read_csv, delimiter="\t"),
    ".parquet": _read_parquet,
}
# Unlabelled texts (`split_texts`, `read_inputs`) may also come one per line.
_TEXT_READERS: dict[str, _Reader] = {**_READERS, ".txt": _read_lines}
# Names ending so are files, read or not: a missing one is never asked of the hub.
_DATA_SUFFIXES = {*_TEXT_READERS, ".ndjson", ".xlsx", ".xls", ".ods", ".arrow", ".feather"}
_DATA_SUFFIXES |= {".gz", ".bz2", ".xz", ".zip", ".pkl", ".pickle", ".npy", ".yaml", ".yml"}


def _clean(raw: _Raw, empty: str) -> tuple[list[str], list[str]]:
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


def _check_texts(raw: _Raw) -> None:
    """A split must have rows, and every text must be a string."""
    if not raw.texts:
        raise DataError(f"{raw.source}: no rows; a dataset needs examples")
    _require_strings(raw)


def _require_strings(raw: _Raw) -> None:
    """Null or numeric texts mean a wrong column or a broken export: fail, naming the rows."""
    bad = [i for i, text in enumerate(raw.texts) if not isinstance(text, str)]
    if bad:
        raise DataError(
            f"{raw.source}: text is null or not a string at {raw.where(bad)} "
            f"(first value: {raw.texts[bad[0]]!r}); fix those rows or choose another text_column",
            params=("text_column",),
        )


def _strip_labels(raw: _Raw) -> list[Any]:
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


def _drop_empty(raw: _Raw, empty: str) -> list[int]:
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


def _assemble(name: str, raws: dict[str, _Raw], empty: str) -> LabelledDataset:
    """Validate every split against the train labels and fingerprint the result."""
    cleaned = {split: _clean(raws[split], empty) for split in _SPLIT_ORDER if split in raws}
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
        shown = ", ".join(repr(label) for label in unknown[:_SHOWN_POSITIONS])
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

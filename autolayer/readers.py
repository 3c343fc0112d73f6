"""Read one source of texts into raw columns: a file, a folder of split files, or a Hugging Face
dataset.

Each format (JSONL, JSON, CSV, TSV, Parquet; TXT for unlabelled texts) is read into a `Raw`:
the chosen columns' values as found, and where each row sits in the file, so that
`autolayer.data` can validate them and name the offending line or row. Errors here are about
the source itself (no such file, an unknown extension, malformed JSON, a missing column) and
cite the file, the line and the option naming the column. A label may be a list (multi-label
data: JSON lists, Parquet lists, a hub `Sequence`), read as found.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from autolayer.errors import DataError
from autolayer.hub import offline

__all__ = [
    "SPLIT_ORDER",
    "TEXT_READERS",
    "Columns",
    "Raw",
    "demo_path",
    "read_file",
    "read_spec",
    "split_files",
]

_log = logging.getLogger("autolayer")

# File stems and hub split names → the split they give; splits are kept in `SPLIT_ORDER`.
_SPLIT_ALIASES = {
    "train": "train",
    "test": "test",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
}
SPLIT_ORDER = ("train", "validation", "test")
_SHOWN_POSITIONS = 5
# `name`, `org/name`, optionally `:config`; anything else that does not exist is a missing path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?")
# The default label column → the column read instead when a source lacks it: multi-label sets
# name theirs "labels" (Reuters, the hub's go_emotions...).
_LABEL_FALLBACKS = {"label": "labels"}


@dataclass(frozen=True)
class Columns:
    """The columns a reader picks: the texts and optionally one more, read into `Raw.labels`
    (the labels, or the ids of `autolayer.data.read_inputs`). Errors cite each column by the
    option that names it, so a wrong name is a one-step fix. `fallback` is read instead of
    `other` by a source that lacks `other` but has it (see `resolved`)."""

    text: str
    other: str | None = None
    other_option: str = "label_column"
    fallback: str | None = None

    def options(self) -> dict[str, str]:
        """Option name → column name, texts first."""
        named = {"text_column": self.text}
        if self.other is not None:
            named[self.other_option] = self.other
        return named

    def resolved(self, found: Collection[str]) -> Columns:
        """The columns to read from a source whose columns are `found`: `fallback` in place of
        a missing `other` (never the texts); without a fallback either way, so every split
        reads one column."""
        fallback = self.fallback
        if fallback not in (None, self.text) and self.other not in found and fallback in found:
            return replace(self, other=self.fallback, fallback=None)
        return replace(self, fallback=None)


@dataclass(frozen=True)
class Raw:
    """Column values as read from one source, before validation; positions locate rows.

    Index i is the i-th record (blank CSV rows and JSONL lines are skipped, not records), which
    `autolayer.data.read_inputs` reports as `rows`; `positions[i]` is where to find it in the
    file.
    """

    source: str
    unit: str  # "line" (1-based, in a text file) or "row index" (0-based, in a table)
    texts: list[Any]
    labels: list[Any]  # or ids; None each when `Columns.other` is None
    positions: list[int]
    column: str | None = None  # the column read into `labels` (a fallback, when one was read)

    def where(self, indices: Sequence[int]) -> str:
        """Name the first few offending rows so the user can find them in their file."""
        shown = ", ".join(str(self.positions[i]) for i in indices[:_SHOWN_POSITIONS])
        more = len(indices) - _SHOWN_POSITIONS
        return f"{self.unit} {shown}" + (f" and {more} more" if more > 0 else "")


def demo_path() -> Path:
    """Folder of the bundled demo set (MR sentence polarity sample: train.jsonl, test.jsonl)."""
    return Path(__file__).parent / "demo"


def read_spec(
    spec: str | os.PathLike[str], text_column: str, label_column: str
) -> tuple[str, dict[str, Raw]]:
    """Resolve `spec` to a name and raw splits: demo, folder, file, then hub id.

    A source lacking the default label column "label" but having "labels" is read from
    "labels" (every split: the train split's choice); `Raw.column` says which was read."""
    columns = Columns(text_column, label_column, fallback=_LABEL_FALLBACKS.get(label_column))
    if isinstance(spec, str) and spec == "demo":
        return "demo", _read_folder(demo_path(), columns)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve().name, _read_folder(path, columns)
    if path.is_file():
        return path.stem, {"train": read_file(path, columns)}
    if isinstance(spec, str) and not _looks_like_path(spec):
        return spec, _read_hub(spec, columns)
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


def _read_folder(folder: Path, columns: Columns) -> dict[str, Raw]:
    """Read train.<ext> and any test/validation file beside it, train first: the others read
    the label column train did."""
    raws: dict[str, Raw] = {}
    for split, path in split_files(folder).items():
        raws[split] = read_file(path, columns)
        columns = replace(columns, other=raws[split].column, fallback=None)
    return raws


def split_files(folder: Path) -> dict[str, Path]:
    """Each split's file in `folder`, in `SPLIT_ORDER`; a train file is required."""
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
    return {split: files[split] for split in SPLIT_ORDER if split in files}


def read_file(path: Path, columns: Columns, readers: dict[str, _Reader] | None = None) -> Raw:
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


def _read_lines(path: Path, columns: Columns) -> Raw:
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
    return Raw(str(path), "line", lines, [None] * len(lines), list(range(1, len(lines) + 1)))


def _resolve_records(
    records: Iterable[tuple[int, Any]], columns: Columns
) -> tuple[Iterable[tuple[int, Any]], Columns]:
    """Settle `columns` on the first record (a JSON file has no header), putting it back."""
    records = iter(records)
    first = next(records, None)
    if first is None:
        return (), columns.resolved(())
    found = first[1] if isinstance(first[1], dict) else ()
    return itertools.chain([first], records), columns.resolved(found)


def _read_jsonl(path: Path, columns: Columns) -> Raw:
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


def _read_json(path: Path, columns: Columns) -> Raw:
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
    source: str, unit: str, records: Iterable[tuple[int, Any]], columns: Columns
) -> Raw:
    """Pick the columns out of JSON objects, naming the record that lacks one."""
    records, columns = _resolve_records(records, columns)
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
    return Raw(source, unit, texts, labels, positions, columns.other)


def _read_csv(path: Path, columns: Columns, *, delimiter: str) -> Raw:
    """CSV/TSV with a header row; quoting as written by `csv.writer`, pandas and Excel."""
    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return Raw(str(path), "line", [], [], [], columns.other)
        columns = columns.resolved(header)
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
    return Raw(str(path), "line", texts, labels, positions, columns.other)


def _read_parquet(path: Path, columns: Columns) -> Raw:
    """Parquet through pyarrow (already a dependency of `datasets`), reading the wanted columns
    only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        columns = columns.resolved(parquet.schema_arrow.names)
        _require_columns(str(path), parquet.schema_arrow.names, columns)
        table = parquet.read(columns=list(columns.options().values()))
    except pa.ArrowException as err:
        raise DataError(f"{path}: cannot read as Parquet ({_first_line(err)})") from None
    texts = table.column(columns.text).to_pylist()
    labels = (
        [None] * len(texts) if columns.other is None else table.column(columns.other).to_pylist()
    )
    return Raw(str(path), "row index", texts, labels, list(range(len(texts))), columns.other)


def _read_hub(spec: str, columns: Columns) -> dict[str, Raw]:
    """Load `name[:config]` with `datasets`, keeping train/test/validation splits; the label
    column is settled on the train split."""
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
    splits = {hub: _SPLIT_ALIASES.get(hub.lower()) for hub in loaded}
    train = next((loaded[hub] for hub, split in splits.items() if split == "train"), None)
    columns = columns.resolved(() if train is None else train.column_names)
    raws: dict[str, Raw] = {}
    for hub_split, table in loaded.items():
        split = splits[hub_split]
        if split is None:
            continue
        if split in raws:
            raise DataError(f"{spec!r}: several hub splits map to {split!r}; keep one")
        raw = _hub_split(table, f"{spec!r} split {hub_split!r}", columns)
        if split != "train" and all(label is None for label in raw.labels):
            _log.warning("%s has no labels (all -1); skipped", raw.source)
            continue
        raws[split] = raw
    if "train" not in raws:
        raise DataError(f"{spec!r} has no train split; hub splits: {', '.join(loaded)}")
    return raws


def _hub_split(table: Any, source: str, columns: Columns) -> Raw:
    """Convert one `datasets.Dataset`; ClassLabel ids become their names, -1 (unlabelled) None,
    and so do the ids in a list of them (a `Sequence`/`List` of ClassLabel: multi-label),
    where -1 is dropped."""
    import datasets

    _require_columns(source, table.column_names, columns)
    texts = list(table[columns.text])
    labels = list(table[columns.other])
    feature = table.features[columns.other]
    inner = getattr(feature, "feature", None)  # a Sequence/List's item type
    if isinstance(feature, datasets.ClassLabel):
        labels = [None if label is None or label < 0 else feature.names[label] for label in labels]
    elif isinstance(inner, datasets.ClassLabel):
        labels = [
            None if ids is None else [inner.names[i] for i in ids if i >= 0] for ids in labels
        ]
    return Raw(source, "row index", texts, labels, list(range(len(texts))), columns.other)


def _require_columns(source: str, found: Sequence[str], columns: Columns) -> None:
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


_Reader = Callable[[Path, Columns], Raw]
_READERS: dict[str, _Reader] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": partial(_read_csv, delimiter=","),
    ".tsv": partial(_read_csv, delimiter="\t"),
    ".parquet": _read_parquet,
}
# Unlabelled texts (`split_texts`, `read_inputs`) may also come one per line.
TEXT_READERS: dict[str, _Reader] = {**_READERS, ".txt": _read_lines}
# Names ending so are files, read or not: a missing one is never asked of the hub.
_DATA_SUFFIXES = {*TEXT_READERS, ".ndjson", ".xlsx", ".xls", ".ods", ".arrow", ".feather"}
_DATA_SUFFIXES |= {".gz", ".bz2", ".xz", ".zip", ".pkl", ".pickle", ".npy", ".yaml", ".yml"}

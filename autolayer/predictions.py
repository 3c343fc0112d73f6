"""Prediction files: label the texts of an input file with a saved model and write them.

``predict_file`` reads an input's texts (a text file or a table), labels them with a
:class:`~autolayer.classifier.FusionTextClassifier` loaded from its folder, and writes one
row per text (its position, the label, each class's probability) as JSONL, CSV, TSV or
Parquet, by extension, atomically and marked as autolayer's (so that a re-run may replace it).
A multi-label model gives each text its ``labels`` instead: a list in JSONL and Parquet, the
labels joined by a separator in CSV and TSV (whose cells hold text only), and ``fallback``:
whether the text got its most probable label only because none reached its threshold.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from autolayer.classifier import MULTI_LABEL, FusionTextClassifier
from autolayer.errors import ConfigError, DataError
from autolayer.files import atomic_write, atomic_write_bytes, check_output, mark_ours, same_file

logger = logging.getLogger("autolayer")

PREDICTION_FORMATS = (".jsonl", ".csv", ".tsv", ".parquet")
LABEL_SEP = ";"
"""How a CSV or TSV cell joins a text's labels, unless said otherwise."""
RESERVED = ("row", "text", "label", "probabilities")
"""The fields of a prediction, which an id column must not overwrite (a multi-label
model's predictions have "labels" in place of "label", and "fallback")."""


def check_prediction_output(output: Path, input_path: Path, *, overwrite: bool = False) -> None:
    """Before any model work: the output names a format we write, is writable, is not the
    input (writing predictions over the texts they came from would lose them, whatever
    ``overwrite`` says), and is new or autolayer's own (or ``overwrite``)."""
    if output.is_dir():
        raise ConfigError(
            f"output {str(output)!r} is a folder; name a file in it, such as "
            f"{str(output / 'predictions.jsonl')!r}"
        )
    if same_file(output, input_path) or output.absolute() == Path(input_path).absolute():
        raise ConfigError(
            f"output {str(output)!r} is the input file: predictions would overwrite the texts; "
            "choose another output"
        )
    if output.suffix.lower() not in PREDICTION_FORMATS:
        said = f"as {output.suffix!r}" if output.suffix else f"to {output.name!r} (no extension)"
        raise ConfigError(
            f"cannot write predictions {said}: the extension names the format; name the "
            f"output {', '.join('*' + f for f in PREDICTION_FORMATS)}"
        )
    check_output(output, "predictions", overwrite=overwrite)


def _read_texts(estimator, input_path, text_column: str | None, id_column: str | None):
    """The input's texts, from ``text_column`` or else the column the model's training data
    had them in (else "text"); a missing column that the user did not name says where its
    name came from."""
    from autolayer.data import read_inputs

    if text_column is not None:
        return read_inputs(input_path, text_column=text_column, id_column=id_column)
    recorded = (estimator._config().dataset.get("origin") or {}).get("text_column", "text")
    try:
        return read_inputs(input_path, text_column=recorded, id_column=id_column)
    except DataError as exc:
        if f"text_column={recorded!r}" not in str(exc):
            raise
        raise DataError(
            f"{exc} (the column the model's training data had its texts in; pass text_column)",
            params=("text_column",),
        ) from None


def predict_file(
    model_dir: str | Path,
    input_path: str | Path,
    output: str | Path | None = None,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
    use_cache: bool = False,
    trust_remote_code: bool = False,
    label_sep: str | None = None,
) -> list[dict]:
    """Label every text of ``input_path``; write them to ``output`` (format by extension)
    when given, and return the rows. A table's texts are read from ``text_column``, by
    default the column the model's training data had them in (else "text"). An existing
    ``output`` is replaced only if autolayer wrote it, or with ``overwrite``.

    Each row keeps ``row``, the text's 0-based position in the input (and the value of
    ``id_column`` when given), so outputs match inputs even where empty texts were skipped.

    The texts' embeddings are not cached unless ``use_cache`` (in ``cache_dir``, default
    ``$AUTOLAYER_HOME/embeddings``): new texts are seldom labelled twice, so a cache would
    only grow by an entry per input, and a read-only one would stop prediction.
    ``trust_remote_code`` runs the code a backbone ships with (as apply did to train it).

    A multi-label model's rows hold ``labels``, the list of a text's labels, in place of
    ``label``; CSV and TSV join them with ``label_sep`` (default: the one the training data
    was read with, else ";"). Their ``fallback`` is true for a text none of whose labels
    reached its threshold, given its most probable label (the ``empty: top`` rule).
    """
    from autolayer.device import resolve_device

    _check_id_column(id_column, RESERVED)
    if label_sep == "":
        raise ConfigError("label_sep must not be empty", params=("label_sep",))
    if output is not None:
        output = Path(output)
        check_prediction_output(output, Path(input_path), overwrite=overwrite)
    resolve_device(device)
    estimator = FusionTextClassifier.load(
        model_dir,
        device=device,
        cache_dir=cache_dir,
        use_cache=use_cache,
        trust_remote_code=trust_remote_code,
    )
    classes = [str(c) for c in estimator.classes_]
    sep = _label_sep(estimator, label_sep)
    multi = estimator.head_.task.name == MULTI_LABEL
    table = output is not None and output.suffix.lower() in (".csv", ".tsv")
    if multi:
        _check_id_column(id_column, ("labels", "fallback"))
        if table:
            _check_sep(classes, sep)
    if label_sep is not None and not (multi and table):
        _say_unused_sep(label_sep, multi, output)
    inputs = _read_texts(estimator, input_path, text_column, id_column)
    proba = estimator.predict_proba(list(inputs.texts))
    decided = _decided(estimator, proba, classes)
    rows = []
    for i, (text, ps) in enumerate(zip(inputs.texts, proba, strict=True)):
        row = {"row": inputs.rows[i]}
        if id_column is not None:
            row[id_column] = inputs.ids[i]
        row["text"] = text
        row["labels" if decided.multi else "label"] = decided.labels[i]
        if decided.multi:
            row["fallback"] = decided.fallback[i]
        row["probabilities"] = {c: float(p) for c, p in zip(classes, ps, strict=True)}
        rows.append(row)
    if output is not None:
        write_predictions(rows, output, label_sep=sep)
    return rows


class _Decided(NamedTuple):
    labels: list  # one label per text, or a list of labels per text
    multi: bool
    fallback: list[bool]  # multi-label: the text's labels all fell below their thresholds


def _decided(estimator: FusionTextClassifier, proba: np.ndarray, classes: list[str]) -> _Decided:
    """The classifier's decisions by name: a label per text, or (an indicator ``[N, K]``)
    the list of each text's labels, in the classes' order, and which texts got theirs by
    the fallback rather than a threshold."""
    decided = estimator.decide(proba)
    if decided.ndim == 1:
        return _Decided([str(c) for c in decided], multi=False, fallback=[])
    labels = [[classes[k] for k in np.flatnonzero(r)] for r in decided]
    return _Decided(labels, multi=True, fallback=fell_back(estimator, proba, decided).tolist())


def fell_back(
    estimator: FusionTextClassifier, proba: np.ndarray, decided: np.ndarray
) -> np.ndarray:
    """Bool ``[N]``: the texts a multi-label model gave its most probable label because no
    label reached its threshold (``empty: top``), told by deciding again with ``empty:
    none``, which leaves those texts without a label: a reader may want to review them."""
    from autolayer.task import make_task

    task = estimator.head_.task
    strict = make_task(task.name, {**task.params(), "empty": "none"}).decide(proba)
    return np.asarray(decided).any(1) & ~np.asarray(strict).any(1)


def _label_sep(estimator, label_sep: str | None) -> str:
    """The separator given, else the one the training data's labels were joined by."""
    if label_sep is not None:
        return label_sep
    origin = estimator._config().dataset.get("origin") or {}
    return origin.get("label_sep") or LABEL_SEP


def _say_unused_sep(label_sep: str, multi: bool, output: Path | None) -> None:
    """Warn (once: one call per run) that a separator given joins nothing, rather than
    refuse: the predictions are still the ones asked for, and a script that always passes
    one may label with single-label models or write JSONL too."""
    kind = "JSONL" if output is None else output.suffix.lstrip(".").upper()
    why = (
        f"a {kind} output keeps each text's labels as a list"
        if multi
        else "the model gives one label per text"
    )
    logger.warning("the label separator %r is ignored: %s (it joins CSV/TSV cells)", label_sep, why)


def _check_id_column(id_column: str | None, fields: tuple[str, ...]) -> None:
    if id_column in fields:
        raise ConfigError(
            f"id_column {id_column!r} would overwrite the predictions' own {id_column!r} field; "
            "rename that column in the input",
            params=("id_column",),
        )


def _check_sep(classes: list[str], sep: str) -> None:
    """A multi-label table's cell joins labels by ``sep``: a label holding it could not be
    told apart from two, so it is refused before any work."""
    holding = next((c for c in classes if sep in c), None)
    if holding is not None:
        raise ConfigError(
            f"label {holding!r} holds the label separator {sep!r}, so a table's joined "
            "labels would be ambiguous; pass another label_sep",
            params=("label_sep",),
        )


def _flat(row: dict, label_sep: str = LABEL_SEP) -> dict:
    """A prediction row with one ``p_<class>`` column per class, for tables; a text's
    labels joined by ``label_sep`` (CSV, TSV) or kept as a list (``None``: Parquet)."""
    out = {k: v for k, v in row.items() if k != "probabilities"}
    if "labels" in out and label_sep is not None:
        out["labels"] = label_sep.join(out["labels"])
    out.update({f"p_{c}": p for c, p in row["probabilities"].items()})
    return out


def prediction_lines(rows: list[dict]) -> str:
    """JSON Lines, one prediction per line (what ``predict`` prints without ``-o``)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_predictions(rows: list[dict], output: Path, *, label_sep: str = LABEL_SEP) -> None:
    """Write in the format the extension names: JSONL, CSV, TSV or Parquet (atomically),
    with the proof that autolayer wrote it (so that a re-run may replace it). A CSV or TSV
    joins each text's labels (multi-label) by ``label_sep``."""
    _write_table(rows, output, label_sep)
    mark_ours(output, "predictions")


def _write_table(rows: list[dict], output: Path, label_sep: str) -> None:
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([_flat(r, None) for r in rows])
        atomic_write(output, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
        return
    if suffix in (".csv", ".tsv"):
        import csv
        import io

        buffer = io.StringIO()
        flat = [_flat(r, label_sep) for r in rows]
        writer = csv.DictWriter(
            buffer,
            fieldnames=list(flat[0]),
            delimiter="\t" if suffix == ".tsv" else ",",
            lineterminator="\n",  # as pandas writes it, and the JSONL beside it
        )
        writer.writeheader()
        writer.writerows(flat)
        data = buffer.getvalue()
    else:
        data = prediction_lines(rows)
    atomic_write_bytes(output, data.encode("utf-8"))

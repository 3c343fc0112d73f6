"""Prediction files: label the texts of an input file with a saved model and write them.

``predict_file`` reads an input's texts (a text file or a table), labels them with a
:class:`~autolayer.classifier.FusionTextClassifier` loaded from its folder, and writes one
row per text (its position, the label, each class's probability) as JSONL, CSV, TSV or
Parquet, by extension, atomically and marked as autolayer's (so that a re-run may replace it).
"""

from __future__ import annotations

import json
from pathlib import Path

from autolayer.classifier import FusionTextClassifier
from autolayer.errors import ConfigError, DataError
from autolayer.files import atomic_write, atomic_write_bytes, check_output, mark_ours, same_file

PREDICTION_FORMATS = (".jsonl", ".csv", ".tsv", ".parquet")


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
    """
    from autolayer.device import resolve_device

    if id_column in ("row", "text", "label", "probabilities"):
        raise ConfigError(
            f"id_column {id_column!r} would overwrite the predictions' own {id_column!r} field; "
            "rename that column in the input",
            params=("id_column",),
        )
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
    inputs = _read_texts(estimator, input_path, text_column, id_column)
    proba = estimator.predict_proba(list(inputs.texts))
    classes = [str(c) for c in estimator.classes_]
    labels = [str(c) for c in estimator.decide(proba)]
    rows = []
    for i, (text, ps) in enumerate(zip(inputs.texts, proba, strict=True)):
        row = {"row": inputs.rows[i]}
        if id_column is not None:
            row[id_column] = inputs.ids[i]
        row.update(
            text=text,
            label=labels[i],
            probabilities={c: float(p) for c, p in zip(classes, ps, strict=True)},
        )
        rows.append(row)
    if output is not None:
        write_predictions(rows, output)
    return rows


def _flat(row: dict) -> dict:
    """A prediction row with one ``p_<class>`` column per class, for tables."""
    out = {k: v for k, v in row.items() if k != "probabilities"}
    out.update({f"p_{c}": p for c, p in row["probabilities"].items()})
    return out


def prediction_lines(rows: list[dict]) -> str:
    """JSON Lines, one prediction per line (what ``predict`` prints without ``-o``)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_predictions(rows: list[dict], output: Path) -> None:
    """Write in the format the extension names: JSONL, CSV, TSV or Parquet (atomically),
    with the proof that autolayer wrote it (so that a re-run may replace it)."""
    _write_table(rows, output)
    mark_ours(output, "predictions")


def _write_table(rows: list[dict], output: Path) -> None:
    suffix = output.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([_flat(r) for r in rows])
        atomic_write(output, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
        return
    if suffix in (".csv", ".tsv"):
        import csv
        import io

        buffer = io.StringIO()
        flat = [_flat(r) for r in rows]
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

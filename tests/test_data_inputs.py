"""Tests for issue #10 in autolayer.data: labels are stripped of stray whitespace, texts to
predict on keep their rows and ids, and one split's texts can be read without labels."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from autolayer.data import InputTexts, load_dataset, read_inputs, split_texts, text_fingerprint
from autolayer.errors import DataError

ROWS = [
    {"text": "a fine film", "label": "pos"},
    {"text": "dull and long", "label": "neg"},
    {"text": "loved it", "label": "pos"},
    {"text": "never again", "label": "neg"},
]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write `rows` in the format named by the extension (jsonl, json, csv, tsv, parquet)."""
    suffix = path.suffix
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        import csv

        with open(path, "w", encoding="utf-8", newline="") as out:
            delimiter = "\t" if suffix == ".tsv" else ","
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
    return path


def one_line_error(call: Any, *args: Any, **kwargs: Any) -> str:
    """Call expecting a DataError; return its message after checking it is one line."""
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- labels that differ only by surrounding whitespace ---------------------------------------


def padded_folder(folder: Path) -> Path:
    """train.csv with two padded labels, test.jsonl with one."""
    folder.mkdir()
    padded = ["pos ", " neg", "pos", "neg"]
    train = [{**row, "label": label} for row, label in zip(ROWS, padded, strict=True)]
    write_rows(folder / "train.csv", train)
    write_rows(folder / "test.jsonl", [{"text": "great", "label": "\tpos"}, ROWS[1]])
    return folder


def test_labels_differing_by_whitespace_are_one_class_in_every_split(tmp_path: Path) -> None:
    dataset = load_dataset(padded_folder(tmp_path / "padded"))
    assert dataset.label_names == ("neg", "pos")
    assert dataset.split("train").labels.tolist() == [1, 0, 1, 0]
    assert dataset.split("test").labels.tolist() == [1, 0]
    clean = tmp_path / "clean"
    clean.mkdir()
    write_rows(clean / "train.csv", ROWS)
    write_rows(clean / "test.jsonl", [{"text": "great", "label": "pos"}, ROWS[1]])
    assert dataset.fingerprint == load_dataset(clean).fingerprint


def test_stripped_labels_are_warned_about_once_per_source(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        load_dataset(padded_folder(tmp_path / "padded"))
    stripped = [m for m in warnings(caplog) if "stripped" in m]
    assert len(stripped) == 2
    assert "train.csv: stripped surrounding whitespace from 2 label(s) at line 2, 3" in stripped[0]
    assert "test.jsonl: stripped surrounding whitespace from 1 label(s) at line 1" in stripped[1]


def test_fingerprints_of_labels_needing_no_stripping_are_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        mine = load_dataset(write_rows(tmp_path / "d.jsonl", ROWS))
        demo = load_dataset("demo")
    assert mine.fingerprint == "ec1f603b0152779c1898a83bb7cc2fc1142377164399097fbdd91bc96eed416c"
    assert demo.fingerprint == "24ed2a2ff1db985bee67fc780c1b046040cc44caf149e58a22940a259c7ea503"
    assert not [m for m in warnings(caplog) if "stripped" in m]


def test_whitespace_only_label_is_still_rejected(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.jsonl", [*ROWS, {"text": "meh", "label": "  "}])
    assert "label is null, empty" in one_line_error(load_dataset, path)


# --- read_inputs -----------------------------------------------------------------------------


def test_txt_inputs_skip_blank_lines_by_name_and_keep_line_indices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "in.txt"
    path.write_text("a fine film\n\n   \nnever again\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        inputs = read_inputs(path)
    assert inputs == InputTexts(("a fine film", "never again"), (0, 3), None, str(path))
    assert warnings(caplog) == [
        f"{path}: skipped 2 empty or whitespace-only text(s) at line 2, 3; they get no prediction"
    ]


@pytest.mark.parametrize("content", ["one\ntwo", "one\ntwo\n", "one\r\ntwo\r\n"])
def test_txt_final_newline_is_not_a_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(content.encode("utf-8"))
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        inputs = read_inputs(path)
    assert inputs.texts == ("one", "two") and inputs.rows == (0, 1)
    assert not warnings(caplog)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_table_inputs_keep_record_indices_and_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, suffix: str
) -> None:
    rows = [
        {"id": 10, "text": "a fine film"},
        {"id": 11, "text": " "},
        {"id": 12, "text": "loved it"},
        {"id": 13, "text": "never again"},
    ]
    path = write_rows(tmp_path / f"in{suffix}", rows)
    if suffix == ".jsonl":  # a blank line is not a record
        path.write_text(path.read_text().replace("\n", "\n\n", 1), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        inputs = read_inputs(path, id_column="id")
    assert inputs.texts == ("a fine film", "loved it", "never again")
    assert inputs.rows == (0, 2, 3)
    expected_ids = ("10", "12", "13") if suffix in (".csv", ".tsv") else (10, 12, 13)
    assert inputs.ids == expected_ids
    assert inputs.source == str(path)
    (message,) = warnings(caplog)
    assert "skipped 1 empty or whitespace-only text(s)" in message


def test_inputs_without_id_column_have_no_ids(tmp_path: Path) -> None:
    inputs = read_inputs(write_rows(tmp_path / "in.csv", ROWS))
    assert inputs.ids is None and inputs.rows == (0, 1, 2, 3)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_missing_id_column_lists_the_columns(tmp_path: Path, suffix: str) -> None:
    path = write_rows(tmp_path / f"in{suffix}", ROWS)
    message = one_line_error(read_inputs, path, id_column="key")
    assert str(path) in message
    assert "id_column='key' is not a column; columns found: 'text', 'label'" in message


def test_id_column_with_a_txt_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("one\n", encoding="utf-8")
    message = one_line_error(read_inputs, path, id_column="id")
    assert "id_column='id'" in message and "a .txt file holds only texts" in message


@pytest.mark.parametrize("content", ["", "\n", "  \n\t\n"])
def test_inputs_with_no_text_are_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "in.txt"
    path.write_text(content, encoding="utf-8")
    assert "no texts to predict on" in one_line_error(read_inputs, path)


def test_inputs_with_a_header_only_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("text\n", encoding="utf-8")
    assert "no texts to predict on" in one_line_error(read_inputs, path)


def test_null_input_text_is_an_error_naming_its_line(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "in.jsonl", [*ROWS, {"text": None, "label": "pos"}])
    message = one_line_error(read_inputs, path)
    assert "text is null or not a string at line 5" in message


def test_missing_input_file_is_an_error(tmp_path: Path) -> None:
    assert "input file not found" in one_line_error(read_inputs, tmp_path / "nope.txt")


# --- split_texts -----------------------------------------------------------------------------


def labelled_folder(folder: Path) -> Path:
    """train.jsonl with two empty texts, test.csv with one."""
    folder.mkdir()
    write_rows(folder / "train.jsonl", [*ROWS, {"text": " ", "label": "pos"}, ROWS[0]])
    test = [ROWS[1], {"text": "", "label": "neg"}, ROWS[2]]
    write_rows(folder / "test.csv", test)
    return folder


@pytest.mark.parametrize("split", ["train", "test"])
def test_split_texts_equal_load_dataset_texts_for_labelled_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, split: str
) -> None:
    folder = labelled_folder(tmp_path / "mr")
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        source, texts = split_texts(folder, split)
    ours = warnings(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        expected = load_dataset(folder).split(split)
    assert source == f"mr/{split}"
    assert texts == expected.texts
    assert text_fingerprint(texts) == expected.text_fingerprint
    assert ours and set(ours) <= set(warnings(caplog))


def test_split_texts_of_a_single_labelled_file_equal_load_dataset(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "reviews.parquet", [*ROWS, {"text": "\t", "label": "neg"}])
    assert split_texts(path) == ("reviews/train", load_dataset(path).split("train").texts)


def test_split_texts_need_no_label_column(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "plain.csv", [{"text": row["text"]} for row in ROWS])
    assert split_texts(path) == ("plain/train", tuple(row["text"] for row in ROWS))
    with pytest.raises(DataError, match="label_column='label'"):
        load_dataset(path)


def test_split_texts_accept_a_single_class(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "one.jsonl", [{**row, "label": "pos"} for row in ROWS])
    assert split_texts(path)[1] == tuple(row["text"] for row in ROWS)


def test_split_texts_read_a_txt_file_one_text_per_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("a fine film\n\nnever again\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        assert split_texts(path) == ("lines/train", ("a fine film", "never again"))
    assert "dropped 1 empty or whitespace-only texts at line 2" in caplog.text


def test_split_texts_of_a_folder_ignore_the_label_column(tmp_path: Path) -> None:
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_rows(folder / "train.jsonl", [{"text": "only text"}])
    write_rows(folder / "dev.csv", [{"text": "dev text", "label": "unseen"}])
    assert split_texts(folder, "validation") == ("unlabelled/validation", ("dev text",))
    assert split_texts(folder)[1] == ("only text",)


def test_split_texts_unknown_split_lists_the_available_ones(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "d.csv", ROWS)
    assert "has no split 'test'; available: 'train'" in one_line_error(split_texts, path, "test")
    folder = labelled_folder(tmp_path / "mr")
    message = one_line_error(split_texts, folder, "validation")
    assert "has no split 'validation'; available: 'train', 'test'" in message
    assert "available: 'train', 'test'" in one_line_error(split_texts, "demo", "validation")


def test_split_texts_of_only_empty_texts_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("\n \n", encoding="utf-8")
    assert "every text is empty" in one_line_error(split_texts, path)


def test_split_texts_of_a_missing_txt_file_are_not_sent_to_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert "no such file or folder" in one_line_error(split_texts, "missing.txt")


def test_split_texts_of_demo_and_hub_ids_go_through_load_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    assert split_texts("demo", "test") == ("demo/test", load_dataset("demo").split("test").texts)

    def fake_load_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
        table = {"sentence": ["good", "bad", " "], "label": [1, 0, 1]}
        return datasets.DatasetDict(train=datasets.Dataset.from_dict(table))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source, texts = split_texts("someorg/tiny", text_column="sentence")
    assert (source, texts) == ("someorg/tiny/train", ("good", "bad"))

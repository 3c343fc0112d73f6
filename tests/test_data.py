"""Tests for autolayer.data: every bad input fails with one clear line; content, not format,
decides fingerprints; validation splits are stratified and reproducible."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autolayer.data import LabelledDataset, demo_path, load_dataset
from autolayer.errors import ConfigError, DataError

ROWS = [
    {"text": "a fine film", "label": "pos"},
    {"text": "dull and long", "label": "neg"},
    {"text": "loved it", "label": "pos"},
    {"text": "never again", "label": "neg"},
]


def shared_data() -> Path:
    """The offline benchmark copies: $AUTOLAYER_SHARED_DATA, else beside the repo."""
    return Path(os.environ.get("AUTOLAYER_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def data_error(spec: Any, **kwargs: Any) -> str:
    """Load `spec` expecting a DataError; return its message after checking it is one line."""
    with pytest.raises(DataError) as caught:
        load_dataset(spec, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def balanced(n_per_class: dict[str, int]) -> list[dict]:
    return [
        {"text": f"{label} example {i}", "label": label}
        for label, n in n_per_class.items()
        for i in range(n)
    ]


# --- bad input -------------------------------------------------------------------------------


def test_missing_file_is_reported(tmp_path: Path) -> None:
    message = data_error(tmp_path / "nope.jsonl")
    assert "no such file or folder" in message and "nope.jsonl" in message


def test_missing_directory_is_reported(tmp_path: Path) -> None:
    assert "no such file or folder" in data_error(str(tmp_path / "no_such_dir"))


def test_unsupported_extension_lists_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a fine film\tpos\n", encoding="utf-8")
    message = data_error(path)
    assert "'.txt'" in message and ".csv, .json, .jsonl, .parquet, .tsv" in message


def test_missing_text_column_lists_columns_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "x", "label": "a"}])
    message = data_error(path)
    assert "text_column='text'" in message and "'sentence', 'label'" in message


def test_missing_label_column_lists_columns_found(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [{"text": "x", "target": "a"}])
    message = data_error(path)
    assert "label_column='label'" in message and "'text', 'target'" in message


def test_jsonl_row_missing_a_column_names_its_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*ROWS, {"text": "no label here"}])
    assert "line 5" in data_error(path)


def test_empty_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n", encoding="utf-8")
    assert "no rows" in data_error(path)


def test_csv_with_only_a_header_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\n", encoding="utf-8")
    assert "no rows" in data_error(path)


def test_single_class_in_train_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", balanced({"pos": 3}))
    message = data_error(path)
    assert "only one class ('pos')" in message


def test_empty_texts_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [*ROWS, {"text": "  ", "label": "pos"}, {"text": "", "label": "neg"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        dataset = load_dataset(path)
    assert len(dataset.split("train")) == 4
    assert "dropped 2 empty or whitespace-only texts at line 5, 6" in caplog.text


def test_empty_texts_raise_with_their_lines_when_asked(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*ROWS, {"text": "\t", "label": "pos"}])
    message = data_error(path, empty="error")
    assert "1 empty or whitespace-only texts at line 5" in message


def test_only_empty_texts_is_an_error_even_when_dropping(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": " ", "label": "a"}, {"text": "", "label": "b"}]
    )
    assert "every text is empty" in data_error(path)


def test_many_bad_rows_are_summarised(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*ROWS, *[{"text": "", "label": "pos"}] * 8])
    assert "line 5, 6, 7, 8, 9 and 3 more" in data_error(path, empty="error")


def test_unknown_empty_policy_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty must be one of"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS), empty="keep")


def test_non_utf8_bytes_are_located(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    message = data_error(path)
    assert "not valid UTF-8" in message and "0xe9" in message
    assert "byte offset 19" in message and "line 3" in message


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nok,a\nfine,b\n")
    assert load_dataset(path).label_names == ("a", "b")


def test_malformed_json_line_is_numbered(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    path.write_text(path.read_text() + '{"text": "oops", "label": \n', encoding="utf-8")
    message = data_error(path)
    assert "line 5" in message and "malformed JSON" in message


def test_json_line_that_is_not_an_object_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*ROWS, ["a list", "pos"]])
    assert "line 5: expected a JSON object, got list" in data_error(path)


def test_null_text_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*ROWS, {"text": None, "label": "pos"}])
    message = data_error(path)
    assert "text is null" in message and "line 5" in message


def test_null_label_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": None}, *ROWS])
    message = data_error(path)
    assert "label is null" in message and "line 1" in message


def test_empty_csv_label_is_rejected(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [*ROWS, {"text": "unlabelled", "label": ""}])
    assert "label is null, empty" in data_error(path)


def test_float_label_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [*ROWS, {"text": "x", "label": 0.5}])
    assert "label is null, empty, a fraction or not a string/integer at" in data_error(path)


@pytest.mark.parametrize("label", ["0.5", "-1.25", " 0.50 "])
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_a_fractional_label_written_as_text_is_refused_like_a_json_number(
    tmp_path: Path, suffix: str, label: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [*ROWS, {"text": "so-so", "label": label}]
    path = tmp_path / f"d{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        write_csv(path, rows, delimiter="\t" if suffix == ".tsv" else ",")
    message = data_error(path)
    assert "label is null, empty, a fraction or not a string/integer at" in message
    assert f"(first value: {label!r})" in message


def test_csv_row_with_extra_fields_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,a\nunquoted, comma,b\n", encoding="utf-8")
    assert "line 3: 3 fields but the header has 2" in data_error(path)


def test_test_label_unseen_in_train_is_rejected(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "test.jsonl", [{"text": "meh", "label": "neutral"}])
    message = data_error(tmp_path)
    assert "test.jsonl" in message and "'neutral'" in message


def test_folder_without_train_file_is_rejected(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    assert "no train file" in data_error(tmp_path)


def test_folder_with_two_train_files_is_ambiguous(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_csv(tmp_path / "train.csv", ROWS)
    assert "train.csv and train.jsonl" in data_error(tmp_path)


def test_missing_split_lists_available_ones() -> None:
    with pytest.raises(DataError, match="available: 'train', 'test'"):
        load_dataset("demo").split("validation")


# --- formats and fingerprints ----------------------------------------------------------------


def test_fingerprints_do_not_depend_on_the_file_format(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [*ROWS, {"text": 'quotes " , commas\tand\nnewlines ü', "label": "neg"}]
    paths = [
        write_jsonl(tmp_path / "d.jsonl", rows),
        write_csv(tmp_path / "d.csv", rows),
        write_csv(tmp_path / "d.tsv", rows, delimiter="\t"),
        tmp_path / "d.json",
        tmp_path / "d.parquet",
    ]
    paths[3].write_text(json.dumps(rows), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), paths[4])
    loaded = [load_dataset(path) for path in paths]
    assert {d.fingerprint for d in loaded} == {loaded[0].fingerprint}
    assert loaded[0].split("train").texts[-1] == rows[-1]["text"]


def test_integer_labels_match_their_string_form_and_sort_numerically(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 9, 2, 10])]
    from_json = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    from_csv = load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert from_json.label_names == ("2", "9", "10")
    assert from_json.fingerprint == from_csv.fingerprint
    assert from_json.split("train").labels.tolist() == [2, 1, 0, 2]


def test_a_whole_number_label_is_one_class_in_every_format(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def rows(*labels: Any) -> list[dict]:
        return [{"text": f"t{i}", "label": label} for i, label in enumerate(labels)]

    as_csv, as_json = rows("1", "1.0", "0.00", "0"), rows(1, 1.0, "0.0", 0)
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows(1.0, 1.0, 0.0, 0.0)), parquet)
    loaded = [
        load_dataset(write_csv(tmp_path / "d.csv", as_csv)),
        load_dataset(write_jsonl(tmp_path / "d.jsonl", as_json)),
        load_dataset(parquet),
    ]
    assert [d.label_names for d in loaded] == [("0", "1")] * 3
    assert {d.fingerprint for d in loaded} == {loaded[0].fingerprint}


def test_labels_that_differ_as_text_stay_apart_in_every_format(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate(["01", "1", "1e0", "+1"])]
    from_json = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    from_csv = load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert from_csv.label_names == from_json.label_names == ("+1", "01", "1", "1e0")
    assert from_json.fingerprint == from_csv.fingerprint


def test_text_fingerprint_ignores_labels_but_fingerprint_does_not(tmp_path: Path) -> None:
    flipped = [{**row, "label": "neg" if row["label"] == "pos" else "pos"} for row in ROWS]
    a = load_dataset(write_jsonl(tmp_path / "a.jsonl", ROWS)).split("train")
    b = load_dataset(write_jsonl(tmp_path / "b.jsonl", flipped)).split("train")
    assert a.text_fingerprint == b.text_fingerprint
    assert a.fingerprint != b.fingerprint


def test_fingerprint_is_pinned_so_caches_survive_releases(tmp_path: Path) -> None:
    split = load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS)).split("train")
    assert split.text_fingerprint == (
        "af372df4f745b8eb71b461cfcf9434d21090f6c6d9fead2c55031a4ffaf8da0a"
    )


def test_custom_column_names(tmp_path: Path) -> None:
    rows = [{"sentence": row["text"], "y": row["label"], "id": i} for i, row in enumerate(ROWS)]
    dataset = load_dataset(
        write_csv(tmp_path / "d.csv", rows), text_column="sentence", label_column="y"
    )
    assert dataset.split("train").texts == tuple(row["text"] for row in ROWS)
    assert dataset.label_names == ("neg", "pos")


def test_folder_maps_dev_to_validation_and_names_the_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "reviews"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    write_csv(folder / "dev.csv", ROWS[:2])
    write_jsonl(folder / "test.jsonl", ROWS[2:])
    (folder / "notes.txt").write_text("ignored", encoding="utf-8")
    dataset = load_dataset(folder)
    assert dataset.name == "reviews"
    assert list(dataset.splits) == ["train", "validation", "test"]
    assert len(dataset.split("validation")) == 2


def test_single_file_gives_a_train_split_only(tmp_path: Path) -> None:
    dataset = load_dataset(write_jsonl(tmp_path / "mine.jsonl", ROWS))
    assert dataset.name == "mine" and list(dataset.splits) == ["train"]


def test_labels_are_read_only_int64(tmp_path: Path) -> None:
    labels = load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS)).split("train").labels
    assert labels.dtype == np.int64
    with pytest.raises(ValueError):
        labels[0] = 1


# --- validation split ------------------------------------------------------------------------


def dataset_of(tmp_path: Path, n_per_class: dict[str, int]) -> LabelledDataset:
    return load_dataset(write_jsonl(tmp_path / "d.jsonl", balanced(n_per_class)))


def test_validation_split_is_stratified_disjoint_and_complete(tmp_path: Path) -> None:
    dataset = dataset_of(tmp_path, {"a": 60, "b": 30, "c": 10})
    train_idx, val_idx = dataset.train_validation(size=0.2, seed=1)
    labels = dataset.split("train").labels
    assert len(val_idx) == 20
    assert np.bincount(labels[val_idx]).tolist() == [12, 6, 2]
    assert not set(train_idx) & set(val_idx)
    assert sorted([*train_idx, *val_idx]) == list(range(100))
    assert train_idx.dtype == val_idx.dtype == np.int64
    assert list(val_idx) == sorted(val_idx)


def test_validation_split_is_deterministic_per_seed(tmp_path: Path) -> None:
    dataset = dataset_of(tmp_path, {"a": 50, "b": 50})
    first, again, other = (dataset.train_validation(seed=s)[1] for s in (3, 3, 4))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_single_example_classes_go_to_train(tmp_path: Path) -> None:
    dataset = dataset_of(tmp_path, {"a": 20, "b": 20, "rare": 1})
    train_idx, val_idx = dataset.train_validation(size=0.25)
    rare = dataset.label_names.index("rare")
    assert rare in dataset.split("train").labels[train_idx]
    assert rare not in dataset.split("train").labels[val_idx]


@pytest.mark.parametrize("n_per_class", [{"a": 1, "b": 1}, {"a": 2, "b": 2, "c": 2}])
def test_too_few_examples_to_stratify_is_a_data_error(
    tmp_path: Path, n_per_class: dict[str, int]
) -> None:
    dataset = dataset_of(tmp_path, n_per_class)
    with pytest.raises(DataError, match="cannot carve a stratified validation split"):
        dataset.train_validation(size=0.1)


def test_small_datasets_never_leak_sklearn_errors(tmp_path: Path) -> None:
    for n in range(1, 6):
        dataset = dataset_of(tmp_path, {"a": n, "b": n + 1, "c": 1})
        for size in (0.05, 0.3, 0.5, 0.9):
            try:
                train_idx, val_idx = dataset.train_validation(size=size)
            except DataError:
                continue
            assert len(train_idx) + len(val_idx) == len(dataset.split("train"))


def test_a_carve_needs_two_classes_with_two_examples(tmp_path: Path) -> None:
    dataset = dataset_of(tmp_path, {"a": 10, "b": 1})
    with pytest.raises(DataError) as caught:
        dataset.train_validation(size=0.2)
    message = str(caught.value)
    assert "only class 'a' has 2 or more training examples" in message
    assert "'a': 10, 'b': 1" in message and "\n" not in message


def test_a_carve_warns_about_the_classes_it_cannot_validate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = dataset_of(tmp_path, {"a": 20, "b": 20, "rare": 1})
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        dataset.train_validation(size=0.25)
    assert "the validation split has no example of class 'rare' (1 in train)" in caplog.text


def with_validation(tmp_path: Path, train: dict[str, int], validation: dict[str, int]) -> Path:
    """A folder holding train.jsonl and validation.jsonl with these class counts."""
    write_jsonl(tmp_path / "train.jsonl", balanced(train))
    write_jsonl(tmp_path / "validation.jsonl", balanced(validation))
    return tmp_path


def test_a_validation_file_of_one_class_is_refused_with_its_counts(tmp_path: Path) -> None:
    dataset = load_dataset(with_validation(tmp_path, {"a": 6, "b": 6}, {"a": 3}))
    with pytest.raises(DataError) as caught:
        dataset.check_validation()
    message = str(caught.value)
    assert "its validation split has a single class ('a': 3)" in message
    assert "add examples of 'b'" in message and "carved from train" in message


def test_a_validation_file_of_one_class_offers_no_carve_train_cannot_give(
    tmp_path: Path,
) -> None:
    dataset = load_dataset(with_validation(tmp_path, {"a": 6, "b": 1}, {"b": 2}))
    with pytest.raises(DataError) as caught:
        dataset.check_validation()
    assert "add examples of 'a'" in str(caught.value)
    assert "carved" not in str(caught.value)


def test_a_validation_file_lacking_a_class_warns_with_its_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = with_validation(tmp_path, {"a": 4, "b": 4, "c": 5}, {"a": 2, "b": 1})
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        load_dataset(folder).check_validation()
    assert "the validation split has no example of class 'c' (5 in train)" in caplog.text
    assert "'a': 2, 'b': 1" in caplog.text


def test_a_validation_file_with_every_class_passes_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = with_validation(tmp_path, {"a": 4, "b": 4}, {"a": 1, "b": 1})
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        load_dataset(folder).check_validation()
    assert not caplog.text


@pytest.mark.parametrize("size", [0.0, 1.0, -0.1, 5])
def test_validation_size_must_be_a_fraction(tmp_path: Path, size: float) -> None:
    with pytest.raises(ConfigError, match="size must be a fraction"):
        dataset_of(tmp_path, {"a": 5, "b": 5}).train_validation(size=size)


# --- bundled and shared data -----------------------------------------------------------------


def test_demo_loads_with_two_balanced_classes() -> None:
    dataset = load_dataset("demo")
    assert dataset.name == "demo"
    assert dataset.label_names == ("negative", "positive")
    assert np.bincount(dataset.split("train").labels).tolist() == [500, 500]
    assert np.bincount(dataset.split("test").labels).tolist() == [200, 200]
    assert (demo_path() / "README.md").is_file()


@pytest.mark.skipif(not (shared_data() / "r8").is_dir(), reason="shared benchmark data absent")
def test_r8_has_eight_classes() -> None:
    dataset = load_dataset(shared_data() / "r8")
    assert len(dataset.label_names) == 8
    assert len(dataset.split("train")) == 5485 and len(dataset.split("test")) == 2189


# --- Hugging Face hub ------------------------------------------------------------------------


def test_hub_dataset_converts_splits_and_class_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def table(labels: list[int]) -> datasets.Dataset:
        texts = [f"text {i}" for i in range(len(labels))]
        return datasets.Dataset.from_dict({"sentence": texts, "label": labels}, features=features)

    calls = []

    def fake_load_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
        calls.append((name, config))
        return datasets.DatasetDict(
            train=table([0, 1, 1, 0]), validation=table([1, 0]), test=table([-1, -1])
        )

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_dataset("someorg/tiny:small", text_column="sentence")
    assert calls == [("someorg/tiny", "small")]
    assert dataset.name == "someorg/tiny:small"
    assert dataset.label_names == ("neg", "pos")
    assert list(dataset.splits) == ["train", "validation"]  # the unlabelled test split is skipped
    assert dataset.split("train").labels.tolist() == [0, 1, 1, 0]


def test_hub_failure_is_one_line_data_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datasets

    def offline(name: str, config: str | None = None) -> None:
        raise ConnectionError("Couldn't reach the Hub\nsecond line of detail")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    for variable in OFFLINE:
        monkeypatch.delenv(variable, raising=False)
    message = data_error("someorg/tiny")
    assert "could not be loaded from the Hugging Face hub" in message
    assert "ConnectionError: Couldn't reach the Hub" in message
    assert ".csv" in message and ".jsonl" in message and ".parquet" in message


OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def no_hub(name: str, config: str | None = None) -> None:
    pytest.fail(f"the hub was asked for {name!r}")


@pytest.mark.parametrize(
    "spec",
    ["data/sst", "./mydata", "~/no-such-data", "mydata.xlsx", "a/b/c", "data\\train", "/no/data"],
)
def test_a_missing_path_fails_at_once_without_the_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec: str
) -> None:
    import datasets

    (tmp_path / "data").mkdir()  # "data/sst" names a folder that exists: a path, not org/name
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for variable in OFFLINE:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    message = data_error(spec)
    assert message.startswith(f"no such file or folder: {str(Path(spec).expanduser())!r}")


@pytest.mark.parametrize("variable", OFFLINE)
def test_offline_an_uncached_name_is_no_such_file_or_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    import datasets

    def not_cached(name: str, config: str | None = None) -> None:
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.chdir(tmp_path)
    for other in OFFLINE:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(datasets, "load_dataset", not_cached)
    message = data_error("mydata")
    assert message.startswith("no such file or folder: 'mydata'")
    assert "offline" in message and "cached" in message


def test_folder_errors_report_the_train_file_first(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "test.jsonl", [{"sentence": "x", "label": "a"}])
    write_jsonl(tmp_path / "train.jsonl", [{"sentence": "x", "label": "a"}])
    assert "train.jsonl line 1" in data_error(tmp_path)


def test_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    assert "cannot read as Parquet" in data_error(path)


def test_csv_field_over_the_size_limit_is_a_data_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [*ROWS, {"text": "x" * 200_000, "label": "pos"}])
    assert "line 6: malformed CSV" in data_error(path)


def test_subsample_is_stratified_seeded_and_keeps_every_class(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "big"} for i in range(90)]
    rows += [{"text": f"s{i}", "label": "small"} for i in range(9)]
    rows += [{"text": "only one", "label": "rare"}]
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text(json.dumps({"text": "x", "label": "big"}) + "\n")
    data = load_dataset(folder)
    small = data.subsample(21, seed=3)
    train = small.split("train")
    counts = dict(zip(data.label_names, np.bincount(train.labels, minlength=3), strict=True))
    assert counts == {"big": 18, "rare": 1, "small": 2}
    assert list(train.texts) == sorted(train.texts, key=data.split("train").texts.index)
    assert small.split("test").fingerprint == data.split("test").fingerprint
    assert small.fingerprint != data.fingerprint
    again = data.subsample(21, seed=3).split("train")
    assert again.text_fingerprint == train.text_fingerprint
    assert data.subsample(21, seed=4).split("train").text_fingerprint != train.text_fingerprint
    recorded = {"max_train_samples": 21, "seed": 3, "source_fingerprint": data.fingerprint}
    assert small.sample == recorded
    assert data.subsample(1000) is data and data.sample is None
    with pytest.raises(ConfigError, match="one per class"):
        data.subsample(2)

"""Tests for multi-label datasets in autolayer.data / readers / sampling: label lists in every
format, one-line errors for mixed or empty label sets, the "labels" column fallback, and
splits and samples that keep rare labels."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autolayer.data import binarize, load_dataset
from autolayer.errors import ConfigError, DataError
from autolayer.sampling import covering_rows, rarest_label
from tests.conftest import write_jsonl
from tests.test_data import data_error, write_csv

TOY = Path(__file__).parent / "data" / "multilabel"

ROWS = [
    {"text": "goal match", "labels": ["sports"]},
    {"text": "vote senate", "labels": ["politics"]},
    {"text": "chip robot vote", "labels": ["tech", "politics"]},
    {"text": "team vote chip", "labels": ["sports", "politics", "tech"]},
]


def folder_of(tmp_path: Path, train: list[dict], test: list[dict] | None = None) -> Path:
    folder = tmp_path / "set"
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "train.jsonl", train)
    if test is not None:
        write_jsonl(folder / "test.jsonl", test)
    return folder


# --- reading ---------------------------------------------------------------------------------


def test_the_toy_set_loads_as_a_read_only_indicator_from_its_labels_column() -> None:
    data = load_dataset(TOY)
    train, test = data.split("train"), data.split("test")
    assert data.task == "multi_label"
    assert data.label_names == ("health", "politics", "sports", "tech")
    assert train.labels.dtype == np.uint8 and train.labels.shape == (len(train), 4)
    assert test.labels.shape == (len(test), 4)
    assert not train.labels.flags.writeable
    first = json.loads((TOY / "train.jsonl").read_text().splitlines()[0])
    named = [data.label_names[j] for j in np.flatnonzero(train.labels[0])]
    assert named == sorted(first["labels"])
    assert set(train.labels.sum(axis=1)) <= {1, 2, 3} and train.labels.sum(axis=1).max() > 1
    assert data.origin["label_column"] == "labels"  # the default "label" is absent


def test_single_label_data_keeps_its_task_and_int_labels(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(4)]
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.task == "single_label"
    assert data.split("train").labels.dtype == np.int64
    assert data.origin == {
        "source": str(tmp_path / "d.jsonl"),
        "text_column": "text",
        "label_column": "label",
    }


def test_lists_text_split_at_label_sep_and_parquet_lists_fingerprint_alike(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from_json = load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS))
    joined = [{"text": r["text"], "labels": " ; ".join(r["labels"][::-1])} for r in ROWS]
    from_csv = load_dataset(write_csv(tmp_path / "d.csv", joined), label_sep=";")
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    from_parquet = load_dataset(parquet)
    assert from_json.label_names == ("politics", "sports", "tech")
    assert from_json.split("train").labels.tolist() == [[0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]]
    for other in (from_csv, from_parquet):
        assert np.array_equal(other.split("train").labels, from_json.split("train").labels)
    assert {from_csv.fingerprint, from_parquet.fingerprint} == {from_json.fingerprint}
    assert from_csv.origin["label_sep"] == ";"


def test_duplicate_and_padded_labels_in_a_row_are_merged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{**ROWS[0], "labels": ["sports", " sports", "sports"]}, *ROWS[1:]]
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.fingerprint == load_dataset(write_jsonl(tmp_path / "e.jsonl", ROWS)).fingerprint
    assert "stripped surrounding whitespace from 1 label(s) at line 1" in caplog.text


def test_single_labels_and_labels_differ_in_fingerprint(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(4)]
    single = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    listed = [{"text": r["text"], "label": [r["label"]]} for r in rows]
    multi = load_dataset(write_jsonl(tmp_path / "e.jsonl", listed))
    assert multi.task == "multi_label" and multi.split("train").labels.shape == (4, 2)
    assert single.split("train").text_fingerprint == multi.split("train").text_fingerprint
    assert single.fingerprint != multi.fingerprint


def test_a_hub_sequence_of_class_labels_becomes_label_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import datasets

    names = datasets.ClassLabel(names=["anger", "joy", "fear"])
    features = datasets.Features(
        {"text": datasets.Value("string"), "labels": datasets.Sequence(names)}
    )
    ids = [[0], [1, 2], [2], [0, 1]]
    texts = [f"text {i}" for i in range(len(ids))]
    table = datasets.Dataset.from_dict({"text": texts, "labels": ids}, features=features)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, config=None: datasets.DatasetDict(train=table)
    )
    data = load_dataset("someorg/emotions")
    assert data.label_names == ("anger", "fear", "joy")
    assert data.split("train").labels.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 0], [1, 0, 1]]
    assert data.origin["label_column"] == "labels"


# --- the "labels" fallback -------------------------------------------------------------------


def test_the_label_column_wins_over_labels_when_both_exist(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": "ab"[i % 2], "labels": ["x"]} for i in range(4)]
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.task == "single_label" and data.origin["label_column"] == "label"


def test_a_named_label_column_has_no_fallback(tmp_path: Path) -> None:
    message = data_error(write_jsonl(tmp_path / "d.jsonl", ROWS), label_column="y")
    assert "label_column='y' is not a column" in message


def test_every_split_reads_the_column_train_read(tmp_path: Path) -> None:
    test = [{"text": "goal", "label": ["sports"]}]
    message = data_error(folder_of(tmp_path, ROWS, test))
    assert "test.jsonl line 1: label_column='labels' is not a column" in message


def test_the_fallback_column_reloads_from_origin(tmp_path: Path) -> None:
    csv_rows = [{"text": r["text"], "labels": "|".join(r["labels"])} for r in ROWS]
    data = load_dataset(write_csv(tmp_path / "d.csv", csv_rows), label_sep="|")
    origin = data.origin
    again = load_dataset(
        origin["source"],
        text_column=origin["text_column"],
        label_column=origin["label_column"],
        label_sep=origin["label_sep"],
    )
    assert again.fingerprint == data.fingerprint


# --- bad label sets --------------------------------------------------------------------------


def test_lists_mixed_with_single_labels_name_the_rows(tmp_path: Path) -> None:
    rows = [*ROWS, {"text": "flu", "labels": "health"}, {"text": "cold", "labels": None}]
    message = data_error(write_jsonl(tmp_path / "d.jsonl", rows))
    assert "some labels are lists and some are not: not a list at line 5, 6" in message
    assert "(first value: 'health')" in message and "label_sep" in message
    with pytest.raises(DataError) as caught:  # the CLI says --label-sep
        load_dataset(tmp_path / "d.jsonl")
    assert caught.value.params == ("label_sep",)


def test_a_test_split_of_single_labels_under_list_train_labels_is_refused(
    tmp_path: Path,
) -> None:
    message = data_error(folder_of(tmp_path, ROWS, [{"text": "goal", "labels": "sports"}]))
    assert "test.jsonl: labels are single values but the train split's are lists" in message


def test_an_empty_label_list_is_refused_unless_allowed(tmp_path: Path) -> None:
    rows = [*ROWS, {"text": "weather today", "labels": []}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    message = data_error(path)
    assert "no label (an empty list or text) at line 5" in message
    assert "allow_empty_labels=True" in message
    data = load_dataset(path, allow_empty_labels=True)
    assert data.split("train").labels[-1].tolist() == [0, 0, 0]
    assert data.origin["allow_empty_labels"] is True


def test_an_empty_cell_split_at_label_sep_is_an_empty_label_set(tmp_path: Path) -> None:
    rows = [{"text": r["text"], "labels": ";".join(r["labels"])} for r in ROWS]
    rows += [{"text": "weather today", "labels": " ; "}]
    message = data_error(write_csv(tmp_path / "d.csv", rows), label_sep=";")
    assert "no label (an empty list or text) at line 6" in message


@pytest.mark.parametrize("bad", [None, "", 0.5, ["x"]])
def test_a_bad_label_inside_a_list_names_its_row(tmp_path: Path, bad: Any) -> None:
    rows = [*ROWS, {"text": "flu", "labels": ["health", bad]}]
    message = data_error(write_jsonl(tmp_path / "d.jsonl", rows))
    assert "a label in a list is null, empty, a fraction or not a string/integer at line 5 " in (
        message
    )
    assert f"(first value: {bad!r})" in message


def test_a_test_label_unseen_in_train_is_refused(tmp_path: Path) -> None:
    test = [{"text": "flu", "labels": ["sports", "health"]}]
    message = data_error(folder_of(tmp_path, ROWS, test))
    assert "labels not in the train split: 'health'" in message


def test_one_label_over_all_train_lists_is_refused(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "labels": ["a", "a"]} for i in range(3)]
    assert "only one label ('a') in the train split" in data_error(
        write_jsonl(tmp_path / "d.jsonl", rows)
    )


@pytest.mark.parametrize("sep", ["", 3])
def test_label_sep_must_be_text(tmp_path: Path, sep: Any) -> None:
    with pytest.raises(ConfigError, match="label_sep must be a non-empty string"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS), label_sep=sep)


# --- strata, splits, samples -----------------------------------------------------------------


def test_rarest_label_takes_the_least_frequent_then_the_lowest_index() -> None:
    indicator = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8)
    # frequencies 3, 2, 2: a tie between labels 1 and 2 goes to 1; no label → stratum 3
    assert rarest_label(indicator).tolist() == [1, 0, 3, 2, 1]
    assert rarest_label(indicator).dtype == np.int64


def rare_rows(n_common: int = 36) -> list[dict]:
    """Common labels a/b, a label `rare` on 2 rows (always beside a common one), and
    `shadow`, never a row's rarest label: each of its 3 rows holds a rarer label p/q/s (of 2
    rows each)."""
    rows = [{"text": f"c{i}", "labels": ["a"] if i % 3 else ["a", "b"]} for i in range(n_common)]
    rows += [{"text": f"b{i}", "labels": ["b"]} for i in range(12)]
    rows += [{"text": "r0", "labels": ["rare", "a"]}, {"text": "r1", "labels": ["rare", "b"]}]
    for label in "pqs":
        rows += [{"text": f"{label}0", "labels": [label, "shadow"]}]
        rows += [{"text": f"{label}1", "labels": [label]}]
    return rows


def test_a_carve_puts_every_label_of_two_rows_on_both_sides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [*rare_rows(), {"text": "sh", "labels": ["shadow", "a", "b"]}]
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    labels = data.split("train").labels
    for seed in range(5):
        with caplog.at_level(logging.WARNING, logger="autolayer"):
            train_idx, val_idx = data.train_validation(size=0.2, seed=seed)
        assert sorted([*train_idx, *val_idx]) == list(range(len(labels)))
        assert (labels[train_idx].sum(axis=0) > 0).all(), seed
        assert (labels[val_idx].sum(axis=0) > 0).all(), seed
        assert train_idx.dtype == val_idx.dtype == np.int64
    assert "no example of" not in caplog.text
    again = data.train_validation(size=0.2, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(again, (train_idx, val_idx), strict=True))


def test_a_carve_warns_about_a_single_row_label(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [*rare_rows(), {"text": "lone", "labels": ["lone", "a"]}]
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        train_idx, _ = data.train_validation(size=0.2)
    lone = data.label_names.index("lone")
    assert data.split("train").labels[train_idx, lone].sum() == 1
    assert "the validation split has no example of label 'lone' (1 in train)" in caplog.text


def test_a_validation_file_of_one_label_is_refused(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, ROWS)
    write_jsonl(folder / "validation.jsonl", [{"text": "goal", "labels": ["sports"]}])
    with pytest.raises(DataError, match="its validation split has a single label"):
        load_dataset(folder).check_validation()


def test_a_validation_file_lacking_a_label_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = folder_of(tmp_path, ROWS)
    write_jsonl(folder / "validation.jsonl", ROWS[:2])
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        load_dataset(folder).check_validation()
    assert "no example of label 'tech' (2 in train)" in caplog.text


def test_subsample_keeps_every_label_even_one_that_is_no_rows_rarest(tmp_path: Path) -> None:
    data = load_dataset(folder_of(tmp_path, rare_rows(), [{"text": "x", "labels": ["a"]}]))
    k = len(data.label_names)
    for seed in range(30):  # rarest-label strata alone lose `shadow` at seed 24
        small = data.subsample(k, seed=seed)
        labels = small.split("train").labels
        assert len(labels) == k and (labels.sum(axis=0) > 0).all(), seed
        assert small.task == "multi_label" and not labels.flags.writeable
        assert small.split("test").fingerprint == data.split("test").fingerprint
    again = data.subsample(k, seed=29)
    assert again.split("train").fingerprint == small.split("train").fingerprint
    recorded = {"max_train_samples": k, "seed": 29, "source_fingerprint": data.fingerprint}
    assert small.sample == recorded
    with pytest.raises(ConfigError, match="cannot hold the 7 labels"):
        data.subsample(k - 1)


def test_a_subsample_fingerprints_like_the_same_rows_loaded(tmp_path: Path) -> None:
    rows = rare_rows()
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    small = data.subsample(20, seed=1).split("train")
    kept = [rows[data.split("train").texts.index(text)] for text in small.texts]
    assert load_dataset(write_jsonl(tmp_path / "e.jsonl", kept)).split("train").fingerprint == (
        small.fingerprint
    )


def test_covering_rows_is_sorted_sized_and_seeded() -> None:
    indicator = np.eye(5, dtype=np.uint8)[np.arange(40) % 5]
    rows = covering_rows(indicator, 12, seed=2)
    assert rows.tolist() == sorted(set(rows.tolist())) and rows.size == 12
    assert np.array_equal(rows, covering_rows(indicator, 12, seed=2))
    assert (indicator[rows].sum(axis=0) > 0).all()


def test_labels_per_class_is_single_label_only(tmp_path: Path) -> None:
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", ROWS))
    with pytest.raises(ConfigError) as caught:
        data.per_class(1)
    message = str(caught.value)
    assert message.startswith("labels_per_class (few-label mode) is single-label only: ")
    assert "\n" not in message and caught.value.params == ("labels_per_class", "max_train_samples")


def test_a_carve_too_small_for_the_strata_offers_no_cross_validation(tmp_path: Path) -> None:
    rows = [{"text": f"{label} {i}", "labels": [label]} for label in "pqrs" for i in range(2)]
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    with pytest.raises(DataError) as caught:  # 2 validation rows for 4 strata
        data.train_validation(size=0.2)
    message = str(caught.value)
    assert "4 rarest-label strata" in message and "one per stratum" in message
    assert "cv_folds" not in message and "class" not in message and not caught.value.params


def test_binarize_orders_columns_by_label_names_and_names_an_unknown_label() -> None:
    indicator = binarize([["b"], ["a", "c"], []], ["c", "b", "a"])
    assert indicator.dtype == np.uint8
    assert indicator.tolist() == [[0, 1, 0], [1, 0, 1], [0, 0, 0]]
    with pytest.raises(DataError, match="^y: label 'd' is not one of the 3 labels"):
        binarize([["a", "d"]], ["a", "b", "c"], "y")


# --- label lists read without label_sep, long label lists in messages -------------------------


def joined_rows(n: int, joined_every: int) -> list[dict]:
    """``n`` single-label CSV rows; every ``joined_every``-th holds labels joined by ";"."""
    return [
        {"text": f"text {i}", "label": "acq;crude" if i % joined_every == 0 else f"c{i % 3}"}
        for i in range(n)
    ]


def test_joined_labels_read_without_label_sep_warn_once_naming_the_option(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_csv(tmp_path / "d.csv", joined_rows(40, 10))  # 4 of 40 rows: 10 %
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        assert load_dataset(path).task == "single_label"
    warned = [r.getMessage() for r in caplog.records if "look like lists" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert "labels look like lists joined by ';' (e.g. 'acq;crude')" in warned[0]
    assert "label_sep=';'" in warned[0] and "--label-sep ';'" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        assert load_dataset(path, label_sep=";").task == "multi_label"
    assert "look like lists" not in caplog.text


@pytest.mark.parametrize(
    "labels",
    [
        ["pos", "neg", "R&D;", " ;x"],  # ordinary labels, a separator with one part only
        ["a|b", "c", *"cdefghijklmnopqrstuvwxyz"],  # one joined row: too few to warn
        ["a,b", "d,e", *["c"] * 19, *["f"] * 20],  # 2 of 41 rows: < 5 %
    ],
)
def test_ordinary_labels_give_no_joined_labels_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, labels: list[str]
) -> None:
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate(labels)]
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert "look like lists" not in caplog.text


def test_an_unknown_joined_label_error_is_short_and_offers_label_sep(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    train = [{"text": f"t{i}", "label": f"topic{i:02d}"} for i in range(30)]
    test = [{"text": f"u{i}", "label": f"topic{i:02d};topic{i + 1:02d}"} for i in range(8)]
    write_csv(folder / "train.csv", train)
    write_csv(folder / "test.csv", test)
    with pytest.raises(DataError) as caught:
        load_dataset(folder)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert "labels not in the train split: 'topic00;topic01', " in message
    assert "'topic04;topic05', … and 3 more; " in message
    assert "train labels: topic00, topic01," in message and "topic09, … and 20 more" in message
    assert message.endswith("; if labels are lists joined by ';', pass label_sep ';'")
    assert caught.value.params == ("label_sep",)


def test_an_unknown_ordinary_label_error_keeps_its_message(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    write_csv(folder / "train.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
    write_csv(folder / "test.csv", [{"text": "c", "label": "neutral"}])
    message = data_error(folder)
    assert message.endswith(": labels not in the train split: 'neutral'; train labels: neg, pos")
    with pytest.raises(DataError) as caught:
        load_dataset(folder)
    assert caught.value.params == ()


def test_a_joined_label_in_a_list_gives_no_label_sep_hint(tmp_path: Path) -> None:
    test = [{"text": "flu", "labels": ["sports", "health;care"]}]
    message = data_error(folder_of(tmp_path, ROWS, test))
    assert "labels not in the train split: 'health;care'" in message
    assert "label_sep" not in message


def test_labels_absent_from_validation_are_capped_in_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"l{i:02d}" for i in range(20)]
    train = [{"text": f"t{i} {n}", "labels": [n, "common"]} for i, n in enumerate(names * 2)]
    validation = [{"text": f"v{i}", "labels": ["common", n]} for i, n in enumerate(names[:9])]
    folder = folder_of(tmp_path, train)
    write_jsonl(folder / "validation.jsonl", validation)
    with caplog.at_level(logging.WARNING, logger="autolayer"):
        load_dataset(folder).check_validation()
    (warned,) = [r.getMessage() for r in caplog.records if "no example of" in r.getMessage()]
    assert "\n" not in warned and len(warned) < 300, warned
    assert "no example of label 'l09' (2 in train), 'l10' (2 in train)," in warned
    assert "'l13' (2 in train), … and 6 more;" in warned
    assert "('common': 9, 'l00': 1, 'l01': 1, 'l02': 1, 'l03': 1, … and 5 more)" in warned

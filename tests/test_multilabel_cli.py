"""Multi-label classification where a user touches it: the CLI end to end (recommend →
export → apply → predict) on the toy multi-label set, the estimator with label lists, and
the one-line refusals of inputs multi-label cannot take."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support

from autolayer.classifier import FusionTextClassifier
from autolayer.config import FusionConfig, HeadChoice, ModelChoice, load_config
from autolayer.errors import ConfigError, DataError
from tests.conftest import one_error_line, run, write_jsonl

DATA = Path(__file__).parent / "data" / "multilabel"


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]


def _names() -> list[str]:
    return sorted({label for row in _rows("train") for label in row["labels"]})


def _tfidf_config(**changes) -> FusionConfig:
    """TF-IDF under the linear head (one-vs-rest), for the multi-label task: no backbone."""
    from autolayer.sources import make_source

    config = FusionConfig(
        models=(ModelChoice("tfidf", make_source("tfidf").identity, 0, 1),),
        head=HeadChoice("linear", {}),
        label_names=tuple(_names()),
        task="multi_label",
        metric="micro_f1",
    )
    return replace(config, **changes)


def test_recommend_apply_predict_give_label_sets_and_per_label_probabilities(
    capsys, tmp_path, home, tiny_models
):
    out_dir = tmp_path / "out"
    models = f"tfidf,{tiny_models['bert']}"
    code, out, err = run(
        capsys, "recommend", "-d", DATA, "--models", models, "--n-trials", 2,
        "--max-length", 12, "-o", out_dir,
    )  # fmt: skip
    assert code == 0, err
    assert "recommended:" in out and "micro_f1" in out and "accuracy %" not in out
    config = load_config(out_dir / "recommendation.yaml")
    assert (config.task, config.metric) == ("multi_label", "micro_f1")
    assert list(config.label_names) == _names()
    assert config.task_params  # the trial's rule (thresholds tuned on validation)

    code, out, err = run(capsys, "apply", out_dir / "recommendation.yaml", "-o", tmp_path / "model")
    assert code == 0, err
    words = " ".join(out.split())
    assert "test micro-F1" in words and "samples-F1" in words and "subset accuracy" in words
    assert "per-label test metrics" in words
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["task"] == "multi_label" and metrics["n_test"] == len(_rows("test"))
    assert list(metrics)[1] == "micro_f1" and set(metrics["per_label"]) == set(_names())

    test = _rows("test")
    (tmp_path / "new.txt").write_text("".join(row["text"] + "\n" for row in test))
    code, out, err = run(capsys, "predict", tmp_path / "model", "-i", tmp_path / "new.txt")
    assert code == 0, err
    predicted = [json.loads(line) for line in out.splitlines()]
    assert all(set(p["labels"]) <= set(_names()) and "label" not in p for p in predicted)
    assert all(list(p["probabilities"]) == _names() for p in predicted)
    truth = _indicator([row["labels"] for row in test])
    decided = _indicator([p["labels"] for p in predicted])
    micro = f1_score(truth, decided, average="micro")
    assert metrics["micro_f1"] == pytest.approx(micro)
    per_label = precision_recall_fscore_support(truth, decided, zero_division=0)
    assert [metrics["per_label"][n]["f1-score"] for n in _names()] == pytest.approx(per_label[2])

    code, _, err = run(
        capsys, "predict", tmp_path / "model", "-i", tmp_path / "new.txt",
        "-o", tmp_path / "pred.csv", "--label-sep", "|",
    )  # fmt: skip
    assert code == 0, err
    with open(tmp_path / "pred.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["row", "text", "labels", "fallback", *(f"p_{n}" for n in _names())]
    assert [r["labels"].split("|") if r["labels"] else [] for r in table] == [
        p["labels"] for p in predicted
    ]


def _indicator(label_lists: list[list[str]]) -> np.ndarray:
    names = _names()
    return np.asarray([[n in labels for n in names] for labels in label_lists], dtype=np.uint8)


def test_predictions_keep_label_lists_in_parquet_and_refuse_an_ambiguous_separator(
    capsys, tmp_path, home
):
    import pyarrow.parquet as pq

    rows = _rows("train")
    model = FusionTextClassifier(_tfidf_config()).fit(
        [r["text"] for r in rows], [r["labels"] for r in rows]
    )
    model.save(tmp_path / "model")
    (tmp_path / "in.txt").write_text("".join(r["text"] + "\n" for r in _rows("test")[:5]))
    code, _, err = run(
        capsys, "predict", tmp_path / "model", "-i", tmp_path / "in.txt",
        "-o", tmp_path / "p.parquet",
    )  # fmt: skip
    assert code == 0, err
    table = pq.read_table(tmp_path / "p.parquet").to_pylist()
    assert all(isinstance(r["labels"], list) and r["labels"] for r in table)
    separator = _names()[0][1]  # a letter of a label: a joined cell could not be split
    code, _, err = run(
        capsys, "predict", tmp_path / "model", "-i", tmp_path / "in.txt",
        "-o", tmp_path / "p.csv", "--label-sep", separator,
    )  # fmt: skip
    assert code == ConfigError.exit_code and "another --label-sep" in one_error_line(err)
    assert not (tmp_path / "p.csv").exists()


def test_the_estimator_fits_label_lists_and_predicts_an_indicator(home, tmp_path):
    rows, test = _rows("train"), _rows("test")
    texts, labels = [r["text"] for r in rows], [r["labels"] for r in rows]
    model = FusionTextClassifier(_tfidf_config()).fit(texts, labels)
    assert list(model.classes_) == _names()
    test_texts = [r["text"] for r in test]
    predicted, proba = model.predict(test_texts), model.predict_proba(test_texts)
    assert predicted.dtype == np.uint8 and predicted.shape == proba.shape == (len(test), 4)
    truth = _indicator([r["labels"] for r in test])
    assert model.score(test_texts, [r["labels"] for r in test]) == pytest.approx(
        f1_score(truth, predicted, average="micro")
    )
    loaded = FusionTextClassifier.load(model.save(tmp_path / "m"))
    assert np.array_equal(loaded.predict(test_texts), predicted)

    by_columns = FusionTextClassifier(_tfidf_config()).fit(texts, _indicator(labels))
    assert list(by_columns.classes_) == ["0", "1", "2", "3"]
    assert np.array_equal(by_columns.predict(test_texts), predicted)


def test_the_configs_fitted_thresholds_decide_and_survive_save_and_load(home, tmp_path):
    rows, texts = _rows("train"), [r["text"] for r in _rows("test")]
    rule = {"threshold": [0.9, 0.2, 0.5, 0.7], "empty": "none"}
    model = FusionTextClassifier(_tfidf_config(task_params=rule))
    model.fit([r["text"] for r in rows], [r["labels"] for r in rows])
    proba = model.predict_proba(texts)
    assert np.array_equal(model.predict(texts), proba >= np.asarray(rule["threshold"]))
    loaded = FusionTextClassifier.load(model.save(tmp_path / "m"))
    assert loaded._config().task_params == rule
    assert np.array_equal(loaded.predict(texts), model.predict(texts))


def test_the_estimator_refuses_mixed_labels_and_a_task_that_does_not_fit_them(home):
    texts = ["goal match", "vote law", "chip code"]
    with pytest.raises(DataError, match=r"mixes lists of labels and single labels.*y\[1\]"):
        FusionTextClassifier(_tfidf_config()).fit(texts, [["sports"], "politics", ["tech"]])
    single = _tfidf_config(task="single_label", metric="accuracy", label_names=())
    with pytest.raises(DataError, match="task is 'single_label'"):
        FusionTextClassifier(single).fit(texts, [["sports"], ["politics"], ["tech"]])
    with pytest.raises(DataError, match="task is 'multi_label'"):
        FusionTextClassifier(_tfidf_config()).fit(texts, ["sports", "politics", "tech"])
    with pytest.raises(DataError, match="at least 2 labels"):
        FusionTextClassifier(_tfidf_config()).fit(texts, [["sports"], [], ["sports"]])


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--labels-per-class", 4], "single-label"),
        (["--cv-folds", 3], "single-label"),
        (["--metric", "accuracy"], "micro_f1"),
    ],
)
def test_options_multi_label_data_cannot_take_are_one_line(capsys, tmp_path, home, flags, said):
    out = tmp_path / "o"
    code, _, err = run(capsys, "recommend", "-d", DATA, "--models", "tfidf", "-o", out, *flags)
    assert code == ConfigError.exit_code and said in one_error_line(err)


def test_bad_label_lists_are_one_line_and_empty_ones_pass_when_allowed(capsys, tmp_path, home):
    rows = _rows("train")
    mixed = [*rows[:-1], {"text": rows[-1]["text"], "labels": rows[-1]["labels"][0]}]
    write_jsonl(tmp_path / "mixed" / "train.jsonl", mixed)
    write_jsonl(tmp_path / "empty" / "train.jsonl", [*rows[:-1], {"text": "a", "labels": []}])
    for folder in ("mixed", "empty"):
        code, _, err = run(
            capsys, "recommend", "-d", tmp_path / folder, "--models", "tfidf", "-o", tmp_path / "o"
        )
        assert code == DataError.exit_code, err
        one_error_line(err)
        if folder == "mixed":
            assert "--label-sep" in err and " label_sep" not in err
    assert "--allow-empty-labels" in err  # the empty list's line names the way out
    code, _, err = run(
        capsys, "recommend", "-d", tmp_path / "empty", "--allow-empty-labels",
        "--models", "tfidf", "--labels-per-class", 2, "-o", tmp_path / "o",
    )  # fmt: skip
    assert code == ConfigError.exit_code and "single-label" in one_error_line(err)


def test_apply_refuses_a_config_for_the_other_kind_of_labels_in_one_line(
    capsys, tmp_path, home, tiny_dataset
):
    _tfidf_config().save(tmp_path / "multi.yaml")
    code, _, err = run(
        capsys, "apply", tmp_path / "multi.yaml", "-d", tiny_dataset, "-o", tmp_path / "m"
    )
    assert code == ConfigError.exit_code
    assert "task is 'multi_label'" in one_error_line(err) and not (tmp_path / "m").exists()


def test_a_single_label_apply_writes_metrics_json_as_it_always_did(home, tmp_path, tiny_dataset):
    from autolayer.classifier import apply

    single = _tfidf_config(task="single_label", metric="accuracy", label_names=("neg", "pos"))
    result = apply(single, str(tiny_dataset), tmp_path / "m")
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert list(metrics) == ["accuracy", "macro_f1", "per_class", "n_test", "n_train"]
    assert result.metrics == {} and result.accuracy == metrics["accuracy"]


def test_an_edited_threshold_list_is_refused_when_the_model_loads(home, tmp_path):
    import yaml

    rows = _rows("train")
    model = FusionTextClassifier(_tfidf_config()).fit(
        [r["text"] for r in rows], [r["labels"] for r in rows]
    )
    folder = model.save(tmp_path / "m")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["task_params"] = {"threshold": [0.5, 0.5, 0.5]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        FusionTextClassifier.load(folder)
    assert str(caught.value).endswith("config.yaml: task_params: 3 thresholds for 4 labels")


def test_score_uses_the_searchs_metrics_weights_included(home):
    from autolayer.classifier import multi_label_metrics

    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.uint8)
    predicted = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.uint8)
    weight = np.array([1.0, 2.0, 0.5, 3.0])
    got = multi_label_metrics(truth, predicted, sample_weight=weight)
    for average in ("micro", "macro", "samples"):
        expected = f1_score(
            truth, predicted, average=average, sample_weight=weight, zero_division=1
        )
        assert got[f"{average}_f1"] == pytest.approx(expected), average
    none = np.zeros((2, 3), dtype=np.uint8)  # nothing true, nothing predicted: as the search
    assert multi_label_metrics(none, none) == {
        "micro_f1": 0.0,
        "macro_f1": 0.0,
        "samples_f1": 1.0,
        "subset_accuracy": 1.0,
    }


@pytest.mark.parametrize(("multi", "output"), [(True, "p.jsonl"), (False, "p.csv")])
def test_predict_warns_that_a_label_separator_joins_nothing(
    capsys, caplog, home, tmp_path, multi, output
):
    rows = _rows("train")
    texts = [r["text"] for r in rows]
    if multi:
        model = FusionTextClassifier(_tfidf_config()).fit(texts, [r["labels"] for r in rows])
    else:
        config = _tfidf_config(task="single_label", metric="accuracy", label_names=())
        model = FusionTextClassifier(config).fit(texts, [r["labels"][0] for r in rows])
    model.save(tmp_path / "m")
    (tmp_path / "in.txt").write_text("goal match\nvote law\n")
    code, _, err = run(
        capsys, "predict", tmp_path / "m", "-i", tmp_path / "in.txt",
        "-o", tmp_path / output, "--label-sep", "|",
    )  # fmt: skip
    assert code == 0, err
    said = "a JSONL output keeps each text's labels" if multi else "one label per text"
    assert caplog.text.count("label separator '|' is ignored") == 1 and said in caplog.text


def test_the_per_label_table_shows_what_macro_f1_averages(capsys, monkeypatch):
    """A label neither true nor predicted has no F1 ("—", None in metrics.json), so the
    F1 column's numbers average to the macro-F1 printed above it; precision without
    predictions and recall without support are "—" too; the caption says what is averaged."""
    from autolayer import report
    from autolayer.classifier import label_table, multi_label_metrics

    monkeypatch.setenv("COLUMNS", "200")
    truth = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], dtype=np.uint8)
    predicted = np.array([[1, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    table = label_table(truth, predicted, ["a", "b", "never", "wrong"])
    assert table["never"] == {
        "precision": None, "recall": None, "f1-score": None, "support": 0, "predicted": 0
    }  # fmt: skip
    assert table["wrong"]["f1-score"] == 0.0 and table["wrong"]["recall"] is None
    assert table["b"]["predicted"] == 1 and table["a"]["support"] == 3
    numbers = [row["f1-score"] for row in table.values() if row["f1-score"] is not None]
    assert np.mean(numbers) == pytest.approx(multi_label_metrics(truth, predicted)["macro_f1"])
    expected = precision_recall_fscore_support(truth, predicted, zero_division=0)[2]
    assert [table[n]["f1-score"] for n in ("a", "b", "wrong")] == pytest.approx(expected[[0, 1, 3]])

    report.label_table(table)
    out = capsys.readouterr().out
    never = next(line for line in out.splitlines() if "never" in line)
    assert [c.strip() for c in re.split("[│┃|]", never) if c.strip()] == [
        "never", "—", "—", "—", "0", "0"
    ]  # fmt: skip
    words = " ".join(out.split())
    assert "predicted" in words and "averages the F1 of the 3 of 4 labels" in words


def test_a_multi_label_metrics_json_names_each_metric_and_has_no_accuracy(home, tmp_path):
    from autolayer.classifier import apply

    config = _tfidf_config(metric="macro_f1")
    result = apply(config, str(DATA), tmp_path / "m")
    written = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert list(written) == [
        "task", "macro_f1", "micro_f1", "samples_f1", "subset_accuracy", "per_label",
        "n_test", "n_train",
    ]  # fmt: skip
    assert "accuracy" not in written and result.accuracy is None
    assert result.metrics == {m: written[m] for m in list(written)[1:5]}
    assert result.per_class == written["per_label"] and set(written["per_label"]) == set(_names())
    assert all("predicted" in row for row in written["per_label"].values())


def test_refitting_on_other_labels_warns_as_a_user_warning_and_empty_rows_fit(home):
    """Thresholds fitted for the config's labels do not carry to an indicator's columns: a
    catchable UserWarning, not a log line. A row with no label is a valid indicator row."""
    rows = _rows("train")
    texts, target = [r["text"] for r in rows], _indicator([r["labels"] for r in rows])
    target[0] = 0  # "none of these"
    rule = {"threshold": [0.9, 0.2, 0.5, 0.7], "empty": "none"}
    model = FusionTextClassifier(_tfidf_config(task_params=rule))
    with pytest.warns(UserWarning, match="task_params were fitted for its label_names"):
        model.fit(texts, target)
    assert model.head_.task.params()["threshold"] is None  # the task's defaults decide
    assert model.predict(texts).shape == target.shape


@pytest.mark.parametrize("output", ["p.jsonl", "p.csv", "p.parquet"])
def test_predict_flags_texts_given_their_top_label_by_the_fallback(home, tmp_path, output):
    import pyarrow.parquet as pq

    from autolayer.predictions import predict_file

    rows = _rows("train")
    rule = {"threshold": [0.6, 0.6, 0.6, 0.6], "empty": "top"}
    model = FusionTextClassifier(_tfidf_config(task_params=rule))
    model.fit([r["text"] for r in rows], [r["labels"] for r in rows]).save(tmp_path / "m")
    texts = [r["text"] for r in _rows("test")] + ["nothing learnt here", "zzz qqq"]
    (tmp_path / "in.txt").write_text("".join(t + "\n" for t in texts))
    got = predict_file(tmp_path / "m", tmp_path / "in.txt", tmp_path / output)
    below = (np.asarray([list(r["probabilities"].values()) for r in got]) < 0.6).all(1)
    assert below.any() and not below.all()  # both kinds of row are checked
    assert [r["fallback"] for r in got] == below.tolist()
    assert all(len(r["labels"]) == 1 for r, fell in zip(got, below, strict=True) if fell)
    if output.endswith(".csv"):
        with open(tmp_path / output, newline="") as f:
            written = [r["fallback"] == "True" for r in csv.DictReader(f)]
    elif output.endswith(".parquet"):
        written = pq.read_table(tmp_path / output).column("fallback").to_pylist()
    else:
        lines = (tmp_path / output).read_text().splitlines()
        written = [json.loads(line)["fallback"] for line in lines]
    assert written == below.tolist()

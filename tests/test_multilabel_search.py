"""Multi-label data through the stages between the data and the saved config: the task and
metric resolved from the data, every head searched, each trial's thresholds fitted on its
validation rows and exported with its config; few-label mode refused."""

from __future__ import annotations

import random

import numpy as np
import optuna
import pytest

from autolayer import pipeline
from autolayer.budgets import Budget
from autolayer.config import from_dict, load_config
from autolayer.errors import ConfigError
from autolayer.options import Options
from autolayer.selection import BASELINE, TASK_PARAMS
from autolayer.space import Space
from tests.conftest import WORDS, write_jsonl

# each label's words: a text holds the words of its labels, and filler
VOCAB = {
    "pos": ("good", "great", "fun"),
    "neg": ("bad", "awful", "dull"),
    "story": ("plot", "story"),
    "cast": ("actors", "loved"),
}
LABELS = sorted(VOCAB)


@pytest.fixture()
def multi_dataset(tmp_path):
    """A four-label dataset folder: 80 train and 20 test texts of one to three labels."""
    rng = random.Random(0)
    rows = []
    for i in range(100):
        labels = sorted({LABELS[i % 4], *rng.sample(LABELS, rng.randint(0, 2))})
        words = [rng.choice(VOCAB[label]) for label in labels for _ in range(2)]
        words += [rng.choice(WORDS[:6]) for _ in range(rng.randint(1, 4))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "labels": labels})
    folder = tmp_path / "multi"
    write_jsonl(folder / "train.jsonl", rows[:80])
    write_jsonl(folder / "test.jsonl", rows[80:])
    return folder


def _search(prepared, tmp_path, space: Space, n_trials: int = 1):
    return pipeline.search(
        prepared,
        output_dir=tmp_path / "out",
        budget=Budget(n_trials=n_trials),
        space=space,
        study_name="multi",
    )


def _thresholds(params: dict) -> list[float]:
    """The per-label thresholds a fitted multi-label task records."""
    assert isinstance(params["threshold"], list)
    return params["threshold"]


@pytest.mark.parametrize("head", ["mlp", "linear", "late"])
def test_each_head_searches_label_sets_and_its_trials_record_their_thresholds(
    head, home, tmp_path, tiny_models, multi_dataset
):
    models = [str(tiny_models["bert"]), "tfidf"]
    prepared = pipeline.prepare(multi_dataset, models, top_k=1)
    assert (prepared.options.task, prepared.options.metric) == ("multi_label", "micro_f1")
    assert prepared.y_train.shape[1] == prepared.y_val.shape[1] == len(LABELS)
    result = _search(prepared, tmp_path, Space(heads=(head,), baselines=False))
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert head in {t.head for t in complete}  # (late fusion: over two models only)
    for trial in complete:
        assert len(_thresholds(trial.attrs[TASK_PARAMS])) == len(LABELS)
        assert 0 <= trial.value <= 1


def test_the_baselines_run_on_label_sets_and_the_best_trial_exports_its_thresholds(
    home, tmp_path, tiny_models, multi_dataset
):
    """The baselines first (each model's best layer, linear head): the exported config names
    the multi-label task and the best trial's thresholds, and reads back the same."""
    prepared = pipeline.prepare(multi_dataset, [str(tiny_models["bert"]), "tfidf"], top_k=1)
    result = _search(prepared, tmp_path, Space(heads=("linear", "late")))
    baselines = [t for t in result.trials if t.attrs.get(BASELINE) and t.state == "COMPLETE"]
    assert len(baselines) == 2 and all(TASK_PARAMS in t.attrs for t in baselines)
    config = pipeline.export(result.storage, result.study_name)
    assert config.task == "multi_label" and config.metric == "micro_f1"
    assert config.task_params == result.best.attrs[TASK_PARAMS]
    assert len(_thresholds(config.task_params)) == len(LABELS)
    assert config.make_task().params() == config.task_params
    assert config.make_head().task.params() == config.task_params
    saved = config.save(tmp_path / "config.yaml")
    assert load_config(saved) == config
    assert "task_params:" in saved.read_text()


def test_a_single_label_config_is_written_without_task_params(tmp_path, tiny_models):
    """An old config reads back and is written again byte for byte: no empty field."""
    from tests.conftest import write_config

    path = write_config(tmp_path, tiny_models["bert"])
    config = load_config(path)
    assert config.task_params == {} and "task_params" not in config.to_dict()
    again = config.save(tmp_path / "again.yaml")
    assert load_config(again) == config and "task_params" not in again.read_text()


def test_task_params_a_task_does_not_take_are_refused_in_one_line(tmp_path, tiny_models):
    from tests.conftest import write_config

    data = load_config(write_config(tmp_path, tiny_models["bert"])).to_dict()
    with pytest.raises(ConfigError) as caught:
        from_dict({**data, "task_params": {"threshold": 0.5}}, "c.yaml")
    assert str(caught.value).startswith("c.yaml: ") and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="task_params"):
        from_dict({**data, "task_params": [0.5]}, "c.yaml")
    multi = {**data, "task": "multi_label", "metric": "micro_f1"}
    assert from_dict({**multi, "task_params": {"threshold": [0.3, 0.6]}}).make_task()
    with pytest.raises(ConfigError) as caught:  # one threshold too many: refused on reading
        from_dict({**multi, "task_params": {"threshold": [0.3, 0.6, 0.5]}}, "c.yaml")
    assert str(caught.value) == "c.yaml: task_params: 3 thresholds for 2 labels"
    with pytest.raises(ConfigError, match="threshold"):
        from_dict({**multi, "task_params": {"threshold": "high"}}, "c.yaml")
    with pytest.raises(ConfigError) as caught:  # one bad value of a list: named by its label
        from_dict({**multi, "task_params": {"threshold": [0.3, 1.5]}}, "c.yaml")
    label = multi["label_names"][1]
    assert str(caught.value) == (
        f"c.yaml: task_params: threshold[1] = 1.5 (label {label!r}); each must be a number in "
        "(0, 1)"
    )
    with pytest.raises(ConfigError) as caught:
        from_dict({**multi, "task_params": {"foo": 1}}, "c.yaml")
    assert str(caught.value) == (
        "c.yaml: task_params: unknown key 'foo'; multi_label takes threshold, empty"
    )


def test_a_config_without_a_metric_takes_its_tasks_default(tmp_path, tiny_models):
    from tests.conftest import write_config

    data = load_config(write_config(tmp_path, tiny_models["bert"])).to_dict()
    del data["metric"]
    assert from_dict(data).metric == "accuracy"
    assert from_dict({**data, "task": "multi_label"}).metric == "micro_f1"


def test_the_metric_is_the_tasks_default_unless_given(home, tiny_models, tiny_dataset):
    assert Options().metric is None and Options().task is None
    assert Options(metric="micro_f1").metric == "micro_f1"  # any task's metric is a metric
    with pytest.raises(ConfigError, match="metric must be one of") as caught:
        Options(metric="auc")
    assert "subset_accuracy" in str(caught.value)
    prepared = pipeline.prepare(str(tiny_dataset), ["tfidf"], top_k=1)
    assert (prepared.options.task, prepared.options.metric) == ("single_label", "accuracy")
    assert prepared.options.results()["metric"] == "accuracy"


def test_a_metric_of_another_task_is_refused_naming_the_tasks(home, multi_dataset, tiny_dataset):
    with pytest.raises(ConfigError) as caught:
        pipeline.prepare(multi_dataset, ["tfidf"], options=Options(metric="accuracy"))
    message = str(caught.value)
    assert "micro_f1" in message and "subset_accuracy" in message and "\n" not in message
    assert "the multi-label metrics" in message
    with pytest.raises(ConfigError, match="accuracy, macro_f1"):
        pipeline.prepare(str(tiny_dataset), ["tfidf"], options=Options(metric="micro_f1"))
    assert not (home / "embeddings").exists()


@pytest.mark.parametrize(("task", "data"), [("single_label", "multi"), ("multi_label", "tiny")])
def test_a_task_the_labels_do_not_fit_is_refused(
    task, data, home, multi_dataset, tiny_dataset, tiny_models
):
    folder = multi_dataset if data == "multi" else tiny_dataset
    with pytest.raises(ConfigError, match=f"task '{task}' does not fit") as caught:
        pipeline.prepare(folder, [str(tiny_models["bert"])], task=task)
    assert caught.value.params == ("task",)
    assert not (home / "embeddings").exists()  # refused before any extraction


def test_few_label_mode_is_refused_on_label_sets(home, tmp_path, multi_dataset, tiny_models):
    models = [str(tiny_models["bert"])]
    with pytest.raises(ConfigError, match="cv_folds .* single-label only"):
        pipeline.prepare(multi_dataset, models, cv_folds=3)
    with pytest.raises(ConfigError, match="labels_per_class .* single-label only") as caught:
        pipeline.recommend(multi_dataset, models, output_dir=tmp_path / "o", labels_per_class=4)
    assert caught.value.params == ("labels_per_class", "max_train_samples")
    assert not (home / "embeddings").exists()


def test_a_screen_too_small_counts_labels_of_label_sets():
    from autolayer.fidelity import Fidelity

    with pytest.raises(ConfigError, match="4 labels × 5 folds need at least 20 rows"):
        Fidelity(screen_size=10).check(100, 4, "labels")


def test_a_single_label_trial_records_no_task_params(tmp_path):
    """Single-label studies are stored as before: no thresholds, and no prediction spent."""
    from autolayer.search import run_search
    from autolayer.space import Candidate, LayerCost
    from autolayer.task import make_task

    rng = np.random.default_rng(0)
    costs = {1: LayerCost(0.5, 1.0)}
    candidate = Candidate(
        "a",
        (1,),
        2,
        rng.normal(size=(40, 1, 8)).astype("float32"),
        rng.normal(size=(10, 1, 8)).astype("float32"),
        1.0,
        costs,
    )
    result = run_search(
        [candidate], np.arange(40) % 2, np.arange(10) % 2, task=make_task(),
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s",
        budget=Budget(n_trials=1), space=Space(heads=("linear",), baselines=False),
    )  # fmt: skip
    [trial] = result.trials
    assert trial.state == "COMPLETE" and TASK_PARAMS not in trial.attrs
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert study.user_attrs["metric"] == "accuracy"


def test_score_and_complementarity_rank_layers_of_label_sets_by_the_tasks_metric(
    home, tiny_models, multi_dataset
):
    models = [str(tiny_models["bert"]), str(tiny_models["llama"])]
    [report] = pipeline.score(models[:1], multi_dataset, n_folds=3)
    micro = report.scores.micro_f1
    assert report.scores.metric == "micro_f1" and report.best_layer == int(np.argmax(micro))
    layer = report.to_dict()["layers"][report.best_layer]  # score --json: metrics by name
    assert layer["micro_f1"] == micro[report.best_layer] and layer["rank"] == 1
    assert {"macro_f1", "samples_f1_std", "subset_accuracy"} <= set(layer)
    assert "accuracy" not in layer
    compared = pipeline.complementarity(models, multi_dataset)
    assert len(compared.pairs) == 1 and compared.matrix.shape == (2, 2)
    with pytest.raises(ConfigError, match="task 'single_label' does not fit"):
        pipeline.score(models[:1], multi_dataset, task="single_label")

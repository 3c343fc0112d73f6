"""The Optuna study on tiny random models: budgets and constraints, resumption, the Pareto
front, and a search space read when the search starts."""

from __future__ import annotations

import threading

import numpy as np
import optuna
import pytest

from autolayer import pipeline
from autolayer.budgets import Budget, Cost
from autolayer.complementarity import PairEstimate
from autolayer.errors import ConfigError
from autolayer.selection import trained_count
from autolayer.space import Space, guided_trials
from tests.conftest import run

MLP = Space(heads=("mlp",))  # the former default space, for tests of rules besides the heads


def test_search_resumes_and_counts_trials_across_runs(home, tmp_path, tiny_dataset, models, caplog):
    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    # the MLP alone: a continuous space, where no two draws are the same configuration
    settings = {"output_dir": tmp_path, "storage": storage, "study_name": "s", "space": MLP}
    first = pipeline.search(prepared, budget=Budget(n_trials=3), **settings)
    assert "resuming" not in caplog.text
    again = pipeline.search(prepared, budget=Budget(n_trials=5), **settings)
    assert "resuming study 's': 3 of 5 trials trained, 2 to go" in caplog.text  # said once
    assert caplog.text.count("resuming") == 1
    study = optuna.load_study(study_name="s", storage=storage)
    assert trained_count(study)[0] == 5
    # the resumed run draws afresh: it does not replay the first run's sampled trials
    sampled = [t.params for t in study.trials if "fixed_params" not in t.system_attrs]
    assert len(sampled) >= 2
    assert all(a != b for i, a in enumerate(sampled) for b in sampled[:i])
    kept = {t.number for t in first.trials if t.state == "COMPLETE"}
    assert kept <= {t.number for t in again.trials}
    for trial in again.trials:
        if trial.state == "COMPLETE":
            assert {"latency_ms", "memory_mb", "params", "fused_dim", "train_seconds"} <= set(
                trial.attrs
            )


def test_infeasible_configurations_are_never_trained(home, tmp_path, tiny_dataset, models):
    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    cheapest = min(c.latency_ms(min(c.layers)) for c in prepared.candidates)
    # Exactly at the budget: a stored value that differs from the compared one (rounded,
    # say) would put a feasible configuration above it by chance.
    budget = Budget(n_trials=4, max_latency_ms=cheapest)
    result = pipeline.search(prepared, output_dir=tmp_path, budget=budget, study_name="b")
    for trial in result.trials:
        if trial.state == "COMPLETE":
            assert trial.attrs["latency_ms"] <= budget.max_latency_ms
        elif "infeasible" in trial.attrs:
            assert "train_seconds" not in trial.attrs and "latency" in trial.attrs["infeasible"]


def test_budget_nothing_can_meet_names_the_binding_limit(
    capsys, home, tmp_path, tiny_dataset, models
):
    code, _, err = run(
        capsys,
        "search",
        "-d",
        tiny_dataset,
        "--models",
        models,
        "--max-latency-ms",
        "1e-9",
        "-o",
        tmp_path,
    )
    assert code == ConfigError.exit_code
    assert "max-latency-ms" in err and "Traceback" not in err


def test_multi_objective_reports_a_pareto_front(home, tmp_path, tiny_dataset, models):
    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    result = pipeline.search(
        prepared,
        output_dir=tmp_path,
        budget=Budget(n_trials=6),
        study_name="mo",
        multi_objective=True,
    )
    assert result.pareto
    values = [(t.values[0], t.attrs["latency_ms"]) for t in result.pareto]
    for acc, lat in values:  # no front member is dominated by another
        assert not any(a >= acc and la <= lat and (a, la) != (acc, lat) for a, la in values)


def test_each_budget_limit_is_a_registered_constraint():
    from autolayer.budgets import CONSTRAINTS
    from autolayer.errors import ConfigError

    cost = Cost(latency_ms=2.5, memory_mb=300.0, params=5000, fused_dim=64)
    budget = Budget(max_latency_ms=2.0, max_memory_mb=None, max_params=4000)
    assert budget.max_latency_ms == 2.0 and budget.max_memory_mb is None
    assert budget.violations(cost) == [
        "latency 2.50 ms > max-latency-ms 2",
        "head parameters 5,000 > max-params 4000",
    ]
    assert Budget(max_latency_ms=2.5).violations(cost) == []  # at the limit is within it
    assert set(CONSTRAINTS) >= {"max_latency_ms", "max_memory_mb", "max_params"}
    with pytest.raises(ConfigError, match="max_gpus"):
        Budget(max_gpus=1)


def test_the_operators_searched_are_read_when_the_search_starts():
    from autolayer.fusion import OPERATORS, Concat, register
    from autolayer.space import Space

    assert Space().operator_names() == tuple(OPERATORS)
    register("late")(type("Late", (Concat,), {}))
    try:
        assert "late" in Space().operator_names()
        assert Space(operators=("sum",)).operator_names() == ("sum",)
    finally:
        OPERATORS.pop("late")


def _pair(a: str, b: str, gain: float, accuracy=(0.7, 0.8)) -> PairEstimate:
    return PairEstimate((a, b), accuracy, max(accuracy) + gain, gain, 0.01, 0.1, 0.2, 0.1, 0.5, 99)


def test_a_choice_splits_back_into_the_pools_models_even_a_name_holding_the_separator():
    """A folder named ``a + b`` stays one model: a choice is split back into the pool's
    names, not at every " + "."""
    import itertools

    from autolayer.space import split_models, subsets

    names = ["/data/a + b/model", "tfidf", "/data/a", "b"]
    combos = [c for n in (1, 2, 3) for c in itertools.combinations(names, n)]
    assert [split_models(choice, names) for choice in subsets(names, 3)] == combos
    assert split_models("/data/a + b/model + tfidf", names) == ("/data/a + b/model", "tfidf")
    assert split_models("/data/a + tfidf", names) == ("/data/a", "tfidf")
    assert split_models("/data/a + x", names) == ()  # not a join of the pool's names


def test_a_pool_holding_a_name_that_is_a_join_of_others_is_refused():
    """Names ``a``, ``b`` and ``a + b``: the choice of the pair would read as the one model
    and the pair never be searched, so the pool is refused; a name merely holding the
    separator is not."""
    from autolayer.candidates import check_models

    with pytest.raises(ConfigError, match=r"model 'a \+ b' is also 'a' and 'b' joined with"):
        check_models(["a", "b", "a + b"])
    with pytest.raises(ConfigError, match=r"is also 'a' and 'b \+ c' joined with"):
        check_models(["a + b + c", "b + c", "a"])
    assert check_models(["/data/a + b/model", "/data/a", "b"]) == [
        "/data/a + b/model",
        "/data/a",
        "b",
    ]
    assert check_models(["a + b", "a"]) == ["a + b", "a"]


def test_guided_trials_try_the_best_model_then_the_best_pairs_that_gain(home, tiny_dataset, models):
    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    first, second = (c.name for c in prepared.candidates)
    best = {c.name: c.layers[0] for c in prepared.candidates}
    # the pair named in the other order still maps to the search's own choice string
    pairs = [_pair(second, first, gain=0.04, accuracy=(0.8, 0.7))]
    trials = guided_trials(prepared.candidates, pairs, MLP)
    assert trials[0] == {
        "models": second,
        f"layer:{second}": best[second],
        "width": 256,
        "lr": 1e-3,
    }
    assert trials[1]["models"] == f"{first} + {second}" and trials[1]["operator"] == "concat"
    assert trials[1][f"layer:{first}"] == best[first]
    assert len(guided_trials(prepared.candidates, [_pair(first, second, -0.01)], MLP)) == 1
    no_concat = guided_trials(
        prepared.candidates, pairs, Space(heads=("mlp",), operators=("sum", "moe"))
    )
    assert no_concat[1]["operator"] == "sum"
    assert guided_trials(prepared.candidates, [], Space()) == []


def test_guided_pairs_are_ranked_by_their_joint_probe_not_their_gain():
    from autolayer.space import Candidate

    def candidate(name):
        return Candidate(name, (1,), 3, None, None, 1.0, {})

    names = ["strong", "partner", "weak", "weaker"]
    pairs = [
        _pair("weak", "weaker", gain=0.10, accuracy=(0.6, 0.55)),  # joint 0.70
        _pair("strong", "partner", gain=0.01, accuracy=(0.9, 0.85)),  # joint 0.91
        _pair("strong", "weak", gain=0.0, accuracy=(0.9, 0.6)),  # no gain: never enqueued
    ]
    trials = guided_trials([candidate(n) for n in names], pairs, MLP, n_pairs=2)
    assert [t["models"] for t in trials] == ["strong", "strong + partner", "weak + weaker"]


def test_a_new_study_runs_the_guided_trials_first(home, tmp_path, tiny_dataset, models):
    import dataclasses

    prepared = pipeline.prepare(str(tiny_dataset), models.split(","), top_k=2)
    first, second = (c.name for c in prepared.candidates)
    prepared = dataclasses.replace(prepared, pairs=(_pair(first, second, gain=0.05),))
    expected = guided_trials(prepared.candidates, prepared.pairs, MLP)  # no baseline first
    result = pipeline.search(prepared, output_dir=tmp_path, budget=Budget(n_trials=3), space=MLP)
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    ran = sorted(study.trials, key=lambda t: t.number)
    assert [t.params for t in ran[:2]] == expected
    single = pipeline.search(
        prepared,
        output_dir=tmp_path,
        study_name="one",
        budget=Budget(n_trials=2, max_models=1),
        space=MLP,
    )
    # the guided pair is outside a one-model space: only the single is enqueued
    trials = optuna.load_study(study_name="one", storage=single.storage).trials
    assert min(trials, key=lambda t: t.number).params == expected[0]


def test_guided_trials_with_a_linear_head_try_it_first_and_on_a_sparse_source_too():
    from scipy.sparse import csr_matrix

    from autolayer.space import Candidate

    dense = [Candidate(n, (1,), 3, None, None, 1.0, {}) for n in ("a", "b")]
    lexical = Candidate("tfidf", (0,), 1, csr_matrix((4, 5)), csr_matrix((2, 5)), 0.1, {})
    pairs = [
        _pair("a", "b", gain=0.02, accuracy=(0.8, 0.7)),
        _pair("a", "tfidf", gain=0.01, accuracy=(0.8, 0.6)),
    ]
    trials = guided_trials([*dense, lexical], pairs, Space(heads=("mlp", "linear")))
    heads = [(t["models"], t["head"]) for t in trials]
    assert heads == [
        ("a", "linear"),
        ("a + b", "linear"),
        ("a + tfidf", "linear"),
        ("a", "mlp"),
        ("a + b", "mlp"),
        ("a + tfidf", "mlp"),
    ]
    assert all("width" not in t for t in trials if t["head"] == "linear")
    only = guided_trials([*dense, lexical], pairs, Space(heads=("linear",)))
    assert [t["models"] for t in only] == ["a", "a + b", "a + tfidf"]
    # the default space: linear, then MLP, then late fusion (the costliest to train; pairs)
    every = guided_trials([*dense, lexical], pairs, Space(heads=("late", "mlp", "linear")))
    kinds = [next(v for k, v in t.items() if k.startswith("head")) for t in every]
    assert kinds == ["linear"] * 3 + ["mlp"] * 3 + ["late"] * 2
    with pytest.raises(ConfigError, match="heads"):
        Space(heads=("tree",))


def test_a_budget_only_the_linear_head_meets_is_not_refused():
    from autolayer.space import Candidate, LayerCost, check_feasible

    dense = Candidate("a", (1,), 3, np.zeros((4, 1, 384)), None, 1.0, {1: LayerCost(1.0, 1.0)})
    budget = Budget(max_params=5000)  # the smallest MLP head has 164,866 parameters
    check_feasible([dense], budget, Space(heads=("mlp", "linear")), 2, 4)
    with pytest.raises(ConfigError, match="head parameters"):
        check_feasible([dense], budget, MLP, 2, 4)


def test_an_infeasible_budget_names_the_nearest_miss_for_its_own_limit():
    from autolayer.space import Candidate, LayerCost, check_feasible

    fast = LayerCost(latency_ms=1.0, memory_mb=1.0)
    slow = LayerCost(latency_ms=9.0, memory_mb=1.0)
    wide = Candidate("wide", (1,), 3, np.zeros((4, 1, 4096)), None, 1.0, {1: fast})
    narrow = Candidate("narrow", (1,), 3, np.zeros((4, 1, 64)), None, 9.0, {1: slow})
    with pytest.raises(
        ConfigError, match=r"nearest miss \(narrow layer 1, \w+ head\).*head parameters"
    ):
        check_feasible([wide, narrow], Budget(max_params=10), Space(), 2, 4)
    with pytest.raises(ConfigError, match=r"nearest miss \(wide layer 1, \w+ head\).*latency"):
        check_feasible([wide, narrow], Budget(max_latency_ms=0.5), Space(), 2, 4)


def test_a_negative_limit_is_refused():
    with pytest.raises(ConfigError, match="max_latency_ms must be a number >= 0, or None; got -1"):
        Budget(max_latency_ms=-1)


def search_bert(tmp_path, tiny_dataset, tiny_models, top_k, n_trials, heads):
    """The tiny encoder alone, its ``top_k`` layers, searched with ``heads`` (no baseline:
    every trained head counts against ``n_trials``)."""
    prepared = pipeline.prepare(str(tiny_dataset), [str(tiny_models["bert"])], top_k=top_k)
    budget, space = Budget(n_trials=n_trials), Space(heads=heads, baselines=False)
    return prepared, pipeline.search(prepared, output_dir=tmp_path, budget=budget, space=space)


def test_a_repeated_linear_head_is_not_trained_again(home, tmp_path, tiny_dataset, tiny_models):
    from autolayer.selection import REPEAT

    # one model, two layers, linear heads only: two configurations
    prepared, result = search_bert(tmp_path, tiny_dataset, tiny_models, 2, 5, ("linear",))
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    repeats = [t for t in result.trials if REPEAT in t.attrs]
    assert sorted(t.layers for t in complete) == [
        (a,) for a in sorted(prepared.candidates[0].layers)
    ]
    assert {t.attrs[REPEAT] for t in repeats} <= {t.number for t in complete}  # never trained
    assert len(result.trials) == len(complete) + len(repeats)
    assert result.trained == 2
    assert result.notes == (
        "all 2 configurations of the space (heads of one setting each) were tried: 2 of 5 "
        "trials trained",
    )


def test_with_an_mlp_head_the_space_is_never_exhausted(home, tmp_path, tiny_dataset, tiny_models):
    _, result = search_bert(tmp_path, tiny_dataset, tiny_models, 1, 4, ("mlp", "linear"))
    assert result.trained == 4 and result.notes == ()


def test_the_search_trains_for_the_task_prepare_built(home, tmp_path, tiny_dataset, tiny_models):
    """prepare builds the options' task once; the search's heads train for that object,
    not for another built again from its name."""
    from dataclasses import replace

    from autolayer.task import SingleLabel

    losses = []

    class Counted(SingleLabel):
        name = "single_label"

        def loss(self, logits, target):
            losses.append(1)
            return super().loss(logits, target)

    prepared = pipeline.prepare(str(tiny_dataset), [str(tiny_models["bert"])], top_k=1)
    assert type(prepared.task) is SingleLabel
    budget, space = Budget(n_trials=1), Space(heads=("mlp",), max_epochs=1)
    pipeline.search(
        replace(prepared, task=Counted()), output_dir=tmp_path, budget=budget, space=space
    )
    assert losses


def _two_models(rng, n, n_val=0):
    from autolayer.space import Candidate, LayerCost

    costs = {1: LayerCost(0.5, 1.0), 2: LayerCost(1.0, 2.0)}

    def features(rows):
        return rng.normal(size=(rows, 2, 8)).astype("float32")

    return [
        Candidate(name, (1, 2), 3, features(n), features(n_val), 1.0, costs) for name in ("a", "b")
    ]


def test_a_space_with_a_sparse_source_is_finite_under_the_linear_head_only():
    """A sparse source takes the linear head (one setting) as a dense one does; the MLP
    head (a continuous learning rate) never runs out of configurations."""
    from scipy import sparse

    from autolayer.space import SEPARATOR, Candidate, LayerCost, finite_configurations

    a, b = _two_models(np.random.default_rng(0), 4)
    lexical = Candidate("t", (0,), 1, sparse.csr_matrix(np.eye(4)), None, 0.1, {0: LayerCost(0, 1)})
    linear = Space(heads=("linear",))
    assert finite_configurations([a, b], ["a", "b", f"a{SEPARATOR}b"], linear) == 8
    assert finite_configurations([lexical, a], ["t", "a"], linear) == 1 + 2
    assert finite_configurations([lexical], ["t"], Space(heads=("mlp", "linear"))) is None


def test_configurations_an_earlier_budget_excluded_are_tried_when_resumed(tmp_path):
    from autolayer.search import run_search
    from autolayer.task import make_task

    rng = np.random.default_rng(0)
    models = _two_models(rng, 40, 10)
    y, y_val = np.arange(40) % 2, np.arange(10) % 2
    settings = {
        "task": make_task(),
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "study_name": "s",
        "space": Space(heads=("linear",), baselines=False),  # every head trained counts
        "prune": False,
    }
    tight = run_search(models, y, y_val, budget=Budget(n_trials=10, max_latency_ms=1.2), **settings)
    assert tight.trained < 8  # pairs of layer 2 break the latency limit
    loose = run_search(models, y, y_val, budget=Budget(n_trials=10), **settings)
    trained = {(t.models, t.layers) for t in loose.trials if t.state == "COMPLETE"}
    assert len(trained) == 8 and loose.trained == 8 - tight.trained


def test_workers_sharing_a_study_draw_their_own_trials_and_a_seed_still_reproduces(tmp_path):
    from autolayer.search import TrialSeededTPE

    def lr(study):
        return study.ask().suggest_float("lr", 1e-4, 1e-2, log=True)

    storage = f"sqlite:///{tmp_path / 'w.db'}"
    first = optuna.create_study(storage=storage, study_name="w", sampler=TrialSeededTPE(0))
    second = optuna.load_study(storage=storage, study_name="w", sampler=TrialSeededTPE(0))
    a, b = lr(first), lr(second)  # two processes started together: trials 0 and 1
    assert a != b
    again = optuna.create_study(sampler=TrialSeededTPE(0))
    assert lr(again) == a and lr(again) == b  # the same seed, the same trials by number


def test_reading_a_storage_that_is_not_there_never_creates_it(tmp_path):
    from autolayer.storage import missing_sqlite_file
    from autolayer.study import study_pool

    path = tmp_path / "none.db"
    for url in (f"sqlite:///{path}", f"sqlite+pysqlite:///{path}?timeout=60"):
        assert missing_sqlite_file(url) == str(path)
        assert study_pool(url, "s") == ()
    assert not path.exists()
    optuna.create_study(storage=f"sqlite:///{path}", study_name="other")
    assert missing_sqlite_file(f"sqlite+pysqlite:///{path}?timeout=60") is None
    assert study_pool(f"sqlite:///{path}", "s") == ()  # no such study in it


def test_a_resumed_run_gets_draws_of_its_own(tmp_path, one_thread):
    """The cap of 20 draws per trial ends a nearly infeasible search; it counts this run's
    draws, so a resumed run under a looser budget does not stop at once."""
    from autolayer.search import run_search
    from autolayer.task import make_task

    models = _two_models(np.random.default_rng(0), 40, 10)
    y, y_val = np.arange(40) % 2, np.arange(10) % 2
    settings = {
        "task": make_task(),
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "study_name": "s",
        "space": Space(heads=("mlp", "linear"), max_epochs=3, widths=(8,), hidden=8),
        "prune": False,
    }
    tight = run_search(models, y, y_val, budget=Budget(n_trials=6, max_params=20), **settings)
    assert tight.trained < 6 and "120 draws ended the search" in tight.notes[0]
    loose = run_search(models, y, y_val, budget=Budget(n_trials=6), **settings)
    assert loose.trained == 6 - tight.trained and loose.notes == ()


def test_a_study_resumed_by_a_new_process_draws_what_one_run_would_have():
    """Past TPE's random start too: 25 trials in one run, and 12 + 13 with a fresh sampler
    (a resumed run), draw the same values, all different."""
    from autolayer.search import TrialSeededTPE

    def objective(trial):
        x = trial.suggest_float("x", -3, 3)
        return (x - 1) ** 2 + trial.suggest_int("k", 0, 4)

    def draws(study):
        return [t.params for t in study.trials]

    once = optuna.create_study(sampler=TrialSeededTPE(0))
    once.optimize(objective, n_trials=25)
    resumed = optuna.create_study(sampler=TrialSeededTPE(0))
    resumed.optimize(objective, n_trials=12)
    resumed.sampler = TrialSeededTPE(0)
    resumed.optimize(objective, n_trials=13)
    assert draws(once) == draws(resumed)
    assert len({t["x"] for t in draws(once)}) == 25


def _created_by_another_worker(url: str, write) -> threading.Timer:
    """Study "s", created by a worker that started a moment before this one and writes its
    signature (``write``) 0.3 s later."""
    study = optuna.create_study(storage=url, study_name="s", direction="maximize")
    timer = threading.Timer(0.3, write, args=(study,))
    timer.start()
    return timer


def test_a_worker_checks_the_signature_of_a_study_another_just_created(tmp_path):
    from autolayer.search import run_search
    from autolayer.task import make_task

    models = _two_models(np.random.default_rng(0), 40, 10)
    url = f"sqlite:///{tmp_path / 's.db'}"
    other = {"objectives": ["maximize"], "metric": "f1"}
    timer = _created_by_another_worker(url, lambda s: s.set_user_attr("signature", other))
    with pytest.raises(ConfigError, match="differs in its metric"):
        run_search(
            models, np.arange(40) % 2, np.arange(10) % 2, task=make_task(), storage=url,
            study_name="s",
            budget=Budget(n_trials=2), space=Space(heads=("linear",)), prune=False,
        )  # fmt: skip
    timer.join()


def test_guided_trials_are_queued_once_by_workers_starting_together(tmp_path):
    from autolayer.search import run_search
    from autolayer.selection import BASELINE
    from autolayer.space import baseline_trials, space_signature, subsets
    from autolayer.task import make_task

    models, space, budget = _two_models(np.random.default_rng(0), 40, 10), Space(), Budget(1)
    url, guided = f"sqlite:///{tmp_path / 's.db'}", {"models": "a", "layer:a": 2}
    choices = subsets(["a", "b"], budget.max_models)
    signature = {
        "objectives": ["maximize"],
        "metric": "accuracy",
        "search space": space_signature(models, choices, space),
    }

    baselines = baseline_trials(models, space)

    def create(study: optuna.Study) -> None:  # what run_search does for the worker it creates
        for params in baselines:
            study.enqueue_trial(params, user_attrs={BASELINE: True})
        study.enqueue_trial(guided)
        study.set_user_attr("signature", signature)

    timer = _created_by_another_worker(url, create)
    y, y_val = np.arange(40) % 2, np.arange(10) % 2
    run_search(
        models, y, y_val, task=make_task(), storage=url, study_name="s", budget=budget,
        space=space, first=[guided], prune=False,
    )  # fmt: skip
    timer.join()
    queued = optuna.load_study(storage=url, study_name="s").get_trials()
    assert [t.system_attrs.get("fixed_params") for t in queued] == [*baselines, guided]


def test_a_trial_whose_head_diverges_is_pruned_with_a_warning(tmp_path, monkeypatch, caplog):
    """A diverged head (non-finite loss) ends its trial, not the study."""
    from autolayer import search
    from autolayer.errors import DivergedError
    from autolayer.heads.mlp import MLPHead
    from autolayer.task import make_task

    real, calls = MLPHead._fit, []

    def diverges_first(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise DivergedError("the fusion head diverged (its training loss is nan); lower lr")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MLPHead, "_fit", diverges_first)
    models = _two_models(np.random.default_rng(0), 40, 10)
    result = search.run_search(
        models,
        np.arange(40) % 2,
        np.arange(10) % 2,
        task=make_task(),
        storage=f"sqlite:///{tmp_path / 's.db'}",
        study_name="s",
        budget=Budget(n_trials=3),
        space=Space(heads=("mlp",), widths=(8,), hidden=4, max_epochs=2),
        prune=False,
    )
    states = sorted(t.state for t in result.trials)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert "trial 0: the fusion head diverged" in caplog.text


def test_a_trial_records_the_parameters_its_head_class_suggested(tmp_path):
    """The head's full parameters are a trial attribute (what export makes final); its
    cost is the head class's; the options judge it (their metric is the study's)."""
    from autolayer.heads.mlp import MLPHead
    from autolayer.options import Options
    from autolayer.search import run_search
    from autolayer.task import make_task

    models = _two_models(np.random.default_rng(0), 40, 10)
    space = Space(heads=("mlp",), widths=(8,), hidden=4, max_epochs=2, patience=1)
    result = run_search(
        models, np.arange(40) % 2, np.arange(10) % 2, task=make_task(),
        storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s",
        budget=Budget(n_trials=1, max_models=1), space=space, prune=False,
        options=Options(metric="macro_f1", seed=3),
    )  # fmt: skip
    [trial] = result.trials
    assert trial.head == "mlp" and space.lr[0] <= trial.lr <= space.lr[1]
    assert trial.head_params == {
        **{"operator": "concat", "width": 8, "hidden": 4, "dropout": 0.1, "lr": trial.lr},
        **{"batch_size": 100, "epochs": 2, "patience": 1, "weight_decay": 0.0},
    }
    assert trial.attrs["params"] == MLPHead.n_parameters([8], 2, trial.head_params)
    study = optuna.load_study(study_name="s", storage=result.storage)
    assert study.user_attrs["metric"] == "macro_f1"


def test_a_head_registered_by_a_plugin_is_searched_and_never_trained_twice(tmp_path):
    """The search asks the head classes: a kind registered after import is offered, and,
    having finitely many settings, is not trained twice on the same configuration (the
    rule is the head class's, not the linear head's)."""
    from autolayer.heads import HEADS, register_head
    from autolayer.heads.linear import LinearHead
    from autolayer.search import run_search
    from autolayer.selection import REPEAT
    from autolayer.task import make_task

    register_head("toy")(type("Toy", (LinearHead,), {}))
    try:
        result = run_search(
            _two_models(np.random.default_rng(0), 40, 10), np.arange(40) % 2,
            np.arange(10) % 2, task=make_task(), storage=f"sqlite:///{tmp_path / 's.db'}",
            study_name="s",
            budget=Budget(n_trials=10), space=Space(heads=("toy",)), prune=False,
        )  # fmt: skip
    finally:
        HEADS.pop("toy")
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(complete) == 8 and {t.head for t in complete} == {"toy"}
    assert all(t.head_params == {} for t in complete)
    assert any(REPEAT in t.attrs for t in result.trials) and result.trained == 8


def test_cost_attributes_are_stored_unrounded():
    """A configuration exactly at the latency budget must be recorded at it, not above."""
    cost = Cost(latency_ms=0.056255625, memory_mb=1.23456789, params=10, fused_dim=4)
    assert cost.as_dict()["latency_ms"] == 0.056255625
    assert cost.as_dict()["memory_mb"] == 1.23456789

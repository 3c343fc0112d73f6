"""The few-label anchor: a sentence encoder's last layer, recommended unless beaten clearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import optuna
import pytest

from autolayer import anchor
from autolayer.budgets import Constraint
from autolayer.data import load_dataset
from autolayer.errors import ConfigError
from autolayer.selection import TrialSummary, recommended
from tests.conftest import run, write_jsonl


def trial(number, value, models=("m",), layers=(6,), head="linear", n_rows=100):
    attrs = {"n_rows": n_rows, "params": 100}
    return TrialSummary(number, "COMPLETE", (value,), models, layers, attrs, head)


def ranked(*trials):
    return sorted(trials, key=lambda t: -t.values[0])


CONTEXT = {"options": {"anchor": "m"}, "models": {"m": {"n_hidden_states": 7}}}


def test_the_anchor_stands_unless_a_trial_beats_it_clearly():
    base = trial(0, 0.70)
    # on 100 rows 0.78 - 0.70 is 1.3 errors (Agresti-Caffo: 79/102 vs 71/102, error 0.062)
    close = trial(1, 0.78, layers=(3,))
    best, why = recommended(ranked(base, close), CONTEXT)
    assert best.number == 0  # one comparison: z = 1.64 at alpha 0.05
    assert "no trial beat it by 1.6 standard errors" in why and "#1" in why
    clear = trial(2, 0.85, layers=(3,))  # 2.5 errors > 1.96 (two comparisons)
    best, why = recommended(ranked(base, close, clear), CONTEXT)
    assert best.number == 2 and "beat the anchor" in why
    few = [trial(0, 0.70, n_rows=16), trial(2, 0.85, layers=(3,), n_rows=16)]
    assert recommended(ranked(*few), CONTEXT)[0].number == 0  # 16 rows: 0.15 is 1.0 error
    # 16/16 by luck among 30 trials: 2.6 errors (Wald's error, zero at 1.0, said 3.1)
    lucky = [trial(0, 0.63, n_rows=16), trial(3, 1.0, layers=(3,), n_rows=16)]
    lucky += [trial(10 + i, 0.5, layers=(4,), n_rows=16) for i in range(28)]
    assert recommended(ranked(*lucky), CONTEXT)[0].number == 0


def test_more_trials_need_a_wider_margin():
    base, clear = trial(0, 0.70), trial(2, 0.85, layers=(3,))  # 2.5 errors
    others = [trial(10 + i, 0.5, layers=(4,)) for i in range(29)]  # 30 comparisons: z = 2.9
    best, why = recommended(ranked(base, clear, *others), CONTEXT)
    assert best.number == 0 and "2.9 standard errors" in why


def test_the_anchor_scoring_best_is_said():
    best, why = recommended(ranked(trial(0, 0.9), trial(1, 0.8, layers=(3,))), CONTEXT)
    assert best.number == 0 and "scored best" in why


def test_without_the_anchors_trial_the_one_standard_error_rule_applies():
    other = trial(0, 0.9, layers=(3,))
    best, why = recommended([other], CONTEXT)
    assert best.number == 0 and why == ""
    assert anchor.against_anchor([other], "m", 6) is None
    mlp = trial(1, 0.9, head="mlp")  # the anchor's layer, another head
    assert anchor.against_anchor([mlp], "m", 6) is None


@pytest.fixture()
def sentence_encoder(tiny_models, tmp_path):
    """The tiny encoder made a sentence-transformers folder (its modules.json)."""
    folder = tmp_path / "sbert"
    shutil.copytree(tiny_models["bert"], folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "type": "Transformer"}]))
    return str(folder)


def test_auto_is_the_pools_sentence_encoder(sentence_encoder, tiny_models):
    from autolayer.candidates import resolve_models
    from autolayer.options import Options

    def pool(*models: str) -> dict:
        return resolve_models(models, Options())

    plain = str(tiny_models["bert"])
    assert anchor.resolve("auto", pool(plain, sentence_encoder)) == sentence_encoder
    assert anchor.resolve("auto", pool(plain, str(tiny_models["llama"]))) is None
    assert anchor.resolve("none", pool(sentence_encoder)) is None
    assert anchor.resolve(plain, pool(plain, sentence_encoder)) == plain
    # another spelling of the same folder is the pool's model, as the pool spells it
    assert anchor.resolve(sentence_encoder + "/", pool(plain, sentence_encoder)) == sentence_encoder
    with pytest.raises(ConfigError, match="not one of the models"):
        anchor.resolve("mpnet", pool(plain))
    with pytest.raises(ConfigError, match="sparse"):
        anchor.resolve("tfidf", pool(plain, "tfidf"))


def test_few_labels_search_the_anchors_last_layer_first(
    tmp_path, home, tiny_dataset, tiny_models, sentence_encoder, one_thread
):
    from autolayer import pipeline
    from autolayer.budgets import Budget
    from autolayer.options import Options

    drawn, options = pipeline.restrict(
        load_dataset(tiny_dataset), Options(max_length=12), labels_per_class=6
    )
    llama = str(tiny_models["llama"])
    # prepared without the budget, so no early skip: both models are searched
    prepared = pipeline.prepare(drawn, [llama, sentence_encoder], options=options, top_k=1)
    result = pipeline.search(prepared, output_dir=tmp_path / "out", budget=Budget(n_trials=4))
    first = min(result.trials, key=lambda t: t.number)
    assert first.models == (sentence_encoder,) and first.head == "linear"
    assert first.attrs["n_rows"] == 12  # every drawn row is held out once: the rule's n
    assert first.layers == (4,)  # the tiny encoder's last layer, whatever its probe rank
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    assert study.user_attrs["context"]["options"]["anchor"] == sentence_encoder
    reports = {m.model: m for m in prepared.reports}
    top = int(reports[sentence_encoder].scores.ranking("accuracy")[0])
    assert reports[sentence_encoder].searched == tuple(dict.fromkeys((top, 4)))
    assert len(reports[llama].searched) == 1


def test_cli_report_says_why_the_anchor_was_chosen(
    capsys, tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    llama = str(tiny_models["llama"])
    code, out, err = run(
        capsys,
        *("recommend", "-d", perfect, "--models", f"{llama},{sentence_encoder}"),
        *("--labels-per-class", 8, "--n-trials", 3, "--max-length", 8, "-o", tmp_path / "o"),
    )
    assert code == 0, err
    said = " ".join(out.split())
    assert "the search stopped after it" in said and f"dropped {llama}" in said
    assert "not extracted" in said


def test_an_anchor_needs_cross_validation(tmp_path, home, tiny_dataset, tiny_models):
    from autolayer import pipeline

    with pytest.raises(ConfigError, match="needs cross-validation"):
        pipeline.prepare(tiny_dataset, [str(tiny_models["bert"])], anchor="x")


def test_cli_unknown_anchor_is_one_line(capsys, tmp_path, home, tiny_dataset, tiny_models):
    code, out, err = run(
        capsys,
        *("recommend", "-d", tiny_dataset, "--models", tiny_models["bert"]),
        *("--labels-per-class", 6, "--anchor", "mpnet", "-o", tmp_path / "o"),
    )
    assert code == 2 and "--anchor 'mpnet' is not one of the models" in err
    assert "Traceback" not in err + out


def test_unbeatable_is_when_not_even_a_perfect_score_would_win():
    assert anchor.unbeatable(0.75, 16, 30)  # 17/18 vs 13/18: 1.9 errors < 2.92
    assert not anchor.unbeatable(0.5, 16, 30)  # 17/18 vs 9/18: 3.4 errors
    assert not anchor.unbeatable(0.75, 400, 30)  # 401/402 vs 301/402: 11 errors
    assert anchor.unbeatable(1.0, 400, 30)
    assert anchor.difference_z(0.9, 0.5, 40) == pytest.approx(
        (37 / 42 - 21 / 42) / ((37 * 5 + 21 * 21) / 42**3) ** 0.5
    )


# one text per class, repeated: the anchor separates them perfectly in every fold
PERFECT = [{"text": ("good", "bad")[i % 2], "label": ("pos", "neg")[i % 2]} for i in range(40)]


@pytest.fixture()
def perfect(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", PERFECT)
    return tmp_path / "d"


def recommend_on(perfect, tmp_path, models, **kwargs):
    from autolayer import pipeline

    settings = {"labels_per_class": 8, "max_length": 8, **kwargs}
    return pipeline.recommend(
        perfect, models, output_dir=tmp_path / "out", budget=settings.pop("budget"), **settings
    )


def ran(result) -> list[int]:
    return [t.number for t in result.trials if t.state != "WAITING"]  # guided ones wait


def test_the_search_stops_after_an_anchor_no_trial_could_beat(
    tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    from autolayer.budgets import Budget

    llama = str(tiny_models["llama"])
    rec = recommend_on(perfect, tmp_path, [llama, sentence_encoder], budget=Budget(n_trials=10))
    assert ran(rec.search) == [0]
    assert rec.search.best.models == (sentence_encoder,) and rec.search.best.value == 1.0
    assert "search stopped after it" in rec.search.why
    assert "not extracted" in rec.dropped[llama]  # decided before the decoder ever ran
    assert [r.model for r in rec.reports] == [sentence_encoder]
    cached = [json.loads(m.read_text())["model"] for m in home.rglob("meta.json")]
    assert cached and all("llama" not in name for name in cached)


def test_a_resumed_stopped_study_trains_nothing_more(
    tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    from autolayer import pipeline
    from autolayer.budgets import Budget
    from autolayer.options import Options
    from autolayer.study import default_study_name

    drawn, options = pipeline.restrict(
        load_dataset(perfect), Options(max_length=8), labels_per_class=8
    )
    # prepared without the budget: both models extracted, so the search alone must stop
    prepared = pipeline.prepare(
        drawn, [str(tiny_models["llama"]), sentence_encoder], options=options
    )
    first = pipeline.search(prepared, output_dir=tmp_path / "o", budget=Budget(n_trials=10))
    again = pipeline.search(prepared, output_dir=tmp_path / "o", budget=Budget(n_trials=10))
    assert ran(first) == ran(again) == [0]
    assert (first.trained, again.trained) == (1, 0)
    assert again.study_name == first.study_name and "stopped after it" in again.why
    # the same trials under another rule are another study: by name, or refused by identity
    plain = pipeline.prepare(
        drawn, [str(tiny_models["llama"]), sentence_encoder], options=replace_anchor(options)
    )
    assert default_study_name(drawn, plain.pool, plain.options) != first.study_name
    with pytest.raises(ConfigError, match="anchor"):
        pipeline.search(
            plain, output_dir=tmp_path / "o", budget=Budget(n_trials=2), study_name=first.study_name
        )


def replace_anchor(options):
    from dataclasses import replace

    return replace(options, anchor="none")


def test_multi_objective_searches_every_model(
    tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    from autolayer.budgets import Budget

    llama = str(tiny_models["llama"])
    rec = recommend_on(
        perfect,
        tmp_path,
        [llama, sentence_encoder],
        budget=Budget(n_trials=3),
        multi_objective=True,
    )
    from autolayer.selection import BASELINE

    assert llama not in rec.dropped and llama in [r.model for r in rec.reports]
    # no stop after the anchor: a Pareto front has room (the baselines are outside the budget)
    counted = [t for t in rec.search.trials if t.state != "WAITING" and BASELINE not in t.attrs]
    assert len(counted) == 3


class MinParams(Constraint):
    """A test limit only the anchor (the smallest head, linear) can break."""

    name = "min_params"
    help = "test"
    measure = staticmethod(lambda cost: cost.params)

    @classmethod
    def violation(cls, limit, cost):
        return None if cost.params >= limit else f"params {cost.params} < {limit}"


def test_an_anchor_the_budget_excludes_spares_no_model(
    tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread, monkeypatch
):
    from autolayer.budgets import CONSTRAINTS, Budget

    monkeypatch.setitem(CONSTRAINTS, MinParams.name, MinParams)
    llama = str(tiny_models["llama"])
    budget = Budget(n_trials=3, min_params=200)  # the anchor's linear head has (32 + 1) × 2
    rec = recommend_on(perfect, tmp_path, [llama, sentence_encoder], budget=budget)
    assert llama not in rec.dropped and llama in [r.model for r in rec.reports]
    assert rec.search.best.head == "mlp" and "anchor" not in rec.search.why


def anchor_study(score: float, latency_ms: float = 5.0) -> optuna.Study:
    """An in-memory study holding only the anchor's finished trial (16 held-out rows)."""
    from optuna.distributions import CategoricalDistribution

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("context", CONTEXT)
    costs = {"latency_ms": latency_ms, "memory_mb": 10.0, "params": 66, "fused_dim": 32}
    study.add_trial(
        optuna.trial.create_trial(
            params={"models": "m", "layer:m": 6, "head": "linear"},
            distributions={
                "models": CategoricalDistribution(["m"]),
                "layer:m": CategoricalDistribution([6]),
                "head": CategoricalDistribution(["mlp", "linear"]),
            },
            value=score,
            user_attrs={"n_rows": 16, **costs},
        )
    )
    return study


def test_an_unbeatable_anchor_is_decided_afresh_for_each_budget():
    from autolayer.budgets import Budget
    from autolayer.search import anchor_unbeatable
    from autolayer.selection import UNBEATABLE

    study = anchor_study(0.6)  # out of reach of 30 trials (z 2.9), not of 10 (z 2.5)
    assert anchor_unbeatable(study, Budget(n_trials=30)) and study.user_attrs[UNBEATABLE]
    assert not anchor_unbeatable(study, Budget(n_trials=10))  # a resume with fewer trials
    assert study.user_attrs[UNBEATABLE] is False  # the report no longer says it stopped
    assert not anchor_unbeatable(study, Budget(n_trials=30, max_latency_ms=4.0))
    assert anchor_unbeatable(study, Budget(n_trials=30, max_latency_ms=5.0))


def test_no_early_stop_with_a_timeout_or_without_the_linear_head():
    from autolayer.budgets import Budget
    from autolayer.search import anchor_can_stop
    from autolayer.space import Space

    linear = Space(heads=("mlp", "linear"))
    assert anchor_can_stop(Budget(), linear)
    assert not anchor_can_stop(Budget(timeout=60), linear)  # fewer trials may run
    assert not anchor_can_stop(Budget(), Space(heads=("mlp",)))
    assert not anchor_can_stop(Budget(), linear, multi_objective=True)


def test_cli_search_skips_like_recommend(
    capsys, tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    llama = str(tiny_models["llama"])
    args = ("-d", perfect, "--models", f"{llama},{sentence_encoder}", "-o", tmp_path / "o")
    args += ("--labels-per-class", 8, "--n-trials", 3, "--max-length", 8)
    code, out, err = run(capsys, "search", *args)
    assert code == 0, err
    assert "not extracted" in " ".join(out.split())
    code, out, err = run(capsys, "recommend", *args)
    assert code == 0, err
    storage = f"sqlite:///{tmp_path / 'o' / 'study.db'}"
    [summary] = optuna.get_all_study_summaries(storage)  # the same command, the same study
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [t.number for t in study.trials if t.state.name != "WAITING"] == [0]


def test_a_named_study_of_the_whole_pool_resumes_where_the_skip_would_fire(
    tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    """A budget with a timeout searches every model; the same study, resumed without it,
    must keep its pool rather than skip the others and be refused as another pool."""
    from autolayer.budgets import Budget

    llama = str(tiny_models["llama"])
    first = recommend_on(
        perfect,
        tmp_path,
        [llama, sentence_encoder],
        budget=Budget(n_trials=2, timeout=600),
        study_name="S",
    )
    assert llama in {m for t in first.search.trials for m in t.models}
    again = recommend_on(
        perfect,
        tmp_path,
        [llama, sentence_encoder],
        budget=Budget(n_trials=3),
        study_name="S",
        overwrite=True,
    )
    assert again.search.study_name == "S" and llama not in again.dropped
    assert {r.model for r in again.reports} == {llama, sentence_encoder}


def test_a_named_study_of_the_anchor_alone_resumes_with_it_alone(
    tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    """The other way round: a study the skip left with the anchor alone, resumed under a
    budget that allows no skip, is not refused after extracting every model."""
    from autolayer.budgets import Budget

    llama = str(tiny_models["llama"])
    pool = [llama, sentence_encoder]
    first = recommend_on(perfect, tmp_path, pool, budget=Budget(n_trials=3), study_name="A")
    assert "not extracted" in first.dropped[llama]
    again = recommend_on(
        perfect,
        tmp_path,
        pool,
        budget=Budget(n_trials=3, timeout=600),
        study_name="A",
        overwrite=True,
    )
    assert "holds the anchor alone" in again.dropped[llama]
    assert [r.model for r in again.reports] == [sentence_encoder]


@pytest.mark.parametrize("n", [8, 16, 30, 64, 128])
def test_agresti_caffo_is_never_bolder_than_wald(n):
    """The README says every draw whose anchor stood under Wald's rule keeps it under
    Agresti and Caffo's: that holds only if their z is never the larger, on any scores."""
    scores = np.arange(n + 1) / n
    for i, a in enumerate(scores):
        for b in scores[:i]:
            wald_variance = (a * (1 - a) + b * (1 - b)) / n
            wald = np.inf if wald_variance == 0 else (a - b) / np.sqrt(wald_variance)
            assert anchor.difference_z(a, b, n) <= wald + 1e-12, (a, b)


def test_an_anchor_an_earlier_budget_excluded_runs_when_the_study_resumes(tmp_path, one_thread):
    import numpy as np

    from autolayer.anchor import is_anchor
    from autolayer.budgets import Budget
    from autolayer.probe import folds
    from autolayer.search import run_search
    from autolayer.space import Candidate, LayerCost, Space
    from autolayer.task import make_task

    rng = np.random.default_rng(0)
    y = np.arange(16) % 2
    costs = {1: LayerCost(0.5, 1.0), 2: LayerCost(1.0, 2.0)}
    pool = [
        Candidate(m, (1, 2), 3, rng.normal(size=(16, 2, 8)).astype("float32"), y[:0], 1.0, costs)
        for m in ("a", "b")
    ]
    context = {"options": {"anchor": "a"}, "models": {m: {"n_hidden_states": 3} for m in "ab"}}
    settings = {
        "task": make_task(),
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "study_name": "s",
        "space": Space(heads=("mlp", "linear"), max_epochs=3, widths=(8,), hidden=8),
        "prune": False,
        "context": context,
        "first": [{**anchor.trial_params("a", 3), "head": anchor.HEAD}],
        "folds": folds(y, 4, 0),
    }
    tight = run_search(pool, y, y[:0], budget=Budget(n_trials=3, max_latency_ms=0.9), **settings)
    assert "breaks the budget" in tight.notes[0]
    loose = run_search(pool, y, y[:0], budget=Budget(n_trials=6), **settings)
    assert any(is_anchor(t, "a", 2) and t.state == "COMPLETE" for t in loose.trials)
    assert "the anchor" in loose.why and loose.notes == ()
    # queued again by the resumed run, not drawn by chance (TPE may draw it too)
    study = optuna.load_study(study_name="s", storage=settings["storage"])
    queued = [t for t in study.trials if t.system_attrs.get("fixed_params") == settings["first"][0]]
    assert [t.state.name for t in queued] == ["PRUNED", "COMPLETE"]


def test_a_study_that_keeps_its_anchor_says_so_in_its_summary():
    from optuna.distributions import CategoricalDistribution

    from autolayer.selection import collect

    def other(value: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            params={"models": "m", "layer:m": 3, "head": "linear"},
            distributions={
                "models": CategoricalDistribution(["m"]),
                "layer:m": CategoricalDistribution([3, 6]),
                "head": CategoricalDistribution(["mlp", "linear"]),
            },
            value=value,
            user_attrs={"n_rows": 16, "latency_ms": 5.0, "memory_mb": 10.0, "params": 66},
        )

    study = anchor_study(0.6)
    study.add_trial(other(0.7))  # 1.0 standard error above the anchor on 16 rows
    result = collect(study, "sqlite://")
    assert result.best.number == 0 and result.anchor
    study.add_trial(other(1.0))  # 2.8 errors: clearly
    result = collect(study, "sqlite://")
    assert result.best.number == 2 and not result.anchor


def test_the_default_study_name_is_not_decided_by_the_budget(
    tmp_path, home, tiny_models, sentence_encoder, perfect, one_thread
):
    """The anchor's early skip depends on the budget; the default study's name must not,
    or a re-run with more trials (or a timeout) silently starts another study."""
    from autolayer.budgets import Budget

    pool = [str(tiny_models["llama"]), sentence_encoder]
    first = recommend_on(perfect, tmp_path, pool, budget=Budget(n_trials=3))
    assert "not extracted" in first.dropped[pool[0]]
    again = recommend_on(
        perfect, tmp_path, pool, budget=Budget(n_trials=5, timeout=600), overwrite=True
    )
    assert again.search.study_name == first.search.study_name
    assert "holds the anchor alone" in again.dropped[pool[0]]


def test_the_default_study_name_of_a_plain_search_is_made_of_its_data_and_models(
    tiny_dataset, tiny_models
):
    """A plain search's study is named by its data and models alone (cross-validation
    adds its folds): a run's other settings are checked when it resumes, not named."""
    from autolayer.options import Options
    from autolayer.study import default_study_name

    data, bert, llama = (
        load_dataset(tiny_dataset),
        str(tiny_models["bert"]),
        str(tiny_models["llama"]),
    )
    name = default_study_name(data, [bert], Options())
    assert name.startswith("autolayer-tiny-")
    assert default_study_name(data, [bert], Options(seed=3, metric="macro_f1")) == name
    assert default_study_name(data, [llama], Options()) != name
    assert default_study_name(data, [bert], Options(cv_folds=2)) != name


def test_a_space_of_fewer_configurations_than_trials_needs_a_smaller_margin():
    """Two linear heads are two chances to beat the anchor by luck, whatever --n-trials."""
    from autolayer.budgets import Budget
    from autolayer.candidates import anchor_budget
    from autolayer.search import anchor_unbeatable
    from autolayer.space import Space

    assert anchor.unbeatable(0.6, 16, 30)  # 2.8 errors at most < 2.9 (29 comparisons)
    assert not anchor.unbeatable(0.6, 16, 30, configurations=2)  # > 1.6 (one comparison)
    study = anchor_study(0.6)
    assert anchor_unbeatable(study, Budget(n_trials=30))
    assert not anchor_unbeatable(study, Budget(n_trials=30), finite=2)
    # before extraction the space's size is unknown: no early skip for linear heads only
    assert anchor_budget(Budget(), Space(heads=("mlp", "linear"))) is not None
    assert anchor_budget(Budget(), Space(heads=("linear",))) is None

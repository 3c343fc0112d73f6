"""Multi-fidelity preparation: screen every model on a sample, drop the clearly worse,
extract the rest only for survivors and only up to their kept layers."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from autolayer import pipeline
from autolayer.complementarity import PairEstimate
from autolayer.errors import ConfigError
from autolayer.fidelity import Fidelity, select
from autolayer.probe import LayerScores
from autolayer.sources import SOURCES, FeatureSource, register_source
from tests.conftest import run, write_jsonl

CUES = {"good": 0, "great": 0, "fun": 0, "bad": 1, "awful": 1, "dull": 1}


class _Toy(FeatureSource):
    """``cues``: counts of the sentiment words (informative); ``noise``: a hash of the text."""

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec in ("cues", "noise")

    @property
    def identity(self) -> str:
        return self.spec

    @property
    def n_states(self) -> int:
        return 3

    @property
    def width(self) -> int:
        return 4

    def embed(self, texts, layers, *, progress=None, **_settings) -> np.ndarray:
        out = np.zeros((len(texts), 3, 4), dtype=np.float32)
        for row, text in enumerate(texts):
            if self.spec == "cues":
                for word in text.split():
                    if word in CUES:
                        out[row, :, CUES[word]] += 1
            else:
                seed = int(hashlib.md5(text.encode()).hexdigest()[:8], 16)
                out[row] = np.random.default_rng(seed).normal(size=(3, 4))
        return out[:, list(layers)]

    def parameters(self, layer: int) -> int:
        return 0


@pytest.fixture()
def toys():
    register_source("toy")(_Toy)
    yield
    SOURCES.pop("toy")


@pytest.fixture()
def reviews(tmp_path):
    """120 train rows (every one carries a cue word) and 20 test rows."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(140):
        label = "pos" if i % 2 else "neg"
        cue = rng.choice(["good", "great", "fun"] if label == "pos" else ["bad", "awful", "dull"])
        filler = rng.choice(["the", "a", "movie", "film", "plot", "story"], size=rng.integers(1, 6))
        rows.append({"text": " ".join([*filler, cue, str(i)]), "label": label})
    write_jsonl(tmp_path / "reviews" / "train.jsonl", rows[:120])
    write_jsonl(tmp_path / "reviews" / "test.jsonl", rows[120:])
    return tmp_path / "reviews"


def _scores(mean: float, std: float, n_states: int = 3) -> LayerScores:
    acc = np.full(n_states, mean - 0.1)
    acc[1] = mean
    spread = np.full(n_states, std)
    return LayerScores(acc, spread, acc, spread, n_folds=4, n_examples=100)


def test_only_a_model_clearly_below_the_leader_is_dropped():
    screens = {
        "leader": _scores(0.90, 0.02),
        "close": _scores(0.86, 0.04),  # intervals overlap: kept
        "weak": _scores(0.55, 0.02),  # far below on both sides: dropped
    }
    kept, dropped = select(screens, "accuracy", Fidelity(keep_at_least=1))
    assert kept == ["leader", "close"] and list(dropped) == ["weak"]
    assert "standard errors below" in dropped["weak"]


def test_the_best_few_are_kept_however_far_below_so_a_pair_can_be_fused():
    screens = {"leader": _scores(0.90, 0.02), "partner": _scores(0.60, 0.02)}
    assert select(screens, "accuracy", Fidelity(keep_at_least=2)) == (["leader", "partner"], {})
    assert list(select(screens, "accuracy", Fidelity(keep_at_least=1))[1]) == ["partner"]


def _pair(a: str, b: str, gain: float, se: float = 0.01) -> PairEstimate:
    return PairEstimate((a, b), (0.9, 0.6), 0.9 + gain, gain, se, 0.1, 0.3, 0.05, 0.2, 400)


def test_a_weaker_model_that_complements_a_survivor_is_kept():
    screens = {
        "leader": _scores(0.90, 0.02),
        "partner": _scores(0.88, 0.02),
        "weak": _scores(0.55, 0.02),
        "weaker": _scores(0.50, 0.02),
    }
    fidelity = Fidelity(keep_at_least=1)
    assert select(screens, "accuracy", fidelity)[0] == ["leader", "partner"]
    helps = [_pair("weak", "partner", gain=0.03)]  # 3 standard errors above the partner
    assert select(screens, "accuracy", fidelity, helps)[0] == ["leader", "partner", "weak"]
    barely = [_pair("leader", "weak", gain=0.015)]  # within 2 standard errors: no evidence
    assert "weak" in select(screens, "accuracy", fidelity, barely)[1]
    # complementing a model that is itself dropped saves neither, in whatever order the
    # pairs come (a rescued model does not rescue another)
    chain = [_pair("weaker", "weak", gain=0.2), _pair("weak", "partner", gain=0.03)]
    for pairs in (chain, chain[::-1]):
        assert select(screens, "accuracy", fidelity, pairs)[0] == ["leader", "partner", "weak"]


def test_screen_select_complete(home, toys, reviews, tiny_models):
    bert = str(tiny_models["bert"])
    fidelity = Fidelity(screen_size=32, keep_at_least=1, n_folds=4)
    prepared = pipeline.prepare(str(reviews), ["cues", "noise", bert], top_k=2, fidelity=fidelity)
    assert "noise" in prepared.dropped  # noise complements nothing either
    assert {p.models for p in prepared.pairs} == {
        ("cues", "noise"),
        ("cues", bert),
        ("noise", bert),
    }
    assert all(p.n_examples == 32 for p in prepared.pairs)  # estimated on the screen
    names = [c.name for c in prepared.candidates]
    assert names[0] == "cues" and "noise" not in names
    stages = {s.name: s for s in prepared.stages}
    assert list(stages) == ["screen", "select", "complete"]
    n_train, n_val = len(prepared.y_train), len(prepared.y_val)
    assert n_train + n_val == 120
    # screened: every layer of the 3 models on 32 rows; completed: the other rows, survivors,
    # top-2 layers each (toys' states 3, bert's 5)
    assert stages["screen"].texts_layers == 32 * (3 + 3 + 5)
    assert stages["complete"].texts_layers == (120 - 32) * 2 * len(names)
    exhaustive = pipeline.prepare(str(reviews), names, top_k=2)
    assert [p.models for p in exhaustive.pairs] == list(itertools.combinations(names, 2))
    for quick, full in zip(prepared.candidates, exhaustive.candidates, strict=True):
        for layer in quick.layers:
            if layer in full.layers:  # the same features, however they were extracted
                np.testing.assert_allclose(
                    quick.features(layer, "train"), full.features(layer, "train"), atol=1e-5
                )
                np.testing.assert_allclose(
                    quick.features(layer, "val"), full.features(layer, "val"), atol=1e-5
                )


def test_a_split_extracted_whole_costs_the_screen_and_completion_nothing(
    home, reviews, tiny_models
):
    models = [str(tiny_models["bert"]), str(tiny_models["llama"])]
    exhaustive = pipeline.prepare(str(reviews), models, top_k=2)
    fidelity = Fidelity(screen_size=32, keep_at_least=2, n_folds=4)
    quick = pipeline.prepare(str(reviews), models, top_k=2, fidelity=fidelity)
    assert {s.name: s.texts_layers for s in quick.stages} == {
        "screen": 0,
        "select": 0,
        "complete": 0,
    }
    for fast, full in zip(quick.candidates, exhaustive.candidates, strict=True):
        assert set(fast.layers) & set(full.layers)
        for layer in set(fast.layers) & set(full.layers):
            for split in ("train", "val"):
                np.testing.assert_array_equal(
                    fast.features(layer, split), full.features(layer, split)
                )


def test_completion_runs_each_backbone_only_up_to_its_deepest_kept_layer(
    home, reviews, tiny_models, monkeypatch
):
    from autolayer.sources import transformer

    built = []
    original = transformer.Backbone.__init__

    def recording(self, source, layers=None, **kwargs):
        original(self, source, layers, **kwargs)
        built.append(self.layers)

    monkeypatch.setattr(transformer.Backbone, "__init__", recording)
    fidelity = Fidelity(screen_size=32, n_folds=4)
    prepared = pipeline.prepare(
        str(reviews), [str(tiny_models["llama"])], top_k=2, fidelity=fidelity
    )
    [candidate] = prepared.candidates
    assert built == [(0, 1, 2, 3, 4), tuple(sorted(candidate.layers))]


def test_a_screen_too_small_to_cross_validate_names_the_limit(capsys, home, reviews, tiny_models):
    code, _, err = run(
        capsys, "recommend", "-d", reviews, "--models", tiny_models["bert"], "--screen-size", "6"
    )
    assert code == ConfigError.exit_code
    assert "screen-size 6 is too small" in err and "Traceback" not in err
    assert "(or pass --exhaustive)" in err, err
    with pytest.raises(ConfigError) as caught:
        Fidelity(screen_size=6).check(100, 2)
    assert "(or pass fidelity=None)" in str(caught.value), caught.value


def test_recommend_reports_the_cost_of_each_stage(capsys, home, tmp_path, reviews, models):
    code, out, err = run(
        capsys,
        "recommend",
        "-d",
        reviews,
        "--models",
        models,
        "--screen-size",
        "40",
        "--n-trials",
        "2",
        "--max-train-samples",
        "100",
        "-o",
        tmp_path / "out",
    )
    assert code == 0, err
    assert "cost by stage" in out
    for stage in ("screen", "select", "complete", "search"):
        assert stage in out

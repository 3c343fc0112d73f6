"""Extending autolayer from outside the package: a fusion operator, a feature source, a
budget, a head and a task, each one class registered by name, run through a real search,
export, apply and predict (the README's "Extending autolayer" section shows the same)."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

import autolayer
from autolayer import pipeline
from autolayer.budgets import CONSTRAINTS, Budget, Constraint, register_constraint
from autolayer.classifier import FusionTextClassifier
from autolayer.config import load_config
from autolayer.errors import ConfigError
from autolayer.fusion import OPERATORS, FusionOperator, register
from autolayer.heads import HEADS, Head, HeadFit, register_head
from autolayer.options import Options
from autolayer.sources import SOURCES, FeatureSource, make_source, register_source
from autolayer.space import Space
from autolayer.study import study_context
from autolayer.task import TASKS, SingleLabel, register_task
from tests.conftest import run

PACKAGE = Path(autolayer.__file__).parent


class HashedWords(FeatureSource):
    """``hash:D``: words hashed into D buckets; state 0 counts them, state 1 normalises."""

    @classmethod
    def accepts(cls, spec: str) -> bool:
        return spec.startswith("hash:")

    @property
    def identity(self) -> str:
        return hashlib.sha256(self.spec.encode()).hexdigest()[:16]

    @property
    def n_states(self) -> int:
        return 2

    @property
    def width(self) -> int:
        return int(self.spec.split(":")[1])

    def embed(self, texts, layers, *, progress=None, **_settings) -> np.ndarray:
        counts = np.zeros((len(texts), self.width), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                counts[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.width] += 1
        states = [counts, counts / np.maximum(counts.sum(1, keepdims=True), 1)]
        if progress:
            progress(len(texts))
        return np.stack([states[i] for i in layers], axis=1)

    def parameters(self, layer: int) -> int:
        return 0


class Maximum(FusionOperator):
    """``z = max_i h_i`` (element-wise) → ``[B, d]``."""

    def forward(self, hs):
        return torch.stack(hs).max(dim=0).values


class MaxFusedDim(Constraint):
    """Width of the fused vector the head reads."""

    name = "max_fused_dim"
    help = "Width of the fused vector, at most."
    kind = int

    @staticmethod
    def measure(cost) -> float:
        return cost.fused_dim


@pytest.fixture()
def plugins():
    """Register the three toys, and remove them again so other tests see the stock set."""
    register_source("hashed-words")(HashedWords)
    register("maximum")(Maximum)
    register_constraint(MaxFusedDim)
    yield
    SOURCES.pop("hashed-words")
    OPERATORS.pop("maximum")
    CONSTRAINTS.pop("max_fused_dim")


def test_an_operator_a_source_and_a_budget_plug_in_from_outside(
    plugins, home, tmp_path, tiny_models, tiny_dataset
):
    assert isinstance(make_source("hash:16"), HashedWords)
    assert "maximum" in Space().operator_names()  # registered after import, searched anyway
    bert = str(tiny_models["bert"])
    prepared = pipeline.prepare(str(tiny_dataset), ["hash:16", bert], top_k=2)
    # The first trial fuses the toy source with the encoder by the toy operator.
    storage = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    (tmp_path / "out").mkdir()
    layers = {f"layer:{c.name}": c.layers[0] for c in prepared.candidates}
    first = {"models": f"hash:16 + {bert}", **layers}
    study = optuna.create_study(storage=storage, study_name="plug", direction="maximize")
    study.enqueue_trial({**first, "head": "mlp", "operator": "maximum", "width": 16, "lr": 3e-3})
    budget = Budget(n_trials=8, max_fused_dim=32)
    result = pipeline.search(
        prepared,
        output_dir=tmp_path / "out",
        budget=budget,
        space=Space(widths=(16, 64)),
        study_name="plug",
    )
    fused = [t for t in result.trials if t.number == 0][0]
    assert fused.state == "COMPLETE" and fused.operator == "maximum"
    assert fused.models == ("hash:16", bert)
    infeasible = [t for t in result.trials if "infeasible" in t.attrs]
    for trial in result.trials:
        if trial in infeasible:  # width 64, or a linear head's 16 + 32 inputs
            assert re.search(r"fused_dim (64|48) > max-fused-dim 32", trial.attrs["infeasible"])
        elif trial.state == "COMPLETE":
            assert trial.attrs["fused_dim"] <= 32
    assert any("fused_dim 64" in t.attrs["infeasible"] for t in infeasible), "width 64 breaks it"
    hashed = [fused]

    config = pipeline.trial_config(hashed[0], _context(tmp_path / "out", "plug"), "plug", "storage")
    texts = ["good fun film", "awful dull plot", "great story", "bad actors"]
    classifier = FusionTextClassifier(config).fit(texts, ["pos", "neg", "pos", "neg"])
    classifier.save(tmp_path / "model")
    again = FusionTextClassifier.load(tmp_path / "model")
    np.testing.assert_allclose(again.predict_proba(texts), classifier.predict_proba(texts))


def _context(output_dir: Path, study: str) -> dict:
    import optuna

    storage = f"sqlite:///{output_dir / 'study.db'}"
    return optuna.load_study(study_name=study, storage=storage).user_attrs["context"]


def test_a_budget_plugged_in_gets_its_cli_flag(plugins, capsys):
    """The CLI derives one flag per registered constraint when it is built (imported)."""
    import importlib

    import autolayer.cli as cli

    try:
        importlib.reload(cli)
        assert cli.main(["search", "--help"]) == 0
        assert "--max-fused-dim" in capsys.readouterr().out
    finally:
        CONSTRAINTS.pop("max_fused_dim")
        importlib.reload(cli)  # back to the stock flags for the other tests
        register_constraint(MaxFusedDim)  # the fixture removes it


@pytest.mark.parametrize("module", ["probe.py", "logistic.py", "cka.py"])
def test_scorers_are_pure(module):
    """Arrays in, scores out: the maths modules never load data, extract or resolve models."""
    tree = ast.parse((PACKAGE / module).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [None])
    }
    assert not imported & {"autolayer.data", "autolayer.extraction", "autolayer.zoo"}


def test_json_of_a_plugged_source_study_is_plain(plugins, home, tmp_path, tiny_dataset):
    """The study's stored context is JSON: options, models and identities, no objects."""
    prepared = pipeline.prepare(str(tiny_dataset), ["hash:8"], top_k=1)
    context = study_context(prepared, Space())
    assert json.loads(json.dumps(context))["models"]["hash:8"]["n_hidden_states"] == 2


class NearestCentroid(Head):
    """``centroid``: standardised, concatenated features; probabilities from the squared
    distance to each class's mean, sharpened by ``temperature`` (a trial's one choice)."""

    dense_only = True

    @classmethod
    def suggest(cls, trial, space, chosen):
        return {"temperature": trial.suggest_categorical("temperature", [0.5, 2.0])}

    @classmethod
    def guided(cls, space, chosen):
        return {"temperature": 2.0}

    @classmethod
    def check_params(cls, params, where="head"):
        if set(params) != {"temperature"} or not params["temperature"] > 0:
            raise ConfigError(f"{where}: the centroid head takes a temperature > 0")
        return dict(params)

    @classmethod
    def n_parameters(cls, input_dims, n_outputs, params):
        return sum(input_dims) * n_outputs

    @classmethod
    def n_configurations(cls, space):
        return 2

    @classmethod
    def describe(cls, params, n_models):
        return f"nearest centroid, temperature {params['temperature']}"

    def _fit(self, fitting):
        x = torch.as_tensor(np.concatenate(fitting.train, axis=1), dtype=torch.float32)
        self.mean_, self.std_ = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - self.mean_) / self.std_
        y = torch.as_tensor(fitting.target)
        self.centroids_ = torch.stack(
            [
                z[y == c].mean(0) if (y == c).any() else torch.zeros(z.shape[1])
                for c in range(self.n_outputs_)
            ]
        )
        judged, truth = (
            (fitting.train, fitting.target)
            if fitting.val is None
            else (fitting.val, fitting.val_target)
        )
        score = self.task.score(self._proba(judged), truth, self.metric)
        return HeadFit(0, score, (score,), 0.0, self.centroids_.numel())

    def _proba(self, inputs):
        x = torch.as_tensor(np.concatenate(inputs, axis=1), dtype=torch.float32)
        distance = torch.cdist((x - self.mean_) / self.std_, self.centroids_) ** 2
        return torch.softmax(-distance / self.params["temperature"] / x.shape[1], 1).numpy()

    def _state(self):
        return {"centroids": self.centroids_, "mean": self.mean_, "std": self.std_}

    def _restore(self, state):
        self.centroids_, self.mean_, self.std_ = state["centroids"], state["mean"], state["std"]


class LeastLikely(SingleLabel):
    """A task whose decision is not the most probable class: the least probable one (a
    rule no stock task has, so a test sees that every stage asked the task)."""

    def decide(self, proba):
        return np.asarray(proba).argmin(axis=1)


@pytest.fixture()
def head_and_task():
    """Register the toy head and task, and remove them again afterwards."""
    register_head("centroid")(NearestCentroid)
    register_task("least_likely")(LeastLikely)
    yield
    HEADS.pop("centroid")
    TASKS.pop("least_likely")


def test_a_head_and_a_task_plug_in_from_outside(
    head_and_task, capsys, home, tmp_path, tiny_models, tiny_dataset
):
    """search → export → apply → predict with a head and a task the package does not have:
    the search trains the toy head (each of its two settings once per layer choice: a
    finite head is not trained twice), the config names both, and every stage decides by
    the toy task's rule."""
    options = Options(task="least_likely")
    prepared = pipeline.prepare(
        str(tiny_dataset), [str(tiny_models["bert"])], options=options, top_k=1
    )
    result = pipeline.search(
        prepared,
        output_dir=tmp_path / "out",
        budget=Budget(n_trials=4),
        space=Space(heads=("centroid",)),
    )
    trained = [t for t in result.trials if t.state == "COMPLETE"]
    assert trained and all(t.head == "centroid" for t in trained)
    settings = [t.head_params["temperature"] for t in trained]
    assert len(settings) == len(set(settings)) <= 2  # the same setting is never trained twice
    code, _, err = run(capsys, "export", tmp_path / "out", "-o", tmp_path / "config.yaml")
    assert code == 0, err
    config = load_config(tmp_path / "config.yaml")
    assert config.task == "least_likely" and config.head.kind == "centroid"
    assert config.head.params == {"temperature": result.best.head_params["temperature"]}
    code, _, err = run(
        capsys, "apply", tmp_path / "config.yaml", "-d", tiny_dataset, "-o", tmp_path / "model"
    )
    assert code == 0, err
    texts = tmp_path / "texts.txt"
    texts.write_text("good fun film\nawful dull plot\ngreat story\n")
    code, out, err = run(capsys, "predict", tmp_path / "model", "-i", texts)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    for row in rows:  # the least probable label, by the toy task's rule
        assert row["label"] == min(row["probabilities"], key=row["probabilities"].get)
    model = FusionTextClassifier.load(tmp_path / "model")
    assert isinstance(model.head_, NearestCentroid) and isinstance(model.head_.task, LeastLikely)

"""The paper-study runner, end to end on tiny random models, so it never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest
import yaml

from tests.conftest import REPO, WORDS, write_jsonl


def test_study_runner_writes_every_stage_and_resumes(tmp_path, tiny_models):
    rows = [
        {
            "text": f"{WORDS[i % 7]} {WORDS[(i * 3) % 11]} {'good' if i % 2 else 'bad'}",
            "label": i % 2,
        }
        for i in range(120)
    ]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows[:90])
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[90:])
    models = [str(tiny_models["bert"]), str(tiny_models["llama"])]
    spec = {
        "dataset": str(tmp_path / "data"),
        "models": models,
        "train_examples": 80,
        "max_length": 16,
        "seed": 0,
        "search": {"models": models, "top_k": 1, "max_models": 2, "n_trials": 2},
        "brute_force": True,
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "results" / "tiny"
    command = [sys.executable, str(REPO / "studies/paper/run.py"), str(tmp_path / "tiny.yaml")]
    env = {**os.environ, "AUTOLAYER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [*command, "--output-dir", str(out)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "study.json").read_text())
    stages = {"extract", "layers", "latency", "baselines", "singles", "pairs", "operators"}
    assert stages | {"scaling", "recommend", "brute_force"} <= set(results)
    assert results["extract"][models[0]]["rows"] == [80, 30]
    assert len(results["operators"]["runs"]) == 14  # seven operators at last and best layers
    assert results["brute_force"]["configurations"] == 2 + 7  # two singles, one pair x 7
    report = (out / "README.md").read_text()
    assert "Recommend vs brute force" in report and "TF-IDF" in report
    again = subprocess.run(
        [*command, "--output-dir", str(out)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and "…" not in again.stdout  # every stage was kept


def test_fewshot_curve_runs_every_draw_resumes_and_reports(tmp_path, tiny_models):
    rows = [
        {
            "text": f"{WORDS[i % 7]} {WORDS[(i * 3) % 11]} {'good' if i % 2 else 'bad'}",
            "label": i % 2,
        }
        for i in range(60)
    ]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows[:40])
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[40:])
    script = str(REPO / "studies/fewshot/curve.py")
    out = tmp_path / "out"
    command = [
        sys.executable,
        script,
        *("--dataset", tmp_path / "data", "--max-length", 12, "--models", tiny_models["bert"]),
        *("--sizes", "4,30", "--setfit-models", "", "--draws", 2, "--n-trials", 2),
        *("--work-dir", tmp_path / "work", "--out", out),
    ]
    env = {**os.environ, "AUTOLAYER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    one = [*command, "--draw-ids", 1]
    run = subprocess.run([str(c) for c in one], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert set(json.loads((out / "curve-data.json").read_text())["autolayer"]) == {"4/1"}
    run = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "30 labels per class is more than its rarest class has" in run.stdout
    assert "autolayer 4/0" in run.stdout and "autolayer 4/1" not in run.stdout
    results = json.loads((out / "curve-data.json").read_text())
    assert set(results["autolayer"]) == {"4/0", "4/1"}
    entry = results["autolayer"]["4/0"]
    assert 0.0 <= entry["test_accuracy"] <= 1.0 and entry["cpu_seconds"] > 0
    assert {"best_layer", f"{tiny_models['bert']}:last"} <= set(entry["baselines"])
    again = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "autolayer 4/" not in again.stdout  # every draw kept
    report = subprocess.run(
        [sys.executable, script, "--report", "--out", str(out)], env=env, capture_output=True
    )
    assert report.returncode == 0
    table = (out / "curves.md").read_text()
    accuracies = [results["autolayer"][k]["test_accuracy"] for k in ("4/0", "4/1")]
    mean, std = 100 * sum(accuracies) / 2, 100 * abs(accuracies[0] - accuracies[1]) / 2
    assert f"| autolayer (recommended) | {mean:.2f} ± {std:.2f} (2) |" in table
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_fewshot_setfit_draw_resumes_from_its_last_checkpoint(tmp_path, tiny_models, monkeypatch):
    setfit = pytest.importorskip("setfit")  # a benchmark extra (pyproject's "bench")
    import numpy as np

    import autolayer

    monkeypatch.syspath_prepend(str(REPO / "studies/fewshot"))
    import curve

    rows = [{"text": f"{WORDS[i % 7]} {WORDS[(i * 3) % 11]}", "label": i % 2} for i in range(40)]
    write_jsonl(tmp_path / "data" / "train.jsonl", rows[:30])
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[30:])
    data = autolayer.load_dataset(tmp_path / "data")
    arm = (data, 4, 0, str(tiny_models["bert"]), 4, 12)  # 4 iterations: 64 pairs, 4 steps
    probabilities, steps = [], []
    predict = setfit.SetFitModel.predict

    def recorded(model, texts, *args, **kwargs):
        probabilities.append(np.asarray(model.predict_proba(texts)))
        return predict(model, texts, *args, **kwargs)

    class Killed(RuntimeError):
        pass

    class KilledAfterSave(curve._CpuAtSave):
        def on_save(self, args, state, control, **kwargs):
            super().on_save(args, state, control, **kwargs)
            raise Killed

    class Counted(curve._CpuAtSave):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)
            super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(setfit.SetFitModel, "predict", recorded)
    monkeypatch.setattr(curve, "_CpuAtSave", KilledAfterSave)
    folder = curve.setfit_folder(tmp_path / "work", *arm[1:])
    with pytest.raises(Killed):
        curve.setfit_arm(*arm, folder, save_steps=2)
    earlier = json.loads((folder / "checkpoint-2" / curve.CPU_FILE).read_text())
    (folder / "checkpoint-3").mkdir()  # killed mid-save: no CPU seconds, passed over
    monkeypatch.setattr(curve, "_CpuAtSave", Counted)
    monkeypatch.setattr(curve, "time", types.SimpleNamespace(process_time=lambda: 7.0))
    entry = curve.setfit_arm(*arm, folder, save_steps=2)
    assert entry["resumed_at_step"] == 2 and steps == [3, 4]
    assert entry["train_cpu_seconds"] == earlier > 0  # this run's clock stood still
    fresh = curve.setfit_arm(*arm, tmp_path / "fresh", save_steps=2)
    assert fresh["resumed_at_step"] is None and steps == [3, 4, 1, 2, 3, 4]
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)

"""The paper-study runner, end to end on tiny random models, so it never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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

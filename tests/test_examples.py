"""Every example script runs on tiny data, so the examples never rot."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(
    "script, extra",
    [
        ("quickstart.py", ["--n-trials", "2"]),
        ("budget_search.py", ["--n-trials", "2"]),
        ("sklearn_pipeline.py", ["--layer", "2"]),
    ],
)
def test_example_runs(script, extra, tmp_path, tiny_models, tiny_dataset):
    models = f"{tiny_models['bert']},{tiny_models['llama']}"
    args = ["--dataset", str(tiny_dataset)]
    if script == "sklearn_pipeline.py":
        args += ["--model", str(tiny_models["bert"])]
    else:
        args += ["--models", models, "--output-dir", str(tmp_path / "out")]
    env = {**os.environ, "AUTOLAYER_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *args, *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()

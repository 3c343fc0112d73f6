"""`autolayer score` and `autolayer complementarity` on tiny models, API and CLI."""

from __future__ import annotations

import json

import numpy as np

from autolayer.cli import main
from autolayer.pipeline import complementarity, score


def test_score_ranks_every_layer_and_reports_subsample_stability(home, tiny_models, tiny_dataset):
    [result] = score([str(tiny_models["bert"])], str(tiny_dataset), n_folds=3, max_examples=30)
    assert result.n_hidden_states == 5 and result.scores.accuracy.shape == (5,)
    assert 0 <= result.best_layer <= result.last_layer == 4
    assert result.rank_stability is not None and -1 <= result.rank_stability <= 1
    ranks = sorted(row["rank"] for row in result.to_dict()["layers"])
    assert ranks == [1, 2, 3, 4, 5]


def test_complementarity_grid_and_matrix(home, tiny_models, tiny_dataset):
    names = [str(tiny_models["bert"]), str(tiny_models["llama"])]
    result = complementarity(names, str(tiny_dataset), layers={names[0]: -1})
    assert result.layers[0] == 4
    assert result.matrix.shape == (2, 2)
    np.testing.assert_allclose(np.diag(result.matrix), 1, atol=1e-5)
    assert result.grids[(names[0], names[1])].shape == (5, 5)
    [pair] = result.pairs
    assert pair.models == tuple(names) and pair.n_examples == result.n_examples
    self_cka = complementarity(
        [names[0], names[0] + "/"], str(tiny_dataset), layers={names[0]: 2, names[0] + "/": 2}
    )
    np.testing.assert_allclose(self_cka.matrix, 1, atol=1e-5)
    # the same features twice: the same predictions, so nothing to gain by fusing them
    [same] = self_cka.pairs
    assert same.disagreement == 0 and same.oracle_gain == 0


def test_cli_score_and_complementarity_write_json_and_png(
    capsys, home, tmp_path, tiny_models, tiny_dataset
):
    bert, llama = str(tiny_models["bert"]), str(tiny_models["llama"])
    code = main(
        [
            "score",
            "-m",
            f"{bert},{llama}",
            "-d",
            str(tiny_dataset),
            "--folds",
            "3",
            "--json",
            str(tmp_path / "s.json"),
            "--plot",
            str(tmp_path / "s.png"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "best layer" in out
    assert len(json.loads((tmp_path / "s.json").read_text())) == 2
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    code = main(
        [
            "complementarity",
            "-m",
            f"{bert},{llama}",
            "-d",
            str(tiny_dataset),
            "--json",
            str(tmp_path / "c.json"),
            "--plot",
            str(tmp_path / "c.png"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "predicted fusion gain" in out and "linear CKA" in out and "(similarity)" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["matrix"][0][0] > 0.99
    assert saved["pairs"][0]["models"] == [bert, llama] and "gain_se" in saved["pairs"][0]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

"""Study: the linear head's L2 penalty on a few labels per class (issue 15).

On the curve's draws (``curve.py``: ``per_class(N, seed=d)``, d = 0..4, N = 8 and 32) the
anchor's features, mpnet's last layer standardised on the draw, are fitted by logistic
regression at each penalty of ``autolayer.probe.PENALTIES`` (alpha = 1/C) and scored on the
full test split; ``chosen`` is the penalty :func:`autolayer.probe.chosen_alpha` picks from
the draw alone (CV), as the linear head now does. Reads the embeddings ``curve.py`` cached
(``--work-dir``), so it runs in a minute or two per set once those exist.

    .venv/bin/python studies/fewshot/penalty.py --sets sst2,mr,r8 --work-dir /work/fewshot-work \\
        --out studies/results/fewshot
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

import autolayer
from autolayer import pipeline
from autolayer.options import Options
from autolayer.probe import PENALTIES, chosen_alpha

ROOT = Path(__file__).resolve().parents[2]
SETS = {"sst2": 256, "mr": 256, "r8": 128}  # max_length, as curve.py runs them
SIZES = (8, 32)


def draw_entry(data, n: int, seed: int, options: Options) -> dict:
    """Test accuracy at every penalty, and the penalty CV picks, on one draw."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    drawn, options = pipeline.restrict(data, replace(options, seed=seed), labels_per_class=n)
    y, y_test = drawn.split("train").labels, drawn.split("test").labels
    train = pipeline.embed("mpnet", drawn, "train", options)
    last = train.array.shape[1] - 1
    test = pipeline.embed("mpnet", drawn, "test", options, layers=[last])
    scaler = StandardScaler().fit(train.layer(last))
    x, x_test = scaler.transform(train.layer(last)), scaler.transform(test.layer(last))
    accuracy = {}
    for alpha in PENALTIES:
        clf = LogisticRegression(C=1 / alpha, max_iter=5000).fit(x, y)
        accuracy[str(alpha)] = float((clf.predict(x_test) == y_test).mean())
    return {"test_accuracy": accuracy, "chosen": chosen_alpha(x, y)}


def table(results: dict) -> str:
    """Mean ± std test accuracy (%) per set and size, one column per penalty and the pick."""
    head = [f"alpha {a:g} (C {1 / a:g})" for a in PENALTIES] + ["chosen by CV"]
    lines = [
        "| set | labels per class | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(head),
    ]
    for name, entries in results.items():
        for n in SIZES:
            draws = [e for k, e in entries.items() if k.startswith(f"{n}/")]
            columns = [[e["test_accuracy"][str(a)] for e in draws] for a in PENALTIES]
            columns.append([e["test_accuracy"][str(e["chosen"])] for e in draws])
            cells = [f"{100 * np.mean(c):.2f} ± {100 * np.std(c):.2f}" for c in columns]
            lines.append(f"| {name} | {n} ({len(draws)} draws) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=lambda s: s.split(","), default=list(SETS))
    parser.add_argument("--work-dir", type=Path, required=True, help="curve.py's caches")
    parser.add_argument("--out", type=Path, default=ROOT / "studies/results/fewshot")
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    results = {}
    for name in args.sets:
        data = autolayer.load_dataset(ROOT.parent / "shared" / "data" / name)
        options = Options(max_length=SETS[name], cache_dir=args.work_dir / name / "cache")
        results[name] = {
            f"{n}/{d}": draw_entry(data, n, d, options) for n in SIZES for d in range(args.draws)
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "penalty.json").write_text(json.dumps(results, indent=1))
    (args.out / "penalty.md").write_text(
        "# The linear head's L2 penalty: test accuracy (%) of mpnet's last layer + LR\n\n"
        + table(results)
        + "\nmean ± std over the draws; `studies/fewshot/penalty.py`.\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()

"""Every trial of a stored study: number, state, models, value (the last reported value
for a pruned one), head kind, whether a baseline, and head-training seconds, as JSON, so a
study's figures can be cited from a committed file; it prints the training seconds summed
by head kind, with or without TF-IDF among the models, and baseline or not.

    .venv/bin/python studies/bench/trials.py --storage sqlite:///W/r8/with_tfidf/out/study.db \
        --json studies/bench/results/lexical-r8-trials.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import optuna


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = {}
    for summary in optuna.get_all_study_summaries(args.storage):
        study = optuna.load_study(study_name=summary.study_name, storage=args.storage)
        out[summary.study_name] = [
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": t.value
                if t.value is not None
                else t.intermediate_values.get(max(t.intermediate_values, default=-1)),
                "head": t.user_attrs.get("head", "mlp"),
                "baseline": bool(t.user_attrs.get("baseline")),
                "train_seconds": t.user_attrs.get("train_seconds", 0.0),
            }
            for t in study.trials
        ]
    args.json.write_text(json.dumps(out, indent=1))
    print(f"{sum(map(len, out.values()))} trials in {len(out)} studies")
    for name, trials in out.items():
        seconds, counts = Counter(), Counter()
        for t in trials:
            lexical = "tfidf" if "tfidf" in str(t["params"].get("models", "")) else "dense"
            key = (t["head"], lexical, "baseline" if t["baseline"] else "searched")
            seconds[key] += t["train_seconds"]
            counts[key] += 1
        print(f"{name}: {sum(seconds.values()):.0f} s of head training")
        for key in sorted(seconds):
            print(f"  {' '.join(key)}: {counts[key]} trials, {seconds[key]:.1f} s")


if __name__ == "__main__":
    main()

"""Every trial of a stored study: number, state, models and value (the last reported value
for a pruned one), as JSON, so a study's figures can be cited from a committed file.

    .venv/bin/python studies/bench/trials.py --storage sqlite:///W/r8/with_tfidf/out/study.db \
        --json studies/bench/results/lexical-r8-trials.json
"""

from __future__ import annotations

import argparse
import json
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
            }
            for t in study.trials
        ]
    args.json.write_text(json.dumps(out, indent=1))
    print(f"{sum(map(len, out.values()))} trials in {len(out)} studies")


if __name__ == "__main__":
    main()

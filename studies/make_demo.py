"""Build the bundled demo set (autolayer/demo) from the offline MR sentence-polarity copy.

The demo has to be small enough to ship in the wheel and extract in seconds on a CPU, yet
balanced and seeded so every install sees the same rows. Run from the repo root:

    python studies/make_demo.py [--source DIR] [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

SIZES = {"train": 500, "test": 200}  # examples per class
SHARED = Path(os.environ.get("AUTOLAYER_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))


def sample(rows: list[dict], per_class: int, rng: np.random.Generator) -> list[dict]:
    """Take `per_class` rows of each label, then shuffle so the file is not sorted by class."""
    picked: list[dict] = []
    for label in sorted({row["label"] for row in rows}):
        members = [row for row in rows if row["label"] == label]
        chosen = rng.choice(len(members), size=per_class, replace=False)
        picked.extend(members[i] for i in sorted(chosen))
    return [picked[i] for i in rng.permutation(len(picked))]


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SHARED / "mr")
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "autolayer/demo")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(args)
    rng = np.random.default_rng(options.seed)
    options.out.mkdir(parents=True, exist_ok=True)
    for split, per_class in SIZES.items():
        with open(options.source / f"{split}.jsonl", encoding="utf-8") as source:
            rows = sample([json.loads(line) for line in source], per_class, rng)
        with open(options.out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as out:
            for row in rows:
                out.write(
                    json.dumps({"text": row["text"], "label": row["label"]}, ensure_ascii=False)
                    + "\n"
                )
        print(f"{split}: {len(rows)} rows -> {options.out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()

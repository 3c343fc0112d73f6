"""The multi-fidelity table of RESULTS.md, from every ``fidelity-<set>.json`` (issue 12).

.venv/bin/python studies/bench/fidelity_table.py studies/bench/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = (
    "| set | train rows | exhaustive CPU s | multi-fidelity CPU s | brute force CPU s "
    "| MF / exhaustive (≤ 40 %) | MF / brute force (≤ 25 %) | test MF − BF (≥ −0.5 pt) "
    "| screen dropped |"
)


def row(name: str, r: dict) -> str:
    ex, mf, bf = (r[k] for k in ("exhaustive", "multi_fidelity", "brute_force"))
    gap = 100 * (mf["test_accuracy"] - bf["test_accuracy"])
    return (
        f"| {name} | {r['n_train']:,} | {ex['cpu_seconds']:,.0f} | {mf['cpu_seconds']:,.0f} "
        f"| {bf['cpu_seconds']:,.0f} | {100 * mf['cpu_seconds'] / ex['cpu_seconds']:.0f} % "
        f"| {100 * mf['cpu_seconds'] / bf['cpu_seconds']:.0f} % | {gap:+.2f} "
        f"| {', '.join(mf['dropped']) or '—'} |"
    )


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "studies/bench/results")
    lines = [HEADER, "|---" * 9 + "|"]
    for path in sorted(folder.glob("fidelity-*.json")):
        results = json.loads(path.read_text())
        if all(k in results for k in ("exhaustive", "multi_fidelity", "brute_force")):
            lines.append(row(path.stem.removeprefix("fidelity-"), results))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

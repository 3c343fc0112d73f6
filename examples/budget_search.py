"""A budget-constrained search: at most 2 models, a latency cap, few head parameters.

Configurations that break the budget are never trained; the report says which limit bound.

    python examples/budget_search.py --dataset ../shared/data/mr --models minilm,smollm2
"""

import argparse

import autolayer
from autolayer import pipeline

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", default="demo")
parser.add_argument("--models", default="minilm")
parser.add_argument("--n-trials", type=int, default=10)
parser.add_argument("--output-dir", default="autolayer-budget")
args = parser.parse_args()

prepared = pipeline.prepare(args.dataset, args.models.split(","), top_k=3)
# Allow 80% of the slowest full-depth model: the search must cut layers or drop a model.
slowest = max(c.ms_per_text for c in prepared.candidates)
budget = autolayer.Budget(
    n_trials=args.n_trials, max_models=2, max_latency_ms=0.8 * slowest, max_params=2_000_000
)
result = pipeline.search(prepared, output_dir=args.output_dir, budget=budget)
for trial in result.trials[:5]:
    state = trial.attrs.get(
        "infeasible", f"{100 * trial.value:.1f}%" if trial.value else trial.state
    )
    print(
        trial.number,
        trial.models,
        trial.layers,
        trial.operator,
        f"{trial.attrs.get('latency_ms', 0):.2f} ms",
        state,
    )
best = result.best
print(
    f"best within budget: {best.models} layers {best.layers}, "
    f"{best.attrs['latency_ms']:.2f} ms/text <= {budget.max_latency_ms:.2f}"
)

"""Quick start: extract → score → recommend → predict, from Python.

python examples/quickstart.py                       # demo set, installed zoo models
python examples/quickstart.py --dataset ../shared/data/mr --models minilm,smollm2
"""

import argparse

import autolayer

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", default="demo")
parser.add_argument("--models", default="minilm")
parser.add_argument("--n-trials", type=int, default=10)
parser.add_argument("--output-dir", default="autolayer-quickstart")
args = parser.parse_args()
models = args.models.split(",")

# 1. Every layer of every model, in one pass each; cached, so later steps reuse it.
data = autolayer.load_dataset(args.dataset)
for model in models:
    emb = autolayer.extract(model, data, split="train")
    print(f"{model}: embeddings {emb.array.shape} ([N, L+1, D])")

# 2. Which layers carry the task? Linear probes on all layers at once.
for result in autolayer.score(models, data):
    print(
        f"{result.model}: best layer {result.best_layer} of {result.last_layer}, "
        f"{100 * result.scores.accuracy[result.best_layer]:.1f}% vs last "
        f"{100 * result.scores.accuracy[result.last_layer]:.1f}%"
    )

# 3. Search models x layers x fusion operators; the config is chosen on validation only.
rec = autolayer.recommend(
    data, models, output_dir=args.output_dir, budget=autolayer.Budget(n_trials=args.n_trials)
)
head = rec.config.head
print("recommended:", [(m.spec, m.layer) for m in rec.config.models], head.kind, head.params)
for reason in rec.reasons:
    print("  -", reason)

# 4. Train it on train + validation, test it, save it, and predict new texts.
result = autolayer.apply(rec.config, data, f"{args.output_dir}/model")
print(f"test accuracy {100 * result.accuracy:.1f}%")
classifier = autolayer.FusionTextClassifier.load(result.directory)
print(classifier.predict(["a gripping, beautifully acted film", "dull and far too long"]))

"""The fused classifier as a scikit-learn estimator: cross-validation and a Pipeline.

python examples/sklearn_pipeline.py --config autolayer-out/recommendation.yaml
python examples/sklearn_pipeline.py --model minilm --layer 4    # no config needed
"""

import argparse

from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

import autolayer
from autolayer.config import FusionConfig, HeadChoice, ModelChoice
from autolayer.sources import make_source

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", default="demo")
parser.add_argument("--config")
parser.add_argument("--model", default="minilm")
parser.add_argument("--layer", type=int, default=4)
args = parser.parse_args()

data = autolayer.load_dataset(args.dataset)
texts = list(data.split("train").texts)
labels = [data.label_names[i] for i in data.split("train").labels]

if args.config:
    config = autolayer.load_config(args.config)
else:
    source = make_source(args.model)
    config = FusionConfig(
        models=(ModelChoice(args.model, source.identity, args.layer, source.n_states),),
        head=HeadChoice(
            "mlp",
            {"operator": "concat", "width": 256, "hidden": 128, "lr": 1e-3, "epochs": 20},
        ),
        label_names=data.label_names,
    )

classifier = autolayer.FusionTextClassifier(config)
scores = cross_val_score(classifier, texts, labels, cv=3)
print(f"3-fold CV accuracy: {scores.mean():.3f} ± {scores.std():.3f}")

# Any text preprocessing composes in front of it.
pipeline = Pipeline(
    [("lower", FunctionTransformer(lambda xs: [x.lower() for x in xs])), ("fused", classifier)]
)
pipeline.fit(texts, labels)
print(
    "test accuracy:",
    pipeline.score(
        list(data.split("test").texts), [data.label_names[i] for i in data.split("test").labels]
    ),
)

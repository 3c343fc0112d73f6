"""Few labels: the MLP head vs logistic regression on one layer (the check behind the linear head).

SST-2, draws of 8 and 32 labels per class (seeds 0-2), the probe-best layer of each model on
the draw; the MLP head (width 256, lr 1e-3) judged by 5-fold CV (epochs on the fold-mean
curve), retrained on the draw, scored on test, for four settings; LR = sklearn logistic
regression (C=1) on the standardised layer. Output: studies/results/fewshot/heads.txt.

    PYTHONPATH=. .venv/bin/python studies/fewshot/heads.py mpnet,smollm2
"""

import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import autolayer
from autolayer import pipeline
from autolayer.heads import cross_validate, make_head
from autolayer.options import Options
from autolayer.probe import folds as stratified_folds
from autolayer.probe import probe_layers

data = autolayer.load_dataset(
    str(__import__("pathlib").Path(__file__).resolve().parents[3] / "shared/data/sst2")
)
opts = Options(max_length=256)  # run here with cache_dir="/work/fewshot-work/sst2/cache"
variants = {
    "A e60 d0.1": dict(epochs=60, dropout=0.1),
    "B e200 d0.1": dict(epochs=200, dropout=0.1),
    "C e200 d0.5": dict(epochs=200, dropout=0.5),
    "D e200 d0.1 wd0.01": dict(epochs=200, dropout=0.1, weight_decay=0.01),
}
res = {}
for model in sys.argv[1].split(","):
    test_full = pipeline.embed(model, data, "test", opts)
    yt = data.split("test").labels
    for n in (8, 32):
        for d in range(3):
            drawn = data.per_class(n, seed=d)
            tr = pipeline.embed(model, drawn, "train", opts)
            y = drawn.split("train").labels
            sc = probe_layers(np.asarray(tr.array), y, n_folds=5, seed=d)
            L = sc.best_layer
            x = tr.layer(L)
            xt = test_full.layer(L)
            s = StandardScaler().fit(x)
            lr = LogisticRegression(max_iter=2000).fit(s.transform(x), y)
            res.setdefault((model, n, "LR"), []).append((lr.predict(s.transform(xt)) == yt).mean())
            f = stratified_folds(y, 5, d)
            for name, v in variants.items():
                for rate in (1e-3,):
                    p = {"operator": "concat", "width": 256, "lr": rate, **v}
                    cv = cross_validate(make_head("mlp", p), [x], y, f, seed=d)
                    final = make_head("mlp", {**p, "epochs": cv.best_epoch + 1})
                    final.fit([x], y, seed=d)
                    acc = (final.predict_proba([xt]).argmax(1) == yt).mean()
                    res.setdefault((model, n, name), []).append(acc)
                    print(
                        model,
                        n,
                        d,
                        name,
                        "cv",
                        round(cv.best_val_metric, 3),
                        "ep",
                        cv.best_epoch,
                        "test",
                        round(acc, 4),
                        flush=True,
                    )
for k, v in sorted(res.items()):
    print(k, f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}")

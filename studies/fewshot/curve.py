"""Study: test accuracy against labels per class, autolayer vs SetFit (issue 15).

For one benchmark set and each size N (labels per class) and draw d (the seed), on the same
seeded draw (``LabelledDataset.per_class(N, seed=d)``) and the full test split:

- **baselines**: every zoo model's last layer + logistic regression, and the best single
  layer + LR, the (model, layer) chosen by the probe's cross-validation on the draw;
- **autolayer**: ``recommend --labels-per-class N --seed d`` (exhaustive: every layer of the
  four zoo models and tfidf, cross-validated search, anchored on mpnet's last layer: see
  ``autolayer/anchor.py``), applied like ``apply`` does; entries of an earlier version are
  kept under ``autolayer:<what it was>`` and drawn as their own curve;
- **setfit**: SetFit with its default protocol (``TrainingArguments(seed=d)``) on mpnet (and
  minilm with ``--setfit-models``), trained on the draw and scored on test. On R8 it runs
  with ``--setfit-iterations 20`` (the SetFit paper's 20 pair-sampling iterations): the
  library's default samples every unique pair, 224 steps at 8 labels per class against 160,
  at about 20 CPU s a step here. A draw checkpoints every ``--setfit-save-steps`` and
  resumes from the last checkpoint (an R8 draw at 32 per class takes about 3.5 CPU hours).

Compute is this process's CPU seconds (``time.process_time``; pin one thread and one core
to compare arms). The test split of every zoo model is embedded once per set and reused by
every draw (frozen features are the same for every draw); that one-time cost is recorded on
its own. SetFit fine-tunes its encoder, so it encodes the test split again for each draw.

Results go to one JSON per set, keyed by arm, N and draw; finished entries are kept, so the
study resumes. Each entry is merged into the file under a lock, so processes given disjoint
``--draw-ids`` can share one set's JSON (one per core). ``--report`` renders the table and
PNG of every set's JSON in ``--out``.

    .venv/bin/python studies/fewshot/curve.py --set sst2 --work-dir /work/fewshot-work \\
        --out studies/results/fewshot
    .venv/bin/python studies/fewshot/curve.py --report --out studies/results/fewshot
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

import autolayer
from autolayer import pipeline, zoo
from autolayer.budgets import Budget
from autolayer.classifier import apply
from autolayer.options import Options
from autolayer.probe import probe_layers

ROOT = Path(__file__).resolve().parents[2]
SETS = {"sst2": 256, "mr": 256, "r8": 128}  # max_length, as studies/bench/fidelity.py ran them
MODELS = ("minilm", "mpnet", "smollm2", "gemma3")
SIZES = (8, 16, 32, 64, 128)


def layer_baselines(data, models, options: Options) -> dict:
    """Last layer + LR per model, and the best (model, layer) by the probe's CV + LR."""
    y, y_test = data.split("train").labels, data.split("test").labels
    out, best = {}, None
    for model in models:
        train = pipeline.embed(model, data, "train", options)
        scores = probe_layers(
            np.asarray(train.array), y, n_folds=options.cv_folds, seed=options.seed
        )
        last = train.array.shape[1] - 1
        out[f"{model}:last"] = _logistic(model, data, options, train.layer(last), last, y, y_test)
        candidate = (float(scores.accuracy[scores.best_layer]), model, int(scores.best_layer))
        best = max(best or candidate, candidate)
    _, model, layer = best
    train = pipeline.embed(model, data, "train", options, layers=[layer])
    out["best_layer"] = {
        "model": model,
        **_logistic(model, data, options, train.layer(layer), layer, y, y_test),
    }
    return out


def _logistic(model, data, options, x_train, layer, y, y_test) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    test = pipeline.embed(model, data, "test", options, layers=[layer])  # the cached full depth
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x_train), y)
    predicted = clf.predict(scaler.transform(test.layer(layer)))
    return {"layer": int(layer), "test_accuracy": float((predicted == y_test).mean())}


def autolayer_arm(
    data, models, n: int, seed: int, options: Options, work: Path, n_trials: int
) -> dict:
    """The recommendation applied (its CPU seconds, the draw's extraction included), then
    the baselines, which read the features it cached."""
    drawn, options = pipeline.restrict(data, replace(options, seed=seed), labels_per_class=n)
    start = time.process_time()
    out = work / f"autolayer-{n}-{seed}"
    rec = pipeline.recommend(
        drawn,
        [*models, "tfidf"],
        options=options,
        output_dir=out,
        budget=Budget(n_trials=n_trials),
        fidelity=None,
        overwrite=True,
    )
    result = apply(rec.config, drawn, out / "model", cache_dir=options.cache_dir, overwrite=True)
    seconds = time.process_time() - start
    kind, params = rec.config.head.kind, rec.config.head.params
    head = params.get("operator", f"{kind} head")
    return {
        "cpu_seconds": seconds,
        "test_accuracy": result.accuracy,
        "cv_accuracy": rec.config.validation[rec.config.metric],
        "config": " + ".join(f"{m.spec}:{m.layer}" for m in rec.config.models) + f" ({head})",
        "why": rec.search.why,
        "baselines": layer_baselines(drawn, models, options),
    }


def setfit_arm(
    data,
    n: int,
    seed: int,
    backbone: str,
    iterations: int | None,
    max_length: int,
    folder: Path,
    save_steps: int = 40,
) -> dict:
    """SetFit's default protocol on ``backbone`` (a zoo sentence-transformer), its texts cut
    at the set's ``max_length`` tokens like autolayer's. Uncut, mpnet's 384 tokens on R8's
    documents took 86 s per training step on this CPU and 21 GB before the OOM killer
    ended the run (8 labels per class, 160 steps).

    Resumable within a draw: an R8 draw at 32 per class (640 steps) outlasts a session, so
    the encoder's training is checkpointed in ``folder`` (:func:`setfit_folder`) every
    ``save_steps`` steps with the CPU seconds spent up to it, and a rerun resumes from the
    last checkpoint. The work after it, lost, is not counted; nor are the checkpoints' own
    writes (``checkpoint_cpu_seconds``: SetFit's default saves every 500 steps, and the
    figure should not depend on how often the study saves). A resumed run loads the model
    again, which is counted."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    drawn = data.per_class(n, seed=seed)
    train, test = drawn.split("train"), drawn.split("test")
    start = time.process_time()
    model = SetFitModel.from_pretrained(str(zoo.resolve(backbone).folder))
    model.model_body.max_seq_length = min(model.model_body.max_seq_length, max_length)
    settings = {"seed": seed, "output_dir": str(folder), "save_steps": save_steps}
    settings["save_total_limit"] = 2  # one with its CPU seconds survives a kill mid-save
    if iterations is not None:
        settings["num_iterations"] = iterations
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=Dataset.from_dict(
            {"text": list(train.texts), "label": train.labels.tolist()}
        ),
    )
    checkpoint, earlier = _last_checkpoint(folder)
    clock = _CpuAtSave(earlier - start)
    trainer.st_trainer.add_callback(clock)
    trainer.st_trainer.train = partial(trainer.st_trainer.train, resume_from_checkpoint=checkpoint)
    trainer.train()
    trained = time.process_time()
    predicted = np.asarray(model.predict(list(test.texts)))
    return {
        "cpu_seconds": earlier + time.process_time() - start - clock.saving,
        "train_cpu_seconds": earlier + trained - start - clock.saving,
        "checkpoint_cpu_seconds": clock.saving,  # this run's saves only
        "test_accuracy": float((predicted == test.labels).mean()),
        "num_iterations": iterations,
        "max_length": model.model_body.max_seq_length,
        "resumed_at_step": int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None,
    }


def setfit_folder(work: Path, n: int, seed: int, backbone: str, iterations, max_length) -> Path:
    """One draw's checkpoints, named by all that shapes its training: a rerun with other
    settings starts afresh instead of resuming another protocol's weights."""
    return work / f"setfit-{Path(backbone).name}-{n}-{seed}-it{iterations}-len{max_length}"


CPU_FILE = "autolayer_cpu_seconds.json"


def _last_checkpoint(folder: Path) -> tuple[str | None, float]:
    """The newest checkpoint a killed run of this draw left with the CPU seconds spent up
    to it (one killed mid-save has none, and is passed over), or ``(None, 0.0)``."""
    found = folder.glob("checkpoint-*") if folder.is_dir() else []
    for path in sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True):
        if (path / CPU_FILE).is_file():
            return str(path), float(json.loads((path / CPU_FILE).read_text()))
    return None, 0.0


class _CpuAtSave(TrainerCallback):
    """Writes into each checkpoint the CPU seconds spent on the draw up to it, less the
    checkpoints' own writes (``saving``, the time from a step's end to its save)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset  # earlier runs' seconds, less this run's start
        self.saving = 0.0
        self.step_end = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end = time.process_time()

    def on_save(self, args, state, control, **kwargs):
        now = time.process_time()
        self.saving += now - self.step_end
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        tmp = checkpoint / f"{CPU_FILE}.tmp"
        tmp.write_text(json.dumps(self.offset + now - self.saving))
        os.replace(tmp, checkpoint / CPU_FILE)


def embed_tests(data, models, options: Options) -> dict:
    """Every zoo model's test split, full depth, once per set (reused by every draw)."""
    out = {}
    for model in models:
        start = time.process_time()
        pipeline.embed(model, data, "test", options)
        out[model] = time.process_time() - start
    return out


def _commit() -> str:
    """The code a draw ran (draws of one set run across processes and sessions)."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


COMMIT = _commit()


def _read(path: Path) -> dict:
    """The results so far (written only whole, by :func:`_merge`, so readable unlocked)."""
    return json.loads(path.read_text()) if path.exists() else {}


def _merge(path: Path, lock: Path, update) -> dict:
    """Re-read ``path``, apply ``update`` to it and replace it atomically, holding ``lock``
    (in the work folder): other processes on other draws write to the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        results = _read(path)
        update(results)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, path)
    return results


def _most(results: dict, seconds: dict) -> dict:
    """Each model's test-embedding seconds: the larger of two processes' (started together,
    one computes while the other waits on the cache, then reads it)."""
    earlier = results.get("test_embedding_cpu_seconds", {})
    return {m: max(seconds[m], earlier.get(m, 0.0)) for m in seconds}


def run(args) -> None:
    data = autolayer.load_dataset(args.dataset or ROOT.parent / "shared" / "data" / args.set)
    work = args.work_dir / data.name
    options = Options(max_length=args.max_length or SETS[args.set], cache_dir=work / "cache")
    path = args.out / f"curve-{data.name}.json"
    merge = partial(_merge, path, work / "curve.lock")

    def header(results: dict) -> None:
        results.setdefault("dataset", data.name)
        results.setdefault("n_test", len(data.split("test")))

    if "test_embedding_cpu_seconds" not in merge(header):
        seconds = embed_tests(data, args.models, options)
        merge(lambda r: r.update(test_embedding_cpu_seconds=_most(r, seconds)))
    rarest = int(np.bincount(data.split("train").labels).min())
    arms = {"autolayer": args.sizes}
    for backbone in args.setfit_models:
        arms[f"setfit:{backbone}"] = args.setfit_sizes
    for size in sorted({*args.sizes, *args.setfit_sizes}):
        if size > rarest:
            print(f"{data.name}: {size} labels per class is more than its rarest class has")
            continue
        for draw in args.draw_ids or range(args.draws):
            for arm, sizes in arms.items():
                key = f"{size}/{draw}"
                if size not in sizes or key in _read(path).get(arm, {}):
                    continue
                if arm == "autolayer":
                    entry = autolayer_arm(
                        data, args.models, size, draw, options, work, args.n_trials
                    )
                else:
                    backbone = arm.split(":")[1]
                    setting = (size, draw, backbone, args.setfit_iterations, options.max_length)
                    folder = setfit_folder(work, *setting)
                    entry = setfit_arm(data, *setting, folder, args.setfit_save_steps)
                entry = {**entry, "commit": COMMIT}
                merge(lambda r, a=arm, k=key, e=entry: r.setdefault(a, {}).update({k: e}))
                if arm != "autolayer":
                    shutil.rmtree(folder, ignore_errors=True)  # its checkpoints, once saved
                print(arm, key, json.dumps(entry)[:200], flush=True)


def summary(results: dict) -> dict[str, dict[int, list[float]]]:
    """Test accuracies per curve and size, over the draws."""
    curves: dict[str, dict[int, list[float]]] = {}

    def add(name: str, size: int, value: float) -> None:
        curves.setdefault(name, {}).setdefault(size, []).append(value)

    versions = {arm: e for arm, e in results.items() if arm.split(":")[0] == "autolayer"}
    draws: dict[str, dict] = {}  # the baselines of each draw, from whichever version ran it
    for arm, entries in sorted(versions.items(), key=lambda item: item[0] == "autolayer"):
        draws.update(entries)
        name = "autolayer (recommended)" if arm == "autolayer" else f"autolayer ({arm[10:]})"
        for key, entry in entries.items():
            add(name, int(key.split("/")[0]), entry["test_accuracy"])
    for key, entry in draws.items():
        size = int(key.split("/")[0])
        add("best single layer + LR", size, entry["baselines"]["best_layer"]["test_accuracy"])
        for name, baseline in entry["baselines"].items():
            if name.endswith(":last"):
                add(f"{name[:-5]} last layer + LR", size, baseline["test_accuracy"])
    for arm, entries in results.items():
        if arm.startswith("setfit:"):
            for key, entry in entries.items():
                add(f"SetFit ({arm.split(':')[1]})", int(key.split("/")[0]), entry["test_accuracy"])
    return curves


def _style(name: str) -> dict:
    """The compared arms bold, the single-layer baselines thin and dashed."""
    if name == "autolayer (recommended)":
        return {"color": "tab:red", "marker": "o", "linewidth": 2.5, "zorder": 3}
    if name.startswith("SetFit"):
        return {"color": "black", "marker": "s", "linewidth": 2}
    if name == "best single layer + LR":
        return {"color": "tab:purple", "marker": "^", "linestyle": ":"}
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:cyan", "tab:olive", "tab:brown")
    model = name.split()[0]
    colour = colours[MODELS.index(model) % len(colours)] if model in MODELS else "tab:gray"
    return {"color": colour, "marker": ".", "linestyle": "--", "linewidth": 1, "alpha": 0.8}


def cpu(results: dict, arm: str, size: int) -> float | None:
    values = [e["cpu_seconds"] for k, e in results.get(arm, {}).items() if k.startswith(f"{size}/")]
    return float(np.mean(values)) if values else None


def _cell(values: list[float]) -> str:
    """Mean ± std (draws); one draw has no spread to show, not a spread of zero."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f} (1)"
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f} ({len(values)})"


def report(out: Path) -> None:
    """``curves.md`` (mean ± std over draws, CPU seconds) and ``curves.png`` from the JSONs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = sorted(out.glob("curve-*.json"))
    lines = ["# Few labels: test accuracy (%) against labels per class", ""]
    fig, axes = plt.subplots(1, max(len(paths), 1), figsize=(5 * max(len(paths), 1), 4))
    for ax, path in zip(np.atleast_1d(axes), paths, strict=False):
        results = json.loads(path.read_text())
        curves = summary(results)
        sizes = sorted({s for c in curves.values() for s in c})
        lines += [f"## {results['dataset']} ({results['n_test']} test texts)", ""]
        lines.append("| labels per class | " + " | ".join(map(str, sizes)) + " |")
        lines.append("|---" * (len(sizes) + 1) + "|")
        for name, by_size in curves.items():
            cells = [_cell(by_size[s]) if s in by_size else "—" for s in sizes]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            if name.startswith("autolayer (") and name != "autolayer (recommended)":
                continue  # earlier versions: in the table, not on the plot
            xs = [s for s in sizes if s in by_size]
            ax.errorbar(
                xs,
                [100 * np.mean(by_size[s]) for s in xs],
                yerr=[100 * np.std(by_size[s]) for s in xs],
                label=name,
                capsize=3,
                **_style(name),
            )
        arms = [a for a in results if a.split(":")[0] in ("autolayer", "setfit")]
        for arm in arms:
            cells = [cpu(results, arm, s) for s in sizes]
            lines.append(
                f"| CPU s per draw, {arm} | "
                + " | ".join("—" if c is None else f"{c:.0f}" for c in cells)
                + " |"
            )
        once = results.get("test_embedding_cpu_seconds", {})
        each = ", ".join(f"{m} {s:.0f}" for m, s in once.items())
        lines += [
            "",
            "mean ± std over draws (number of draws). Test split embedded once for all draws: "
            f"{sum(once.values()):.0f} CPU s ({each}). A draw's CPU counts only the "
            "extraction its cache did not already hold: a re-run of a draw reads what an "
            "earlier run cached, so its CPU is not comparable to a first run's.",
            "",
        ]
        ax.set_xscale("log", base=2)
        ax.set_xlabel("labels per class")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(results["dataset"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    (out / "curves.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=list(SETS))
    parser.add_argument("--dataset", type=Path, help="another dataset (with --max-length)")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--work-dir", type=Path, help="caches and recommendation folders")
    parser.add_argument("--out", type=Path, default=ROOT / "studies/results/fewshot")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=SIZES)
    parser.add_argument(
        "--setfit-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32]
    )
    parser.add_argument(
        "--setfit-models", type=lambda s: s.split(",") if s else [], default=["mpnet"]
    )
    parser.add_argument("--setfit-iterations", type=int, help="default: SetFit's own default")
    parser.add_argument(
        "--setfit-save-steps", type=int, default=40, help="SetFit checkpoints every N steps"
    )
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument(
        "--draw-ids",
        type=lambda s: [int(x) for x in s.split(",")],
        help="run only these draws (default: 0 .. --draws - 1), e.g. to split them over cores",
    )
    parser.add_argument("--n-trials", type=int, default=30)
    parser.add_argument("--report", action="store_true", help="render curves.md and curves.png")
    args = parser.parse_args()
    if args.report:
        report(args.out)
    else:
        if (args.set is None) == (args.dataset is None) or args.work_dir is None:
            parser.error("--work-dir and one of --set and --dataset are required to run it")
        if args.dataset is not None and args.max_length is None:
            parser.error("--dataset needs --max-length")
        run(args)


if __name__ == "__main__":
    main()

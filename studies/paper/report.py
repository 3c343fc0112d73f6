"""Markdown for one study (studies/results/<name>/README.md) and the cross-study summary."""

from __future__ import annotations

import json
from pathlib import Path


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def config_name(run: dict) -> str:
    parts = [f"{m} L{layer}" for m, layer in zip(run["models"], run["layers"], strict=True)]
    return " + ".join(parts) + (f" ({run['operator']})" if len(parts) > 1 else "")


def fusion_rows(runs: list[dict]) -> list[list]:
    return [
        [
            config_name(r),
            pct(r["val_accuracy"]),
            pct(r["test_accuracy"]),
            pct(r["test_macro_f1"]),
            r["latency_ms"],
            r["weights_mb"],
            f"{r['head_params']:,}",
            r["train_seconds"],
        ]
        for r in runs
    ]


FUSION_HEADER = [
    "configuration",
    "val acc %",
    "test acc %",
    "test macro-F1 %",
    "ms/text",
    "weights MB",
    "head params",
    "train s",
]


def write_report(results: dict, spec: dict, out: Path) -> None:
    """Write README.md for one study from its study.json results."""
    r = results
    name = spec["name"]
    sections = [f"# {name}: layer-aware embedding fusion study", ""]
    sections += [
        f"Produced by `.venv/bin/python studies/paper/run.py studies/paper/{name}.yaml` "
        f"(spec: [`studies/paper/{name}.yaml`](../../paper/{name}.yaml)). Train rows: "
        f"{r['extract'][spec['models'][0]]['rows'][0]} "
        f"({'all' if not spec.get('train_examples') else 'stratified seeded sample'}), "
        f"test rows: {r['extract'][spec['models'][0]]['rows'][1]}, max_length "
        f"{spec['max_length']}. Choices (best layer, pair, operator) use a 20% validation "
        "split of train only; test is only scored.",
        "",
        "## 1. Layer curves (probe CV accuracy on the train part)",
        "",
        "![layers](layers.png)",
        "",
    ]
    rows = []
    for model, info in r["layers"].items():
        acc = info["accuracy"]
        rows.append(
            [
                model,
                f"{info['best_layer']}/{info['last_layer']}",
                pct(acc[info["best_layer"]]),
                pct(acc[info["last_layer"]]),
                f"{info['gap_pt']:+.2f}",
            ]
        )
    sections += [
        table(["model", "best layer", "best acc %", "last acc %", "gap pt"], rows),
        "",
        "## 2. Baselines (fitted on all train rows, test accuracy)",
        "",
    ]
    b = r["baselines"]
    rows = [["TF-IDF + linear SVM", pct(b["tfidf_svm"])]]
    for model in spec["models"]:
        info = r["layers"][model]
        rows.append([f"{model} last layer ({info['last_layer']}) + LR", pct(b[f"{model}:last"])])
        rows.append([f"{model} best layer ({info['best_layer']}) + LR", pct(b[f"{model}:best"])])
    sections += [table(["baseline", "test acc %"], rows), ""]
    sections += [
        "## 3. Fusion heads",
        "",
        "ms/text: each backbone timed alone on 64 test texts (2 threads, otherwise idle CPU),"
        " scaled by layer/L, summed over models; weights MB: backbone parameters up to the"
        " chosen layer (float32, embedding tables included).",
        "",
        "Single models through the same head (width 512, lr 1e-3):",
        "",
        table(FUSION_HEADER, fusion_rows(list(r["singles"].values()))),
        "",
        "All seven operators on the best pair by validation "
        f"({' + '.join(r['operators']['pair'])}), at the last layers and at the best layers:",
        "",
        table(FUSION_HEADER, fusion_rows(r["operators"]["runs"])),
        "",
        f"Scaling 1 → {len(r['scaling']['runs'])} models (ordered by single-model validation "
        f"accuracy, operator {r['scaling']['operator']}, chosen on validation):",
        "",
        table(FUSION_HEADER, fusion_rows(r["scaling"]["runs"])),
        "",
        "## 4. CKA vs fusion gain (pairs at best layers, concat)",
        "",
    ]
    _plot_cka(r, spec, out)
    sections += ["![cka](cka.png)", ""]
    rows = [
        [config_name(p), p["cka"], f"{p['val_gain_pt']:+.2f}", f"{p['test_gain_pt']:+.2f}"]
        for p in r["pairs"]["pairs"]
    ]
    sections += [table(["pair", "CKA", "val gain pt", "test gain pt"], rows), ""]
    if "spearman_cka_vs_test_gain" in r["pairs"]:
        sections += [
            f"Spearman ρ(CKA, gain) over {len(r['pairs']['pairs'])} pairs: validation "
            f"{r['pairs']['spearman_cka_vs_val_gain']}, test "
            f"{r['pairs']['spearman_cka_vs_test_gain']} (negative = lower CKA, more gain; with "
            "so few pairs this is a hint at most).",
            "",
        ]
    std = r.get("cka_standardised", {})
    if "spearman_vs_test_gain" in std:
        index = {m: i for i, m in enumerate(spec["models"])}
        values = ", ".join(
            f"{' + '.join(p['models'])} {std['cka'][index[p['models'][0]]][index[p['models'][1]]]}"
            for p in r["pairs"]["pairs"]
        )
        sections += [
            f"CKA on standardised features instead ({values}): Spearman ρ with the gain "
            f"{std['spearman_vs_val_gain']} (validation), {std['spearman_vs_test_gain']} (test).",
            "",
        ]
    if "recommend" in r:
        sections += recommend_section(r, spec)
    extract = sum(v["extract_seconds"] for v in r["extract"].values())
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r.get("stage_seconds", {}).items())
    per_model = ", ".join(f"{m} {v['extract_seconds']} s" for m, v in r["extract"].items())
    sections += [
        "## CPU time (2 cores)",
        "",
        f"Extraction of every layer of every model, train + test: {extract:.0f} s "
        f"({per_model}; "
        "from the cache metadata, measured while other jobs shared the CPU). "
        f"Study stages on cached embeddings: {stages}.",
        "",
    ]
    out.joinpath("README.md").write_text("\n".join(sections) + "\n")


def _plot_cka(r: dict, spec: dict, out: Path) -> None:
    """Model × model CKA at best layers, next to the README."""
    import numpy as np

    from autolayer import report

    report.plot_cka_matrix(spec["models"], np.array(r["pairs"]["cka"]), out / "cka.png")


def recommend_section(r: dict, spec: dict) -> list[str]:
    rec = r["recommend"]
    s = spec["search"]
    forward = sum(
        r["extract"][m]["forward_seconds_per_text"] * r["extract"][m]["rows"][0]
        for m in s["models"]
    )
    probe = sum(r["layers"][m]["probe_seconds"] for m in s["models"])
    same = rec["same_protocol"]
    rows = [
        [
            "recommend",
            config_name(same),
            pct(same["val_accuracy"]),
            pct(same["test_accuracy"]),
            rec["trials_trained"],
            rec["train_seconds"],
        ]
    ]
    lines = [
        "## 5. Recommend vs brute force",
        "",
        f"Search space: models {', '.join(s['models'])}, at most {s['max_models']} fused, "
        f"top-{s['top_k']} probe layers each, seven operators; recommend: {s['n_trials']} "
        "Optuna trials (TPE, median pruning, width and lr searched too). "
        f"`apply` of the recommended config (trained on train + validation): "
        f"test accuracy {pct(rec['apply_test_accuracy'])}%, macro-F1 "
        f"{pct(rec['apply_test_macro_f1'])}%.",
        "",
    ]
    gap = []
    if "brute_force" in r:
        bf = r["brute_force"]
        best = bf["best"]
        rows.append(
            [
                "brute force",
                config_name(best),
                pct(best["val_accuracy"]),
                pct(best["test_accuracy"]),
                bf["configurations"],
                bf["train_seconds"],
            ]
        )
        total_rec = forward + probe + rec["train_seconds"]
        total_bf = forward + probe + bf["train_seconds"]
        gap = [
            "Gap to brute force on test: "
            f"{100 * (same['test_accuracy'] - best['test_accuracy']):+.2f} pt "
            f"(best test accuracy of any brute-force configuration, an oracle: "
            f"{pct(bf['test_oracle'])}%). Compute: model forward passes {forward:.0f} s "
            f"(both need every layer of every model), probes {probe:.0f} s, head training "
            f"{rec['train_seconds']:.0f} s vs {bf['train_seconds']:.0f} s "
            f"({100 * rec['train_seconds'] / max(bf['train_seconds'], 1e-9):.0f} %); in total "
            f"{total_rec:.0f} s vs {total_bf:.0f} s ({100 * total_rec / total_bf:.0f} %).",
            "",
        ]
    header = ["method", "chosen on validation", "val acc %", "test acc %", "heads", "train s"]
    lines += [table(header, rows), "", *gap]
    return lines


SUMMARY_NOTES = """Made by `studies/paper/run.py` (one spec per set in `studies/paper/`); each set's
README in `studies/results/<set>/` has the layer curves, operators, scaling, CKA vs gain and
CPU time. Baselines are fitted on all (sampled) train rows. "apply" is the recommended
config trained by `autolayer apply` on train + validation with the trial's own width, lr and
epochs; "same protocol" retrains it like every brute-force configuration (train part, early
stopping on validation, width 512, lr 1e-3), which is the fair comparison with the
brute-force best (chosen on validation). Head-training seconds exclude the model forward
passes, which both need in full. ✗ marks a set where the recommendation does not beat both
baselines (the issue's target; MR and SST-2 also ask for ≥ 3 pt over both).
"""


def _margins(rec: dict, tfidf: float, final: float) -> str:
    """How far the applied recommendation is above both baselines; ✗ when not above one."""
    gaps = [100 * (rec["apply_test_accuracy"] - base) for base in (tfidf, final)]
    mark = "" if round(min(gaps), 2) > 0 else " ✗"
    return f"{gaps[0]:+.2f} / {gaps[1]:+.2f}{mark}"


def write_summary(results_dir: Path) -> None:
    """studies/results/SUMMARY.md: one row per study."""
    rows = []
    for name in ("sst2", "mr", "r8", "r52"):
        path = results_dir / name / "study.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        b = r["baselines"]
        lasts = {k: v for k, v in b.items() if k.endswith(":last")}
        bests = {k: v for k, v in b.items() if k.endswith(":best")}
        best_last = max(lasts, key=lasts.get)
        best_single = max(bests, key=bests.get)
        rec = r.get("recommend", {})
        bf = r.get("brute_force")
        rows.append(
            [
                name,
                pct(b["tfidf_svm"]),
                f"{pct(lasts[best_last])} ({best_last.split(':')[0]})",
                f"{pct(bests[best_single])} ({best_single.split(':')[0]})",
                f"{pct(rec['apply_test_accuracy'])} / {pct(rec['same_protocol']['test_accuracy'])}"
                f" ({config_name(rec['same_protocol'])})"
                if rec
                else "—",
                f"{pct(bf['best']['test_accuracy'])} ({config_name(bf['best'])})" if bf else "—",
                f"{rec['train_seconds']:.0f} / {bf['train_seconds']:.0f}" if bf else "—",
                _margins(rec, b["tfidf_svm"], lasts[best_last]) if rec else "—",
            ]
        )
    header = [
        "set",
        "TF-IDF + SVM",
        "best final layer + LR",
        "best single layer + LR",
        "recommended: apply / same protocol",
        "brute-force best",
        "head-training s rec / bf",
        "recommended − TF-IDF / − best final layer (pt)",
    ]
    text = (
        "# Summary of the paper studies (test accuracy %)\n\n"
        + table(header, rows)
        + "\n\n"
        + SUMMARY_NOTES
    )
    (results_dir / "SUMMARY.md").write_text(text)

"""Fill the whole-split caches ``baselines.py`` reads: every layer of every zoo model on the
train and test splits of each set, with the set's settings (resumable: cached entries are
hits). Run it alone, before the benchmark (it is the forward passes, hours on this CPU):

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python studies/bench/warm_cache.py r8 mr r52 sst2 20ng
"""

import sys
import time
from pathlib import Path

import autolayer
from autolayer import pipeline
from autolayer.options import Options

ROOT = Path(__file__).resolve().parents[2]
SETS = {  # (max_length, training rows kept): as baselines.py runs them
    "r8": (128, None),
    "r52": (128, None),
    "mr": (256, None),
    "sst2": (256, 20000),
    "20ng": (128, None),
}
MODELS = ["minilm", "mpnet", "smollm2", "gemma3"]
WORK = Path("/work/bench-work")


def main(names: list[str]) -> None:
    for name in names or list(SETS):
        max_length, cap = SETS[name]
        data = autolayer.load_dataset(ROOT.parent / "shared" / "data" / name)
        if cap:
            data = data.subsample(cap, seed=0)
        options = Options(max_length=max_length, cache_dir=WORK / name / "cache")
        for split in ("train", "test"):
            for model in MODELS:
                start = time.process_time()
                array = pipeline.embed(model, data, split, options).array
                seconds = time.process_time() - start
                print(name, split, model, array.shape, round(seconds, 1), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

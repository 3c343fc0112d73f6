"""Why autolayer's Ray engine uses Ray core actors, not Ray Data (issue 32): the start-up of
each on a local Ray, measured in one process (the figures the README and
``autolayer/engine.py`` quote: two core actors ready, against a 4-item ``map_batches`` over
two actors, from submission to the last row).

    HF_HUB_OFFLINE=1 .venv/bin/python studies/bench/ray_startup.py

Run it on an otherwise quiet 2-core machine.
"""

from __future__ import annotations

import os
import time

import ray


@ray.remote(num_cpus=1)
class _Core:
    def pid(self) -> int:
        return os.getpid()


class _Mapper:
    def __call__(self, batch: dict) -> dict:
        batch["pid"] = [os.getpid()] * len(batch["i"])
        return batch


def main() -> None:
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False)
    print(f"ray.init: {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    actors = [_Core.remote() for _ in range(2)]
    ray.get([actor.pid.remote() for actor in actors])
    print(f"2 core actors ready: {time.perf_counter() - started:.2f} s")
    for actor in actors:
        ray.kill(actor)
    started = time.perf_counter()
    data = ray.data.from_items([{"i": i} for i in range(4)])
    rows = list(data.map_batches(_Mapper, batch_size=1, concurrency=2, num_cpus=1).iter_rows())
    print(
        f"ray.data map_batches of {len(rows)} items over 2 actors: "
        f"{time.perf_counter() - started:.2f} s"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()

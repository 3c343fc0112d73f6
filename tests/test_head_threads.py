"""Head fits sized to the head (issue 31): a small head fits on one torch thread, a large one
keeps the caller's count, never more, and the caller's count is back after the fit, also
after an error."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from autolayer import logistic
from autolayer.heads import make_head, modules
from autolayer.heads.modules import head_threads

SMALL = {"width": 8, "hidden": 8, "lr": 1e-2, "batch_size": 20, "epochs": 2}


@pytest.fixture()
def two_threads() -> Iterator[None]:
    """The caller runs two torch threads (the default on a 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def rows(n: int = 60, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return [x], (x[:, 0] > 0).astype(np.int64)


def threads_per_epoch(**fit: object) -> list[int]:
    """Fit a small MLP head; the torch threads seen at the end of each epoch."""
    seen: list[int] = []

    def on_epoch(epoch: int, metric: float) -> bool:
        seen.append(torch.get_num_threads())
        return False

    make_head("mlp", SMALL).fit(*rows(), on_epoch=on_epoch, device="cpu", **fit)
    return seen


def test_the_rule_gives_one_thread_below_the_bound_and_never_raises_the_count(
    two_threads: None,
) -> None:
    assert head_threads(modules.ONE_THREAD_BELOW - 1) == 1
    assert head_threads(modules.ONE_THREAD_BELOW) == 2
    torch.set_num_threads(1)
    assert head_threads(10 * modules.ONE_THREAD_BELOW) == 1


def test_a_small_mlp_head_fits_on_one_thread_and_the_count_is_restored(
    two_threads: None,
) -> None:
    assert threads_per_epoch() == [1, 1]
    assert torch.get_num_threads() == 2


def test_a_large_head_keeps_the_callers_count(two_threads: None, monkeypatch) -> None:
    monkeypatch.setattr(modules, "ONE_THREAD_BELOW", 10)  # every head is large
    assert threads_per_epoch() == [2, 2]
    torch.set_num_threads(1)  # an explicit --threads 1 stays one
    assert threads_per_epoch() == [1, 1]


def test_the_linear_head_solves_on_one_thread(two_threads: None, monkeypatch) -> None:
    seen: list[int] = []
    solve = logistic.fit_logistic

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return solve(*args, **kwargs)

    monkeypatch.setattr(logistic, "fit_logistic", spy)
    make_head("linear", {}).fit(*rows(), device="cpu")
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_the_count_is_restored_after_an_error_in_the_fit(two_threads: None) -> None:
    def fail(epoch: int, metric: float) -> bool:
        raise RuntimeError("stopped from outside")

    with pytest.raises(RuntimeError, match="stopped from outside"):
        make_head("mlp", SMALL).fit(*rows(), on_epoch=fail, device="cpu")
    assert torch.get_num_threads() == 2

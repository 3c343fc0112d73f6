"""Fusion operators: their registry, output widths, parameter counts and shape checks."""

from __future__ import annotations

import pytest
import torch

from autolayer.errors import ConfigError
from autolayer.fusion import OPERATORS, fused_dim, make_operator

ALL_OPERATORS = sorted(OPERATORS)


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_operator_output_has_out_dim_width(name: str, m: int) -> None:
    operator = make_operator(name, m, 8)
    z = operator([torch.rand(4, 8) for _ in range(m)])
    assert z.shape == (4, OPERATORS[name].out_dim(m, 8)) == (4, fused_dim(m, 8, name))


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_single_input_operator_is_identity(name: str) -> None:
    h = torch.rand(4, 8)
    assert torch.equal(make_operator(name, 1, 8)([h]), h)


@pytest.mark.parametrize("name", ALL_OPERATORS)
def test_operator_n_parameters_matches_built_operator(name: str) -> None:
    for m in (1, 2, 3):
        built = sum(p.numel() for p in make_operator(name, m, 8).parameters())
        assert built == OPERATORS[name].n_parameters(m, 8)


def test_unknown_operator_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"operator must be one of .*got 'outer'"):
        make_operator("outer", 2, 8)
    with pytest.raises(ConfigError, match=r"operator must be one of .*got 'outer'"):
        fused_dim(2, 8, "outer")


def test_quaternion_needs_width_divisible_by_four() -> None:
    with pytest.raises(ConfigError, match="width must be divisible by 4.*got 10"):
        make_operator("quaternion", 2, 10)
    with pytest.raises(ConfigError, match="divisible by 4"):
        fused_dim(2, 10, "quaternion")

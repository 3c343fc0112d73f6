"""Issue #10: results are never silently wrong, files never lost, studies never run away.

Each test here failed on the main branch before the fix it pins down.
"""

from __future__ import annotations

from autolayer.search import Cost


def test_cost_attributes_are_stored_unrounded():
    """A configuration exactly at the latency budget must be recorded at it, not above."""
    cost = Cost(latency_ms=0.056255625, memory_mb=1.23456789, params=10, fused_dim=4)
    assert cost.as_dict()["latency_ms"] == 0.056255625
    assert cost.as_dict()["memory_mb"] == 1.23456789

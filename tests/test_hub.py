"""Whether the Hugging Face hub may be asked: the offline switches read once, one way, for
models (``zoo``) and for datasets (``data``)."""

from __future__ import annotations

import pytest

from autolayer import zoo
from autolayer.errors import ModelError
from autolayer.hub import TRUE, offline

SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture()
def environment(monkeypatch: pytest.MonkeyPatch):
    """Set some offline switches, the others unset."""
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)

    def switch(settings: dict[str, str]) -> None:
        for name, value in settings.items():
            monkeypatch.setenv(name, value)

    return switch


@pytest.mark.parametrize(
    ("settings", "models", "datasets"),
    [
        ({}, False, False),
        ({"HF_HUB_OFFLINE": "1"}, True, True),
        ({"HF_HUB_OFFLINE": "ON"}, True, True),
        ({"HF_HUB_OFFLINE": "yes"}, True, True),
        ({"HF_HUB_OFFLINE": "True"}, True, True),
        ({"HF_HUB_OFFLINE": "0"}, False, False),
        ({"HF_HUB_OFFLINE": "off"}, False, False),
        ({"TRANSFORMERS_OFFLINE": "1"}, True, True),
        ({"HF_DATASETS_OFFLINE": "1"}, False, True),
        ({"HF_DATASETS_OFFLINE": "on"}, False, True),
        ({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "0"}, True, False),
    ],
)
def test_offline_reads_the_switches_as_the_hugging_face_libraries_do(
    environment, settings: dict[str, str], models: bool, datasets: bool
) -> None:
    """One reading of the offline switches for models and data (``ON`` is true for both);
    ``datasets``' own switch concerns datasets only, and overrides the hub's for them, as in
    ``datasets.config``."""
    environment(settings)
    assert (offline(), offline(datasets=True)) == (models, datasets)


def test_true_is_spelt_as_huggingface_hub_spells_it() -> None:
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    assert TRUE == ENV_VARS_TRUE_VALUES


def test_a_model_id_offline_is_refused_without_asking_the_hub(
    environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    def asked(*args, **kwargs) -> None:
        pytest.fail("the hub was asked")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", asked)
    environment({"HF_HUB_OFFLINE": "ON"})
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        zoo.resolve("someorg/no-such-model")

"""The shared checking of a harness's ``eval`` settings."""

import pytest

from sam_lightning.evaluation.settings import task_settings

DEFAULTS = {"points_per_side": 64, "max_images": None}


def test_the_config_overrides_the_defaults_and_task_is_not_a_setting():
    settings = task_settings("t", {"task": "t", "points_per_side": 32}, DEFAULTS)
    assert settings == {"points_per_side": 32, "max_images": None}


def test_a_misspelt_setting_is_named():
    with pytest.raises(ValueError, match=r"t: unknown eval settings \['points_per_sides'\]"):
        task_settings("t", {"points_per_sides": 32}, DEFAULTS)


@pytest.mark.parametrize("limit", [0, -3])
def test_max_images_below_one_is_refused(limit):
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        task_settings("t", {"max_images": limit}, DEFAULTS)
    assert task_settings("t", {"max_images": 1}, DEFAULTS)["max_images"] == 1

"""The shared checking of a harness's ``eval`` settings."""

import pytest

from sam_lightning.evaluation.settings import task_settings
from sam_lightning.settings.evaluate import ProposalsSettings
from sam_lightning.settings.schema import defaults


def test_the_config_overrides_the_declared_defaults_and_task_is_not_a_setting():
    settings = task_settings("proposals_lvis", {"task": "x", "points_per_side": 32})
    assert settings == {**defaults(ProposalsSettings), "points_per_side": 32}


def test_a_misspelt_setting_is_named_with_the_closest_names():
    with pytest.raises(ValueError, match=r"eval.points_per_sides: unknown setting; did you mean"):
        task_settings("proposals_lvis", {"points_per_sides": 32})


def test_a_wrong_type_and_an_unknown_task_are_named():
    with pytest.raises(ValueError, match=r"eval.points_per_side=abc: expected an int"):
        task_settings("proposals_lvis", {"points_per_side": "abc"})
    with pytest.raises(ValueError, match=r"unknown eval task 'proposals_voc'"):
        task_settings("proposals_voc", {})


@pytest.mark.parametrize("limit", [0, -3])
def test_max_images_below_one_is_refused(limit):
    with pytest.raises(ValueError, match="max_images must be >= 1"):
        task_settings("points_coco", {"max_images": limit})
    assert task_settings("points_coco", {"max_images": 1})["max_images"] == 1

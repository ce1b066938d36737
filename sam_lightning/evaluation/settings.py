"""The ``eval`` settings of a harness: its defaults overridden by the config, checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def task_settings(
    task: str, eval_cfg: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated with ``eval_cfg`` (its ``task`` key aside).

    Raises:
        ValueError: a setting that ``defaults`` does not have (a misspelt key would otherwise
            be ignored silently), or ``max_images`` below 1 (null means every image).
    """
    given = {key: value for key, value in eval_cfg.items() if key != "task"}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{task}: unknown eval settings {unknown}; known: {sorted(defaults)}")
    settings = {**defaults, **given}
    limit = settings.get("max_images")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"{task}: eval.max_images must be >= 1 or null (all images), got {limit}")
    return settings

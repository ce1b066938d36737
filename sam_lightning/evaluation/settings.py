"""What a harness runs with (:class:`EvalJob`) and its ``eval`` settings: the task's
declared defaults (:mod:`sam_lightning.settings.evaluate`) overridden by the config, checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_lightning.evaluation.item_map import InProcess, ItemMap
from sam_lightning.settings.evaluate import TASKS
from sam_lightning.settings.schema import check_settings, defaults

if TYPE_CHECKING:
    from sam_lightning.modeling.sam import Sam


@dataclass(frozen=True)
class EvalJob:
    """One run of a harness (its ``run_from_config(job) -> metrics``).

    Attributes:
        get_model: builds the model on ``device`` on first call (so a harness can check its
            data first), returns the same model afterwards.
        eval: the ``eval`` block: ``task`` and the task's settings.
        data: the ``data`` block.
        output_dir: where the harness writes its predictions.
        device: where the model is.
        progress: show progress bars.
        sharding: given a task's settings, the :data:`~sam_lightning.evaluation.item_map.ItemMap`
            that runs its images (over ranks, resumable); None: one process, nothing saved.
    """

    get_model: Callable[[], Sam]
    eval: Mapping[str, Any]
    data: Mapping[str, Any]
    output_dir: Path
    device: str = "cpu"
    progress: bool = True
    sharding: Callable[[Mapping[str, Any]], ItemMap] | None = None

    def map_items(self, settings: Mapping[str, Any]) -> ItemMap:
        """What runs the per-image loop of a harness whose settings are ``settings``."""
        if self.sharding is None:
            return InProcess(self.progress)
        return self.sharding(settings)

    def settings(self, default_task: str) -> dict[str, Any]:
        """:func:`task_settings` of ``eval.task`` (``default_task`` when it names none)."""
        return task_settings(self.eval.get("task", default_task), self.eval)


def task_settings(task: str, eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The declared defaults of ``task`` updated with ``eval_cfg`` (its ``task`` key aside).

    Raises:
        ValueError: an unknown task, a setting the task does not declare (a misspelt key
            would otherwise be ignored silently) or of the wrong type, or ``max_images``
            below 1 (null means every image).
    """
    if task not in TASKS:
        raise ValueError(f"unknown eval task {task!r}; one of {', '.join(TASKS)}")
    declaration = TASKS[task][0]
    given = {key: value for key, value in eval_cfg.items() if key != "task"}
    if problems := check_settings(given, declaration, "eval"):
        raise ValueError(f"{task}: " + "; ".join(problems))
    settings = {**defaults(declaration), **given}
    limit = settings.get("max_images")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"{task}: eval.max_images must be >= 1 or null (all images), got {limit}")
    return settings

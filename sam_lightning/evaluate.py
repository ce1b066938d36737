"""Zero-shot evaluation of SAM (paper §7, App. D): ``python -m sam_lightning.evaluate
+eval=<task> model.type=<vit_b|vit_l|vit_h|vit_tiny> model.checkpoint=<path|null> [data.* ...]``.

Configs are ``conf/evaluate.yaml`` and ``conf/eval/<task>.yaml`` (the task's settings and
data). :func:`evaluate` looks the task up in :data:`TASKS`, a registry of harness modules
imported only when used, and calls its adapter ``run_from_config(job) -> metrics`` with an
:class:`~sam_lightning.evaluation.settings.EvalJob` (the ``eval`` and ``data`` blocks, the
run directory, the device and ``get_model``, which builds the model on first call, so a
harness can check its data first). The harness writes its raw predictions under the run
directory (``predictions.json``, ``edges/``); this module writes ``metrics.json`` and logs the
metrics and the resolved config to W&B (``logger.kind: wandb``, offline unless ``logger.mode``
or ``WANDB_MODE`` says otherwise). In a Hydra multirun every job is one W&B run, and all jobs
of a sweep share the group ``sweep_name`` (the sweep directory's name).

Hydra lives only in :func:`main`; :func:`evaluate` takes the resolved config as a plain
mapping and the run directory, so it can be called as a library.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_lightning.distributed import SINGLE_PROCESS, Ranks

if TYPE_CHECKING:
    from sam_lightning.evaluation.item_map import ShardedItemMap
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning.evaluate")

#: ``eval.task`` -> ``"<module>:<adapter>"``; modules are imported when their task runs.
TASKS: dict[str, str] = {
    "points_coco": "sam_lightning.evaluation.points:run_from_config",
    "points_lvis": "sam_lightning.evaluation.points:run_from_config",
    "edges_bsds": "sam_lightning.evaluation.edges:run_from_config",
    "proposals_lvis": "sam_lightning.evaluation.proposals:run_from_config",
    "instances_coco": "sam_lightning.evaluation.instances:run_from_config",
    "instances_lvis": "sam_lightning.evaluation.instances:run_from_config",
    "text_coco": "sam_lightning.evaluation.text:run_from_config",
    "text_refcoco": "sam_lightning.evaluation.text:run_from_config",
}
METRICS_FILE = "metrics.json"
#: The ``model`` settings a resumed run must share with the run it continues.
MANIFEST_MODEL_KEYS = ("type", "checkpoint", "image_size", "text_embed_dim", "lora")

Adapter = Callable[..., dict[str, float]]


class UnknownTaskError(ValueError):
    """``eval.task`` is missing or not one of :data:`TASKS`."""


def load_adapter(task: Any) -> Adapter:
    """The ``run_from_config`` of ``task``; UnknownTaskError lists the tasks."""
    if task not in TASKS:
        raise UnknownTaskError(
            f"unknown eval.task {task!r}; choose one of {', '.join(sorted(TASKS))} "
            "with +eval=<task>"
        )
    module, _, name = TASKS[task].partition(":")
    return getattr(importlib.import_module(module), name)


#: ``data`` keys (all tasks) and ``eval`` keys that name files or directories.
DATA_PATH_KEYS = ("images", "annotations", "detections", "root", "refs", "instances")
EVAL_PATH_KEYS = ("edges_from",)


def missing_paths(config: Mapping[str, Any]) -> list[str]:
    """``<key>=<path>: not found`` for every data, ``eval`` and ``eval.clip.path`` path of
    ``config`` that does not exist (checked before a model or a W&B run is made)."""
    given = [(f"data.{key}", config.get("data", {}).get(key)) for key in DATA_PATH_KEYS]
    eval_cfg = config.get("eval") or {}
    given += [(f"eval.{key}", eval_cfg.get(key)) for key in EVAL_PATH_KEYS]
    clip = eval_cfg.get("clip")
    if isinstance(clip, Mapping):
        given.append(("eval.clip.path", clip.get("path")))
    return [
        f"{key}={value}: not found"
        for key, value in given
        if isinstance(value, str) and value not in ("", "???") and not Path(value).exists()
    ]


def model_factory(model_cfg: Mapping[str, Any], device: str, seed: int = 0) -> Callable[[], Sam]:
    """A zero-argument function that builds ``model.type`` (with ``model.checkpoint``,
    ``model.image_size``, ``model.lora.weights`` and, for text prompts,
    ``model.text_embed_dim``) on ``device`` in
    eval mode on first call and returns that model afterwards. Without a checkpoint the
    weights are random (seeded), and a warning says so."""

    @functools.cache
    def get_model() -> Sam:
        from sam_lightning.entry_points import build_model

        return build_model(
            model_cfg["type"],
            model_cfg.get("checkpoint"),
            model_cfg["image_size"],
            device,
            text_embed_dim=model_cfg.get("text_embed_dim"),
            seed=seed,
            lora_weights=(model_cfg.get("lora") or {}).get("weights"),
        )

    return get_model


def start_wandb(settings: Mapping[str, Any], run_dir: Path, config: Mapping[str, Any]) -> Any:
    """A W&B run under ``run_dir/wandb`` for ``logger.kind: wandb`` (None for ``none``), with
    the resolved ``config``. The mode is ``logger.mode``, else ``$WANDB_MODE``, else offline."""
    kind = settings.get("kind", "wandb")
    if kind == "none":
        return None
    if kind != "wandb":
        raise ValueError(f"logger.kind must be 'wandb' or 'none', got {kind!r}")
    import wandb

    return wandb.init(
        project=settings.get("project", "sam_lightning"),
        group=settings.get("group"),
        name=settings.get("name"),
        dir=str(run_dir),
        mode=settings.get("mode") or os.environ.get("WANDB_MODE") or "offline",
        config=dict(config),
    )


def metrics_json(metrics: Mapping[str, float]) -> bytes:
    """``metrics`` as JSON, a non-finite value (e.g. R50 when precision never reaches 50%)
    written as ``null``, since JSON has no NaN."""
    finite = {name: value if math.isfinite(value) else None for name, value in metrics.items()}
    return json.dumps(finite, indent=2).encode()


def evaluate(
    config: Mapping[str, Any],
    run_dir: str | os.PathLike[str],
    ranks: Ranks = SINGLE_PROCESS,
    device: str | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, float] | None:
    """Runs the task of the resolved ``config`` (the layout of ``conf/evaluate.yaml`` with an
    ``eval`` group), writes ``run_dir/metrics.json`` (atomically) and the task's predictions,
    logs to W&B as ``logger`` says (no ``logger`` key: no W&B); returns the metrics.

    The images are spread over ``ranks`` (this process alone by default) and committed in
    chunks under ``run_dir/_progress`` (:mod:`~sam_lightning.evaluation.item_map`):
    ``resume: true`` continues an unfinished run. Rank 0 merges the predictions, computes
    the metrics, writes the files and keeps the one W&B run; other ranks return None.
    ``device`` is where the model goes (default: ``config["device"]``).

    Raises:
        UnknownTaskError: ``eval`` or ``eval.task`` is missing or not a known task.
        FileNotFoundError: a data path (:func:`missing_paths`) does not exist.
        ResumeError: ``run_dir`` holds an unfinished run and ``resume`` is false, or a
            finished part of one with other settings.
        RankError: another rank failed or went silent.
    """
    import torch

    from sam_lightning.entry_points import resolve_device
    from sam_lightning.evaluation.settings import EvalJob
    from sam_lightning.file_io import write_atomic

    eval_cfg = config.get("eval")
    if not isinstance(eval_cfg, Mapping) or "task" not in eval_cfg:
        raise UnknownTaskError(f"no eval task given: pass +eval=<task>, one of {sorted(TASKS)}")
    task = eval_cfg["task"]
    adapter = load_adapter(task)
    if problems := missing_paths(config):
        raise FileNotFoundError("; ".join(problems))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = device or resolve_device(config.get("device", "auto"))
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    get_model = model_factory(config["model"], device, seed)
    logger = config.get("logger", {"kind": "none"}) if ranks.is_zero else {"kind": "none"}
    run = start_wandb(logger, run_dir, config)
    failed = True
    try:
        job = EvalJob(
            get_model,
            eval_cfg,
            config.get("data", {}),
            run_dir,
            device,
            progress=bool(config.get("progress", True)),
            sharding=functools.partial(_sharding, config, run_dir, ranks, autocast),
        )
        metrics = adapter(job)
        if ranks.is_zero:
            metrics = {name: float(value) for name, value in metrics.items()}
            write_atomic(run_dir / METRICS_FILE, metrics_json(metrics))
            if run is not None:
                run.log(metrics)
            log.info("%s metrics in %s: %s", task, run_dir / METRICS_FILE, metrics)
        failed = False
    finally:
        if run is not None:  # one W&B run per job, also in a Hydra multirun
            run.finish(exit_code=int(failed))
    return metrics if ranks.is_zero else None


def _sharding(
    config: Mapping[str, Any],
    run_dir: Path,
    ranks: Ranks,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    settings: Mapping[str, Any],
) -> ShardedItemMap:
    """The item map of a harness with ``settings``: its manifest is what makes the items
    and their values (a resume must have the same)."""
    from sam_lightning.evaluation.item_map import ShardedItemMap

    model = {key: config["model"].get(key) for key in MANIFEST_MODEL_KEYS}
    return ShardedItemMap(
        run_dir,
        manifest={
            "task": config["eval"]["task"],
            "eval": dict(settings),
            "data": dict(config.get("data", {})),
            "model": model,
            "seed": int(config.get("seed", 0)),
        },
        ranks=ranks,
        resume=bool(config.get("resume", False)),
        commit_every=int(config.get("commit_every", 16)),
        num_workers=int(config.get("num_workers", 0)),
        timeout_s=float(config.get("timeout_s", 1800.0)),
        progress=bool(config.get("progress", True)),
        autocast=autocast,
    )


def run_launched(config: dict[str, Any], run_dir: str | os.PathLike[str]) -> int:
    """Launches the job on the devices of the config's launch keys
    (:func:`~sam_lightning.distributed.launch_fabric`) and runs :func:`evaluate` on every
    rank; returns the exit status: 0 done, 1 a rank failed, 2 bad settings or a run
    directory that cannot be continued."""
    from sam_lightning.distributed import LaunchError, RankError, fabric_ranks, launch_fabric
    from sam_lightning.entry_points import log_per_rank, multirun_spawn_problem
    from sam_lightning.evaluation.item_map import ResumeError

    try:
        load_adapter(config.get("eval", {}).get("task"))
        if problems := missing_paths(config):
            raise FileNotFoundError("; ".join(problems))
        if problem := multirun_spawn_problem(int(config.get("devices", 1))):
            raise LaunchError(problem)
        fabric = launch_fabric(
            config.get("device", "auto"),
            config.get("accelerator", "auto"),
            int(config.get("devices", 1)),
            int(config.get("num_nodes", 1)),
            config.get("strategy", "auto"),
            config.get("precision", "32-true"),
            float(config.get("timeout_s", 1800.0)),
        )
        ranks = fabric_ranks(fabric)
        log_per_rank("evaluate", ranks.rank, ranks.world_size)
        evaluate(config, run_dir, ranks, str(fabric.device), fabric.autocast)
    except RankError as error:
        log.error("%s", error)
        return 1
    except (UnknownTaskError, LaunchError, ResumeError, FileNotFoundError) as error:
        log.error("%s", error)
        return 2
    return 0


def _lacks_task(args: list[str]) -> bool:
    """Whether the command line selects no task (no ``+eval=...``). Hydra's own flags
    (``--help``, ``--cfg``, ...) are left for Hydra to answer."""
    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in args):
        return False
    return not any(re.match(r"\+{0,2}eval=", arg) for arg in args)


def _job_logger(config: dict[str, Any]) -> None:
    """Fills in the W&B group and run name left null (see ``conf/evaluate.yaml``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    settings = config["logger"]
    name = f"{config['eval']['task']}_{config['model']['type']}"
    if hydra_cfg.mode == RunMode.MULTIRUN:
        settings["group"] = settings.get("group") or Path(hydra_cfg.sweep.dir).name
        name += f"_{hydra_cfg.job.num}"
    settings["name"] = settings.get("name") or name


def main() -> int:
    """``python -m sam_lightning.evaluate +eval=<task> [key=value ...]``; the exit status is 2
    without a known task or with a required value (``???``, e.g. ``data.images``) unset."""
    from sam_lightning.extras import require_extra

    require_extra("python -m sam_lightning.evaluate", "eval")
    from omegaconf import DictConfig, OmegaConf

    from sam_lightning.entry_points import hydra_main
    from sam_lightning.settings import evaluate as settings

    if _lacks_task(sys.argv[1:]):
        print(
            f"error: choose a task with +eval=<task>, one of {', '.join(sorted(TASKS))}, e.g.\n"
            "  python -m sam_lightning.evaluate +eval=points_coco model.type=vit_h "
            "model.checkpoint=sam_vit_h_4b8939.pth data.images=<dir> data.annotations=<json>",
            file=sys.stderr,
        )
        return 2

    def run(cfg: DictConfig) -> int:
        from hydra.core.hydra_config import HydraConfig

        config = OmegaConf.to_container(cfg, resolve=True)
        _job_logger(config)
        return run_launched(config, HydraConfig.get().runtime.output_dir)

    return hydra_main("evaluate", run, settings.EvaluateSettings, settings.check)


if __name__ == "__main__":
    sys.exit(main())

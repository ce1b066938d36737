"""Training and fine-tuning of SAM: ``python -m sam_lightning.train +exp=<name> [overrides]``.

Configs are ``conf/train.yaml`` and its groups (``model/``, ``data/``, ``trainer/``,
``logger/``, ``optim/``, ``exp/``). Hydra lives only in :func:`main`; :func:`train` takes the
resolved config as a plain mapping and the run directory, so it can be called as a library.
The run directory (``hydra.run.dir``, by default ``outputs/train/<run_name>``) holds the
resolved config, ``checkpoints/`` (``last.ckpt`` and the best by ``val/miou_1pt``, or by
``val/student_teacher_miou`` when distilling: ``distill.*``), the
logs (one ``csv/version_0/metrics.csv``, continued by a resumed run) and, at the end of
``fit``, ``metrics.json`` with the final metrics.

``resume``: ``false`` starts from scratch; ``true`` continues from ``checkpoints/last.ckpt``
and starts from scratch, with a warning naming it, when there is none; ``must`` refuses to
start without it (:class:`StartError`, exit status 2). ``ckpt_path`` continues from that
file in any case. A missing data path, model checkpoint or ``ckpt_path`` is refused the same
way, before anything is built.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("sam_lightning.train")


class StartError(ValueError):
    """A training run that cannot start (a missing path, ``resume=must`` without a
    checkpoint); ``lines`` are its problems, one a line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def build_loggers(
    settings: Mapping[str, Any], run_dir: Path, config: Mapping[str, Any], start_step: int = 0
) -> list:
    """Lightning loggers for ``logger.kind`` ``csv`` or ``wandb`` (which also logs the
    resolved config; ``WANDB_MODE=offline``/``disabled`` is honoured by wandb itself). The
    CSV log is ``<run_dir>/csv/version_0/metrics.csv``, continued from global step
    ``start_step`` (:class:`~sam_lightning.training.checkpointing.ContinuedCSVLogger`)."""
    from lightning.pytorch.loggers import WandbLogger

    from sam_lightning.training.checkpointing import ContinuedCSVLogger

    kind = settings.get("kind", "csv")
    if kind == "csv":
        return [ContinuedCSVLogger(run_dir, name="csv", start_step=start_step)]
    if kind == "wandb":
        logger = WandbLogger(
            project=settings.get("project", "sam_lightning"),
            group=settings.get("group"),
            name=settings.get("name"),
            save_dir=str(run_dir),
        )
        logger.log_hyperparams(dict(config))
        return [logger]
    raise ValueError(f"logger.kind must be 'csv' or 'wandb', got {kind!r}")


def build_strategy(spec: Any) -> Any:
    """``trainer.strategy``: a Lightning strategy name as is, or ``{"name": "fsdp",
    "sharding_strategy": ...}``, which wraps every encoder and decoder block as one FSDP unit
    (with the original parameters, so the layer-decay parameter groups stay valid)."""
    if not isinstance(spec, Mapping):
        return spec
    settings = dict(spec)
    name = settings.pop("name", None)
    if name != "fsdp":
        raise ValueError(f"trainer.strategy mapping needs name: fsdp, got {name!r}")
    from lightning.pytorch.strategies import FSDPStrategy

    from sam_lightning.modeling.image_encoder import Block
    from sam_lightning.modeling.transformer import TwoWayAttentionBlock

    return FSDPStrategy(
        auto_wrap_policy={Block, TwoWayAttentionBlock},
        state_dict_type="full",
        use_orig_params=True,
        **settings,
    )


def _resume_path(config: Mapping[str, Any], checkpoints: Path) -> tuple[str | None, str | None]:
    """The checkpoint to continue from (None: from scratch), and the problem that stops the
    run (``resume=must`` without a checkpoint, a missing ``ckpt_path``) or None."""
    from sam_lightning.training.checkpointing import LAST_CHECKPOINT

    resume = config.get("resume", False)
    if not (isinstance(resume, bool) or resume == "must"):
        raise ValueError(f"resume must be false, true or must, got {resume!r}")
    if config.get("ckpt_path"):
        path = Path(config["ckpt_path"])
        if not path.is_file():
            return None, f"ckpt_path={path}: no such checkpoint file"
        return str(path), None
    last = checkpoints / LAST_CHECKPOINT
    if not resume:
        if last.is_file():
            log.warning(
                "resume=false: starting from scratch; %s and the logs of the run directory "
                "will be overwritten (resume=true continues from it)",
                last,
            )
        return None, None
    if last.is_file():
        return str(last), None
    if resume == "must":
        return None, f"resume=must: no checkpoint to continue from, {last} does not exist"
    log.warning(
        "resume=true: no checkpoint at %s, starting from scratch (resume=must refuses to)",
        last,
    )
    return None, None


def start_problems(config: Mapping[str, Any], run_dir: Path) -> tuple[str | None, list[str]]:
    """What :func:`train` checks before building anything: the checkpoint to continue from
    (see :func:`_resume_path`) and the problems that stop the run, one a line: each missing
    data path (:func:`~sam_lightning.data.datamodule.missing_paths`), a missing
    ``model.checkpoint`` or ``ckpt_path``, ``resume=must`` without a checkpoint."""
    from sam_lightning.data.datamodule import missing_paths

    data = config.get("data") or {}
    problems = missing_paths(data.get("train"), data.get("val"))
    checkpoint = (config.get("model") or {}).get("checkpoint")
    if checkpoint is not None and not Path(str(checkpoint)).is_file():
        problems.append(f"model.checkpoint={checkpoint}: no such file")
    if (config.get("training") or {}).get("embedding_cache"):
        from sam_lightning.training.embedding_cache import cache_problems

        lsj = bool(data.get("lsj", False))
        problems += [f"training.embedding_cache: {p}" for p in cache_problems(lsj=lsj)]
    distill = config.get("distill") or {}
    teacher = distill.get("teacher_checkpoint")
    if distill and not Path(str(teacher)).is_file():
        problems.append(f"distill.teacher_checkpoint={teacher}: no such file")
    if distill.get("teacher_cache") and data.get("lsj"):
        problems.append(
            "distill.teacher_cache: large-scale jitter is on: data.lsj=true changes the "
            "image (scale and crop) every epoch, so cached teacher embeddings never repeat"
        )
    adapter = ((config.get("model") or {}).get("lora") or {}).get("weights")
    if adapter is not None and not Path(str(adapter)).is_file():
        problems.append(f"model.lora.weights={adapter}: no such file")
    resume_from, problem = _resume_path(config, run_dir / "checkpoints")
    if problem:
        problems.append(problem)
    return resume_from, problems


def train(config: Mapping[str, Any], run_dir: str | Path) -> dict[str, float]:
    """Trains with the resolved ``config`` (the layout of ``conf/train.yaml``), writing
    everything under ``run_dir``; returns the final metrics (also in ``metrics.json``)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sam_lightning.data.datamodule import SamDataModule
    from sam_lightning.file_io import write_atomic
    from sam_lightning.training.checkpointing import (
        AtomicCheckpointIO,
        SaveLast,
        checkpoint_step,
    )
    from sam_lightning.training.module import SamTrainingModule

    run_dir = Path(run_dir)
    resume_from, problems = start_problems(config, run_dir)
    if problems:
        raise StartError(problems)
    start_step = 0
    if resume_from is not None:
        start_step = checkpoint_step(resume_from)
        log.info("continuing from %s (step %d)", resume_from, start_step)
    model, optim, training = config["model"], config["optim"], config["training"]
    L.seed_everything(int(config["seed"]), workers=True)
    datamodule = SamDataModule(
        **config["data"], image_size=int(model["image_size"]), seed=int(config["seed"])
    )
    common = {
        "model_type": model["type"],
        "checkpoint": model["checkpoint"],
        "image_size": int(model["image_size"]),
        "seed": int(config["seed"]),
    }
    if config.get("distill"):
        from sam_lightning.training.distillation import DistillationModule

        module = DistillationModule(
            **common,
            **config["distill"],
            **optim,
            drop_path_rate=training["drop_path_rate"],
            activation_checkpointing=training["activation_checkpointing"],
        )
        monitor = "val/student_teacher_miou"
    else:
        module = SamTrainingModule(**common, lora=model.get("lora"), **optim, **training)
        monitor = "val/miou_1pt"
    checkpoints = run_dir / "checkpoints"
    best = ModelCheckpoint(dirpath=checkpoints, filename="best-{step}", monitor=monitor, mode="max")
    last = SaveLast(checkpoints, every_n_steps=int(config["checkpoint"]["every_n_steps"]))
    loggers = build_loggers(config["logger"], run_dir, config, start_step)
    trainer = L.Trainer(
        default_root_dir=run_dir,
        logger=loggers,
        callbacks=[best, last],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # SamDataModule splits the data across ranks itself
        **{**config["trainer"], "strategy": build_strategy(config["trainer"]["strategy"])},
    )
    before: dict[str, float] = {}
    if config.get("validate_before") and resume_from is None:
        (results,) = trainer.validate(module, datamodule=datamodule, verbose=False)
        before = {f"before/{name}": float(value) for name, value in results.items()}
        # The metrics' states now hold inference-mode tensors, which fit cannot update.
        for metric in module.val_ious.values():
            metric.reset()
        log.info("before training: %s", before)
    started = time.perf_counter()
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=resume_from,
        weights_only=True,  # AtomicCheckpointIO loads with weights_only=True in any case
    )
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if module.validated_at_step != trainer.global_step and trainer.limit_val_batches != 0:
        # The last steps came after the last validation: validate the final weights, so
        # that metrics.json describes the model the run ends with.
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update((name, float(value)) for name, value in trainer.callback_metrics.items())
    metrics["step"] = trainer.global_step
    metrics["fit_seconds"] = time.perf_counter() - started
    metrics.update(before)
    for logger in loggers:  # one W&B run per job, also in a Hydra multirun
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    if trainer.is_global_zero:
        write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
        log.info("final metrics in %s: %s", run_dir / "metrics.json", metrics)
    return metrics


def main() -> int:
    """``python -m sam_lightning.train +exp=<name> [key=value ...]``; the exit status is 2
    when a setting is unknown or has a wrong value, or a required setting (``???`` or an
    experiment's ``${sam_required:...}``, e.g. ``model.checkpoint`` or ``data.train.roots``)
    is not given, or the run cannot start (:class:`StartError`: a missing path,
    ``resume=must`` without a checkpoint), with one line per problem on stderr."""
    from sam_lightning.extras import require_extra

    require_extra("python -m sam_lightning.train", "train")
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from sam_lightning.entry_points import hydra_main
    from sam_lightning.settings import train as settings

    def run(cfg: DictConfig) -> int:
        config = OmegaConf.to_container(cfg, resolve=True)
        try:
            train(config, HydraConfig.get().runtime.output_dir)
        except StartError as error:
            for line in error.lines:
                print(f"error: {line}", file=sys.stderr)
            return 2
        return 0

    return hydra_main("train", run, settings.TrainSettings, settings.check)


if __name__ == "__main__":
    sys.exit(main())

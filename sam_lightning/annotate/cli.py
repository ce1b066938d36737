"""``python -m sam_lightning.annotate``: the annotation tool from the command line.

Usage::

    python -m sam_lightning.annotate images=<dir> output=<dir> model.type=vit_b \\
        model.checkpoint=<path|null> [mode=manual|semi] [server.port=8765] \\
        [server.host=127.0.0.1] [server.token=...] [annotator=<name>]
    python -m sam_lightning.annotate ... precompute=true   # embed the folder, then exit

Settings are the Hydra config ``conf/annotate.yaml``. Exit status: 0, 1 (precompute could
not read some images), 2 (bad arguments, unsafe bind, port taken). Library use:
:func:`build_tool` and :func:`run_annotate` take plain arguments; Hydra lives in :func:`main`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sam_lightning.annotate.tool import AnnotationTool

log = logging.getLogger("sam_lightning.annotate")


def build_tool(
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model_type: str = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int = 1024,
    device: str = "auto",
    mode: str = "manual",
    annotator: str = "annotator",
    session: str | None = None,
    memory_cache: int = 8,
    disk_cache: bool = True,
    semi_source: str = "generator",
    semi_options: dict[str, Any] | None = None,
    lora_weights: str | os.PathLike[str] | None = None,
) -> AnnotationTool:
    """Builds the model (random weights, seeded, without ``checkpoint``; ``lora_weights``: an
    adapter file merged into ``checkpoint``), the confident-mask
    source for ``mode="semi"`` (see :mod:`sam_lightning.annotate.semi`) and the tool."""
    from sam_lightning.annotate.semi import build_mask_source
    from sam_lightning.annotate.tool import MODES, AnnotationTool
    from sam_lightning.entry_points import build_model

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not Path(images).is_dir():
        raise FileNotFoundError(f"images: not a directory: {images}")
    model = build_model(model_type, checkpoint, image_size, device, lora_weights=lora_weights)
    source = None
    if mode == "semi":
        source = build_mask_source(model, semi_source, dict(semi_options or {}))
    return AnnotationTool(
        images,
        output,
        model,
        mode=mode,
        annotator=annotator,
        session=session,
        memory_cache=memory_cache,
        disk_cache=disk_cache,
        mask_source=source,
    )


def run_annotate(
    images: str | os.PathLike[str],
    output: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    precompute: bool = False,
    progress: bool = True,
    **options: Any,
) -> int:
    """Serves the tool (until Ctrl+C) or, with ``precompute``, embeds every image and
    returns. ``options`` go to :func:`build_tool`. Returns the exit status."""
    from sam_lightning.annotate.server import check_bind, serve

    if not precompute:
        check_bind(host, token)  # before building a large model
    elif not options.get("disk_cache", True):
        raise ValueError("precompute=true fills the disk cache: it needs cache.disk=true")
    tool = build_tool(images, output, **options)
    if precompute:
        counts = tool.precompute(progress)
        log.info(
            "precompute: %d images, %d embedded, %d already cached, %d pre-filled masks, "
            "%d failed; cache in %s",
            counts["images"],
            counts["computed"],
            counts["cached"],
            counts["prefilled"],
            counts["failed"],
            tool.engine.cache_dir,
        )
        return 1 if counts["failed"] else 0
    serve(tool, host, port, token)
    return 0


def run_from_config(cfg: DictConfig) -> int:
    """Runs the composed ``conf/annotate.yaml``; returns the exit status."""
    from omegaconf import OmegaConf

    try:
        return run_annotate(
            cfg.images,
            cfg.output,
            host=cfg.server.host,
            port=cfg.server.port,
            token=None if cfg.server.token is None else str(cfg.server.token),
            precompute=cfg.precompute,
            progress=cfg.progress,
            model_type=cfg.model.type,
            checkpoint=cfg.model.checkpoint,
            image_size=cfg.model.image_size,
            lora_weights=cfg.model.lora.weights,
            device=cfg.device,
            mode=cfg.mode,
            annotator=str(cfg.annotator),
            session=None if cfg.session is None else str(cfg.session),
            memory_cache=cfg.cache.memory,
            disk_cache=cfg.cache.disk,
            semi_source=str(cfg.semi.source),
            semi_options=OmegaConf.to_container(cfg.semi.generator, resolve=True),
        )
    except (FileNotFoundError, ValueError, OSError) as error:
        log.error("%s", error)
        return 2


def main() -> int:
    """``python -m sam_lightning.annotate key=value ...`` (overrides of ``conf/annotate.yaml``)."""
    from sam_lightning.extras import require_extra

    require_extra("python -m sam_lightning.annotate", "annotate")
    from sam_lightning.entry_points import hydra_main
    from sam_lightning.settings import annotate

    example = (
        "python -m sam_lightning.annotate images=<dir> output=<dir> "
        "model.type=vit_b model.checkpoint=<sam_vit_b_01ec64.pth> [mode=semi]"
    )
    return hydra_main(
        "annotate",
        run_from_config,
        annotate.AnnotateSettings,
        annotate.check,
        ("images", "output"),
        example,
    )

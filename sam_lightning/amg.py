"""The data engine's fully automatic stage: masks for every image of a folder, written as
SA-1B annotation files, on one device or many.

Usage::

    python -m sam_lightning.amg input=photos/ output=masks/ \\
        model.checkpoint=sam_vit_h_4b8939.pth [amg=sa1b] [device=cuda] [recursive=true]
    python -m sam_lightning.amg ... accelerator=gpu devices=8 [num_nodes=2]

``input`` is a directory of images (jpg, jpeg, png, bmp, tif, tiff, webp; sorted, not
recursive unless ``recursive=true``), a text file listing image paths (one per line, relative
to the list file; blank lines and ``#`` comments skipped) or one image
(:mod:`sam_lightning.data.image_folder`). Each image ``x.jpg`` gives ``<output>/x.json``
(``<output>/sub/x.json`` for ``sub/x.jpg`` with ``recursive``) in the SA-1B layout of
:mod:`sam_lightning.data.sa1b`, written atomically; ``image.file_name`` is the image's path
relative to ``input`` (to the list file's directory for lists, absolute outside it), so
``SA1BDataset(output, image_root=input)`` reads the result back.

Image ids: ``sa_<n>`` keeps ``n``; other names get a hash of their output name, stable
across runs (:func:`~sam_lightning.data.sa1b.sa1b_image_id`). Annotation ids are
``image_id * 2**16 + index``, unique within the output.

Many devices (:mod:`sam_lightning.distributed`): the launch keys of
``conf/launch/default.yaml``; each image goes to exactly one rank, and the files do not
depend on the world size. Images are read and decoded in ``num_workers`` DataLoader
processes per rank.

Reruns resume, at any world size: images whose JSON exists and parses are skipped, and
temporary files of an interrupted write are removed. Unreadable images are logged, skipped
and listed in ``<output>/_summary.json`` (which gathers every rank's counts); the exit status
is then 1 (2 for bad arguments). Hydra's resolved config and logs (one per rank) go to
``<output>/_logs/``, the ranks' progress files to ``<output>/_logs/ranks/``.

Library use: :func:`run_amg` (builds the model and generator from plain arguments) and
:func:`generate_folder` (runs any generator); Hydra lives only in :func:`main`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sam_lightning.amg_summary import (
    AmgSummary,
    counts,
    log_summary,
    merge_ranks,
    show_progress,
)
from sam_lightning.data.image_folder import ImageJob, ImageReader, as_is, collect_images
from sam_lightning.data.sa1b import (
    LOGS_DIR,
    SUMMARY_NAME,
    make_sa1b_document,
    read_sa1b_json,
    sa1b_image_id,
    write_sa1b_json,
)
from sam_lightning.distributed import (
    SINGLE_PROCESS,
    RankProgress,
    Ranks,
    new_run_id,
    wait_for_ranks,
)
from sam_lightning.file_io import DEFAULT_MAX_IMAGE_PIXELS, remove_temp_files, write_atomic

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sam_lightning.inference.automatic import SamAutomaticMaskGenerator

log = logging.getLogger("sam_lightning.amg")  # not "__main__" under python -m

#: Where the ranks' progress files go, under ``output``.
PROGRESS_DIR = Path(LOGS_DIR, "ranks")


class MaskGenerator(Protocol):
    """What :func:`generate_folder` needs: ``generate(image HxWx3 uint8) -> records`` with
    COCO RLE segmentations (``SamAutomaticMaskGenerator(..., output_mode="coco_rle")``);
    ``generate_batch(images) -> records per image``, if it has one, for
    ``images_per_batch > 1``."""

    def generate(self, image: Any) -> list[dict[str, Any]]: ...


def _is_done(target: Path) -> bool:
    """Whether ``target`` exists and parses as an SA-1B file (a broken one is redone)."""
    if not target.is_file():
        return False
    try:
        read_sa1b_json(target)
    except (OSError, ValueError) as error:
        log.warning("recomputing %s: the existing file is unreadable (%s)", target, error)
        return False
    return True


def generate_folder(
    generator: MaskGenerator,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    recursive: bool = False,
    progress: bool = True,
    num_workers: int = 2,
    ranks: Ranks = SINGLE_PROCESS,
    timeout_s: float = 1800.0,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    images_per_batch: int = 1,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> AmgSummary:
    """Runs ``generator`` on every image of ``input`` and writes ``<output>/<name>.json``
    (SA-1B layout), skipping images done by an earlier run; rank 0 writes ``_summary.json``
    and returns the whole job's summary (other ranks return their own counts).

    Images are read in ``num_workers`` DataLoader processes and, with ``images_per_batch >
    1`` and a generator that has ``generate_batch``, embedded that many at a time (the
    records may then differ in the last float bits, see
    :meth:`~sam_lightning.inference.automatic.SamAutomaticMaskGenerator.generate_batch`).
    With several ``ranks``, each
    takes every N-th image still to do; rank 0 waits for the others through their progress
    files, at most ``timeout_s`` without news from one. Unreadable images, and those with
    more than ``max_image_pixels`` pixels (None: no limit), are logged and listed in
    ``summary.failed``, and so are images the generator refuses with a ValueError (see
    :func:`_process`); other errors of the generator propagate (files written so far stay,
    a rerun resumes).

    Raises:
        FileNotFoundError, ValueError: see :func:`collect_images`; ValueError also if the
            generator does not return COCO RLEs.
        RankError: another rank failed or went silent.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if images_per_batch < 1:
        raise ValueError(f"images_per_batch must be at least 1, got {images_per_batch}")
    mode = getattr(generator, "output_mode", "coco_rle")
    if mode != "coco_rle":
        raise ValueError(f"the generator must use output_mode='coco_rle', not {mode!r}")
    jobs, root = collect_images(input, recursive, output)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if ranks.is_zero:  # before the collective below, so no rank is writing yet
        if removed := remove_temp_files(output, recursive):
            log.info("removed %d temporary files of an interrupted run from %s", removed, output)
        shutil.rmtree(output / PROGRESS_DIR, ignore_errors=True)
    todo = [i for i in ranks.shard(range(len(jobs))) if not _is_done(_target(output, jobs[i]))]
    gathered = ranks.all_gather((todo, new_run_id() if ranks.is_zero else None))
    pending, run_id = sorted(i for part, _ in gathered for i in part), gathered[0][1]
    summary = AmgSummary(str(input), str(output), str(root), images=len(jobs))
    summary.skipped, summary.world_size = len(jobs) - len(pending), ranks.world_size
    mine = [jobs[i] for i in ranks.shard(pending)]
    tracker = RankProgress(output / PROGRESS_DIR, run_id, ranks, total=len(mine))
    start = time.perf_counter()
    try:
        with (
            logging_redirect_tqdm(),
            tqdm(
                total=len(pending),
                desc="amg",
                unit="img",
                disable=not (progress and ranks.is_zero),
            ) as bar,
        ):
            batch: list[tuple[ImageJob, Any]] = []

            def run_batch() -> None:
                with autocast():
                    _process(generator, batch, output, summary)
                for _ in batch:
                    tracker.advance(counts(summary))
                show_progress(bar, summary, tracker.done_everywhere())
                batch.clear()

            for index, image, reason in _image_loader(mine, num_workers, max_image_pixels):
                if image is None:
                    log.error("skipping image %s: %s", mine[index].path, reason)
                    summary.failed.append({"image": str(mine[index].path), "error": str(reason)})
                    tracker.advance(counts(summary))
                    continue
                batch.append((mine[index], image))
                if len(batch) == images_per_batch:
                    run_batch()
            if batch:
                run_batch()
            tracker.finish(counts(summary))
            if ranks.is_zero and ranks.world_size > 1:
                states = wait_for_ranks(
                    output / PROGRESS_DIR,
                    run_id,
                    ranks.world_size,
                    timeout_s,
                    on_progress=lambda done: show_progress(bar, summary, done),
                )
                merge_ranks(summary, states, jobs)
        summary.completed = True
    except BaseException as error:
        tracker.finish(counts(summary), error=f"{type(error).__name__}: {error}")
        raise
    finally:
        summary.seconds = round(time.perf_counter() - start, 3)
        if ranks.is_zero:
            write_atomic(output / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2).encode())
            log_summary(summary)
    return summary


def _target(output: Path, job: ImageJob) -> Path:
    return output / f"{job.name}.json"


def _image_loader(jobs: list[ImageJob], num_workers: int, max_image_pixels: int | None) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(
        ImageReader(jobs, max_image_pixels),
        batch_size=None,
        collate_fn=as_is,
        num_workers=num_workers if jobs else 0,
        prefetch_factor=2 if num_workers and jobs else None,
    )


def _process(
    generator: MaskGenerator,
    batch: list[tuple[ImageJob, Any]],
    output: Path,
    summary: AmgSummary,
) -> None:
    """Generates and writes the masks of a batch of decoded images. An image the generator
    refuses with a ValueError (one it cannot process, e.g. empty crop windows of an image a
    few pixels wide) is logged, listed in ``summary.failed`` and skipped; a batch with one
    is redone image by image."""
    images = [image for _, image in batch]
    if len(images) > 1 and hasattr(generator, "generate_batch"):
        try:
            per_image = generator.generate_batch(images)
        except ValueError:
            per_image = [_generate_one(generator, job, image, summary) for job, image in batch]
    else:
        per_image = [_generate_one(generator, job, image, summary) for job, image in batch]
    for (job, image), records in zip(batch, per_image):
        if records is None:
            continue
        height, width = image.shape[:2]
        image_id = sa1b_image_id(job.name)
        document = make_sa1b_document(records, image_id, width, height, job.file_name)
        write_sa1b_json(_target(output, job), document)
        summary.written += 1
        summary.masks += len(records)


def _generate_one(
    generator: MaskGenerator, job: ImageJob, image: Any, summary: AmgSummary
) -> list[dict[str, Any]] | None:
    """The generator's records for one image, or None (logged and listed in
    ``summary.failed``) if it refuses the image with a ValueError."""
    try:
        return generator.generate(image)
    except ValueError as error:
        height, width = image.shape[:2]
        reason = f"mask generation failed for this {width}x{height} image: {error}"
        log.error("skipping image %s: %s", job.path, reason)
        summary.failed.append({"image": str(job.path), "error": reason})
        return None


def build_generator(
    model_type: str = "vit_h",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    image_size: int = 1024,
    lora_weights: str | os.PathLike[str] | None = None,
    **options: Any,
) -> SamAutomaticMaskGenerator:
    """The model (random weights, seeded, without ``checkpoint``; ``image_size`` is the
    encoder's input side, 1024 for the official weights; ``lora_weights``: an adapter file
    merged into ``checkpoint``) and a generator with
    ``output_mode="coco_rle"`` and the given ``SamAutomaticMaskGenerator`` ``options``
    (``point_grids`` may be nested lists)."""
    import numpy as np

    from sam_lightning.entry_points import build_model
    from sam_lightning.inference.automatic import SamAutomaticMaskGenerator

    accepted = set(inspect.signature(SamAutomaticMaskGenerator).parameters) - {"model"}
    unknown = sorted(set(options) - (accepted - {"output_mode"}))
    if unknown:
        raise ValueError(
            f"unknown generator options {unknown} (output_mode is always coco_rle); "
            f"choose from {sorted(accepted - {'output_mode'})}"
        )
    if options.get("point_grids") is not None:
        options["point_grids"] = [np.asarray(g, dtype=np.float64) for g in options["point_grids"]]
    model = build_model(model_type, checkpoint, image_size, device, lora_weights=lora_weights)
    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **options)


def run_amg(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model_type: str = "vit_h",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    recursive: bool = False,
    progress: bool = True,
    image_size: int = 1024,
    num_workers: int = 2,
    images_per_batch: int = 1,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    **options: Any,
) -> AmgSummary:
    """Builds the generator (:func:`build_generator`) and runs :func:`generate_folder` in
    this process. ``options`` are ``SamAutomaticMaskGenerator`` parameters
    (``conf/amg/*.yaml``)."""
    collect_images(input, recursive, output)  # fail before building a large model
    generator = build_generator(model_type, checkpoint, device, image_size, **options)
    return generate_folder(
        generator,
        input,
        output,
        recursive,
        progress,
        num_workers,
        images_per_batch=images_per_batch,
        max_image_pixels=max_image_pixels,
    )


def run_from_config(cfg: DictConfig) -> int:
    """Runs the composed ``conf/amg.yaml`` on the devices its launch keys name; returns the
    exit status (0 done, 1 images failed or the run was interrupted, 2 bad input or
    configuration). Ranks other than 0 return 0 unless they fail: rank 0 reports the job."""
    from omegaconf import OmegaConf

    from sam_lightning.distributed import LaunchError, RankError, fabric_ranks, launch_fabric
    from sam_lightning.entry_points import log_per_rank, multirun_spawn_problem

    options = OmegaConf.to_container(cfg.amg, resolve=True)
    try:
        collect_images(cfg.input, cfg.recursive, cfg.output)  # before starting processes
        if problem := multirun_spawn_problem(cfg.devices):
            raise LaunchError(problem)
        fabric = launch_fabric(
            cfg.device,
            cfg.accelerator,
            cfg.devices,
            cfg.num_nodes,
            cfg.strategy,
            cfg.precision,
            cfg.timeout_s,
        )
        ranks = fabric_ranks(fabric)
        log_per_rank("amg", ranks.rank, ranks.world_size)
        generator = build_generator(
            cfg.model.type,
            cfg.model.checkpoint,
            str(fabric.device),
            cfg.model.image_size,
            lora_weights=cfg.model.lora.weights,
            **options,
        )
        summary = generate_folder(
            generator,
            cfg.input,
            cfg.output,
            cfg.recursive,
            cfg.progress,
            cfg.num_workers,
            ranks,
            cfg.timeout_s,
            fabric.autocast,
            cfg.images_per_batch,
            cfg.max_image_pixels,
        )
    except RankError as error:
        log.error("%s", error)
        return 1
    except (FileNotFoundError, ValueError, LaunchError) as error:
        log.error("%s", error)
        return 2
    if not ranks.is_zero:
        return 0
    return 0 if summary.completed and not summary.failed else 1


def main() -> int:
    """``python -m sam_lightning.amg key=value ...`` (Hydra overrides of ``conf/amg.yaml``)."""
    from sam_lightning.extras import require_extra

    require_extra("python -m sam_lightning.amg", "cli")
    from sam_lightning.entry_points import hydra_main
    from sam_lightning.settings import amg

    example = (
        "python -m sam_lightning.amg input=<image dir|list file|image> "
        "output=<dir> model.checkpoint=<sam_vit_h_4b8939.pth> [amg=sa1b]"
    )
    return hydra_main(
        "amg", run_from_config, amg.AmgSettings, amg.check, ("input", "output"), example
    )


if __name__ == "__main__":
    sys.exit(main())

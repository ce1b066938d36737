"""The data engine's fully automatic stage: masks for every image of a folder, written as
SA-1B annotation files.

Usage::

    python -m sam_lightning.amg input=photos/ output=masks/ \\
        model.checkpoint=sam_vit_h_4b8939.pth [amg=sa1b] [device=cuda] [recursive=true]

``input`` is a directory of images (jpg, jpeg, png, bmp, tif, tiff, webp; sorted, not
recursive unless ``recursive=true``), a text file listing image paths (one per line, relative
to the list file; blank lines and ``#`` comments skipped) or one image. Each image ``x.jpg``
gives ``<output>/x.json`` (``<output>/sub/x.json`` for ``sub/x.jpg`` with ``recursive``) in
the SA-1B layout of :mod:`sam_lightning.data.sa1b`, written atomically; ``image.file_name``
is the image's path relative to ``input`` (to the list file's directory for lists, absolute
outside it), so ``SA1BDataset(output, image_root=input)`` reads the result back.

Image ids: ``sa_<n>`` keeps ``n``; other names get a hash of their output name, stable
across runs (:func:`~sam_lightning.data.sa1b.sa1b_image_id`). Annotation ids are
``image_id * 2**16 + index``, unique within the output.

Reruns resume: images whose JSON exists and parses are skipped, and temporary files of an
interrupted write are removed (one process per output directory). Unreadable images are
logged, skipped and listed in ``<output>/_summary.json``; the exit status is then 1 (2 for
bad arguments). Hydra's resolved config and log go to ``<output>/_logs/``.

Library use: :func:`run_amg` (builds the model and generator from plain arguments) and
:func:`generate_folder` (runs any generator); Hydra lives only in :func:`main`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sam_lightning.data.sa1b import (
    SUMMARY_NAME,
    make_sa1b_document,
    read_sa1b_json,
    sa1b_image_id,
    write_sa1b_json,
)
from sam_lightning.file_io import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    read_image,
    remove_temp_files,
    write_atomic,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sam_lightning.inference.automatic import SamAutomaticMaskGenerator

log = logging.getLogger("sam_lightning.amg")  # not "__main__" under python -m

class MaskGenerator(Protocol):
    """What :func:`generate_folder` needs: ``generate(image HxWx3 uint8) -> records`` with
    COCO RLE segmentations (``SamAutomaticMaskGenerator(..., output_mode="coco_rle")``)."""

    def generate(self, image: Any) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ImageJob:
    """One input image: its file, its output name (``<output>/<name>.json``, ``/``-separated,
    no suffix) and the ``image.file_name`` written for it."""

    path: Path
    name: str
    file_name: str


@dataclass
class AmgSummary:
    """Counts of one run; ``failed`` lists ``{"image": path, "error": reason}``."""

    input: str
    output: str
    image_root: str  # what image.file_name is relative to: SA1BDataset(image_root=...)
    images: int = 0
    written: int = 0
    skipped: int = 0  # done by an earlier run
    masks: int = 0  # in the files written by this run
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    completed: bool = False  # False if the run was interrupted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_images(
    input: str | os.PathLike[str], recursive: bool = False, output: str | os.PathLike[str] = ""
) -> tuple[list[ImageJob], Path]:
    """The images named by ``input`` (see the module docstring) and the directory their
    ``file_name`` is relative to. ``output`` is never searched for images.

    Raises:
        FileNotFoundError: ``input`` does not exist.
        ValueError: no images, or two images would get the same output name or image id.
    """
    input = Path(input)
    if input.is_dir():
        root, jobs = input, _directory_jobs(input, recursive, Path(output) if output else None)
    elif input.is_file() and input.suffix.lower() in IMAGE_EXTENSIONS:
        root, jobs = input.parent, [ImageJob(input, input.stem, input.name)]
    elif input.is_file():
        root, jobs = input.parent, _list_file_jobs(input)
    else:
        raise FileNotFoundError(f"input not found: {input}")
    if not jobs:
        kinds = ", ".join(IMAGE_EXTENSIONS)
        hint = " (subdirectories need recursive=true)" if input.is_dir() and not recursive else ""
        raise ValueError(f"no images ({kinds}) in {input}{hint}")
    _check_unique(jobs, lambda job: job.name, "output file")
    _check_unique(jobs, lambda job: sa1b_image_id(job.name), "image id")
    return jobs, root


def _directory_jobs(root: Path, recursive: bool, output: Path | None) -> list[ImageJob]:
    skip = output.resolve() if output is not None else None
    jobs = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(
            d
            for d in subdirs
            if recursive and not d.startswith(".") and Path(directory, d).resolve() != skip
        )
        for name in sorted(files):
            path = Path(directory, name)
            if path.suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                relative = path.relative_to(root).as_posix()
                jobs.append(ImageJob(path, relative.rpartition(".")[0], relative))
    return sorted(jobs, key=lambda job: job.file_name)


def _list_file_jobs(list_file: Path) -> list[ImageJob]:
    base = list_file.parent
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{list_file} is neither an image nor a text list of images: {error}"
        ) from None
    jobs = []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = base / Path(entry).expanduser()
        try:
            file_name = path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:  # outside the list file's directory
            file_name = path.resolve().as_posix()
        jobs.append(ImageJob(path, path.stem, file_name))
    return jobs


def _check_unique(jobs: list[ImageJob], key: Any, what: str) -> None:
    counts = Counter(key(job) for job in jobs)
    clashes = [job.path.as_posix() for job in jobs if counts[key(job)] > 1]
    if clashes:
        shown = ", ".join(clashes[:6]) + (" ..." if len(clashes) > 6 else "")
        raise ValueError(f"these images would share an {what}; rename them: {shown}")


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
) -> AmgSummary:
    """Runs ``generator`` on every image of ``input`` and writes ``<output>/<name>.json``
    (SA-1B layout), skipping images done by an earlier run; writes ``_summary.json``.

    Unreadable images are logged and listed in ``summary.failed``; errors of the generator
    itself propagate (files written so far stay, a rerun resumes).

    Raises:
        FileNotFoundError, ValueError: see :func:`collect_images`; ValueError also if the
            generator does not return COCO RLEs.
    """
    mode = getattr(generator, "output_mode", "coco_rle")
    if mode != "coco_rle":
        raise ValueError(f"the generator must use output_mode='coco_rle', not {mode!r}")
    jobs, root = collect_images(input, recursive, output)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if removed := remove_temp_files(output, recursive):
        log.info("removed %d temporary files of an interrupted run from %s", removed, output)
    summary = AmgSummary(str(input), str(output), str(root), images=len(jobs))
    start = time.perf_counter()
    try:
        with (
            logging_redirect_tqdm(),
            tqdm(jobs, desc="amg", unit="img", disable=not progress) as bar,
        ):
            for job in bar:
                _process(generator, job, output / f"{job.name}.json", summary)
                bar.set_postfix(masks=summary.masks, failed=len(summary.failed), refresh=False)
        summary.completed = True
    finally:
        summary.seconds = round(time.perf_counter() - start, 3)
        write_atomic(output / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2).encode())
        _log_summary(summary)
    return summary


def _process(generator: MaskGenerator, job: ImageJob, target: Path, summary: AmgSummary) -> None:
    if _is_done(target):
        summary.skipped += 1
        return
    try:
        image = read_image(job.path)
    except (OSError, UnreadableImageError) as error:
        reason = error.reason if isinstance(error, UnreadableImageError) else error.strerror
        reason = reason or str(error)
        log.error("skipping image %s: %s", job.path, reason)
        summary.failed.append({"image": str(job.path), "error": reason})
        return
    height, width = image.shape[:2]
    records = generator.generate(image)
    document = make_sa1b_document(records, sa1b_image_id(job.name), width, height, job.file_name)
    write_sa1b_json(target, document)
    summary.written += 1
    summary.masks += len(records)


def _log_summary(summary: AmgSummary) -> None:
    status = "done" if summary.completed else "interrupted"
    log.info(
        "%s: %d images, %d written (%d masks), %d already done, %d failed, %.1f s; summary in %s",
        status,
        summary.images,
        summary.written,
        summary.masks,
        summary.skipped,
        len(summary.failed),
        summary.seconds,
        Path(summary.output) / SUMMARY_NAME,
    )
    if summary.failed:
        log.error(
            "%d image(s) could not be read:\n  %s",
            len(summary.failed),
            "\n  ".join(f"{f['image']}: {f['error']}" for f in summary.failed),
        )


def build_generator(
    model_type: str = "vit_h",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str = "auto",
    image_size: int = 1024,
    **options: Any,
) -> SamAutomaticMaskGenerator:
    """The model (random weights, seeded, without ``checkpoint``; ``image_size`` is the
    encoder's input side, 1024 for the official weights) and a generator with
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
    model = build_model(model_type, checkpoint, image_size, device)
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
    **options: Any,
) -> AmgSummary:
    """Builds the generator (:func:`build_generator`) and runs :func:`generate_folder`.
    ``options`` are ``SamAutomaticMaskGenerator`` parameters (``conf/amg/*.yaml``)."""
    collect_images(input, recursive, output)  # fail before building a large model
    generator = build_generator(model_type, checkpoint, device, image_size, **options)
    return generate_folder(generator, input, output, recursive, progress)


def run_from_config(cfg: DictConfig) -> int:
    """Runs the composed ``conf/amg.yaml``; returns the exit status (0 done, 1 images
    failed or the run was interrupted, 2 bad input or configuration)."""
    from omegaconf import OmegaConf

    options = OmegaConf.to_container(cfg.amg, resolve=True)
    try:
        summary = run_amg(
            cfg.input,
            cfg.output,
            model_type=cfg.model.type,
            checkpoint=cfg.model.checkpoint,
            device=cfg.device,
            recursive=cfg.recursive,
            progress=cfg.progress,
            image_size=cfg.model.image_size,
            **options,
        )
    except (FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        return 2
    return 0 if summary.completed and not summary.failed else 1


def main() -> int:
    """``python -m sam_lightning.amg key=value ...`` (Hydra overrides of ``conf/amg.yaml``)."""
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

"""The images of a folder, a list file or one file, each with its output name: what the data
engine (``python -m sam_lightning.amg``) runs on, the dataset that reads them in
DataLoader workers, and the training dataset of a plain folder (no annotations)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from sam_lightning.data.sa1b import sa1b_image_id
from sam_lightning.file_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    check_max_image_pixels,
    read_image,
)


@dataclass(frozen=True)
class ImageJob:
    """One input image: its file, its output name (``<output>/<name>.json``, ``/``-separated,
    no suffix) and the ``image.file_name`` written for it."""

    path: Path
    name: str
    file_name: str


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


class ImageReader(Dataset):
    """``jobs[i]`` read as ``(i, image HxWx3 uint8, None)``, or ``(i, None, reason)`` when
    the file cannot be read (or is refused: more than ``max_image_pixels`` pixels, None for
    no limit, or 32-bit samples; see :func:`~sam_lightning.file_io.decode_image`), so that
    DataLoader workers report a bad image instead of stopping the run. Use with
    ``batch_size=None, collate_fn=as_is``."""

    def __init__(
        self, jobs: list[ImageJob], max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    ) -> None:
        self.jobs, self.max_image_pixels = jobs, check_max_image_pixels(max_image_pixels)

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        path = self.jobs[index].path
        try:
            return index, read_image(path, self.max_image_pixels), None
        except (OSError, UnreadableImageError) as error:
            reason = error.reason if isinstance(error, UnreadableImageError) else error.strerror
            return index, None, reason or str(error)


def as_is(item: Any) -> Any:
    """The DataLoader ``collate_fn`` that keeps an :class:`ImageReader` item unchanged."""
    return item


class ImageFolderDataset:
    """``kind: images``: the images of a folder (as :func:`collect_images` finds them), with
    no annotations: items are :class:`~sam_lightning.data.sa1b.SA1BSample` dicts with an
    empty ``annotations`` list, for training that needs no masks (distillation).

    Args:
        root: the folder (or a list file, or one image).
        recursive: also search subdirectories.
        max_image_pixels: refuse larger images (None: no limit), see
            :func:`~sam_lightning.file_io.decode_image`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        recursive: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        self.jobs, self.root = collect_images(root, recursive)
        self.max_image_pixels = check_max_image_pixels(max_image_pixels)

    def __len__(self) -> int:
        return len(self.jobs)

    def source(self, index: int) -> str:
        """The image file of item ``index``."""
        return str(self.jobs[index].path)

    def __getitem__(self, index: int) -> dict[str, Any]:
        job = self.jobs[index]
        image = read_image(job.path, self.max_image_pixels)
        height, width = image.shape[:2]
        info = {"image_id": index, "width": width, "height": height, "file_name": job.file_name}
        return {"image": image, "annotations": [], "image_info": info, "source": str(job.path)}

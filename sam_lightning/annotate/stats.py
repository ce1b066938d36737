"""Statistics of an annotated folder, and its export to one COCO instances file.

Usage::

    python -m sam_lightning.annotate.stats <output dir> [--coco instances.json] [--json]

prints, per annotator, session and mask source, the images annotated, masks, masks per
image and seconds per mask (the paper's data-engine measure: 34 s per mask at the start of
the assisted-manual stage, 14 s at its end), plus totals per source. Seconds per mask
averages the timed masks (person masks; model masks are untimed). For model masks,
``proposed`` counts what the semi-automatic pre-fill offered and ``masks`` what is left
after annotators deleted some. ``--coco`` writes every mask to one COCO instances file
(category 1 ``"object"``, ``iscrowd`` 0, compressed RLE segmentations, image ids and
``file_name`` as in the SA-1B files), atomically; ``--json`` prints the statistics as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sam_lightning.data.sa1b import SUMMARY_NAME, SA1BFormatError, read_sa1b_json
from sam_lightning.file_io import is_temp_file, write_atomic

log = logging.getLogger("sam_lightning.annotate")

ALL = "*"
COCO_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
#: Annotation fields copied into the COCO export.
PROVENANCE = ("source", "annotator", "session", "seconds")


def documents(output: str | os.PathLike[str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The SA-1B documents of ``output`` (hidden, temporary and summary files skipped; a
    malformed file is logged and skipped)."""
    output = Path(output)
    if not output.is_dir():
        raise FileNotFoundError(f"not a directory: {output}")
    for path in sorted(output.glob("*.json")):
        if path.name.startswith(".") or path.name == SUMMARY_NAME or is_temp_file(path):
            continue
        try:
            yield path, read_sa1b_json(path)
        except (OSError, SA1BFormatError) as error:
            log.error("skipping %s: %s", path, error)


def annotation_stats(output: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"rows": [...], "files": n}``: one row per (annotator, session, source) and totals
    per source (annotator and session ``"*"``), each with ``images``, ``masks``,
    ``masks_per_image``, ``timed`` (masks with seconds), ``seconds``, ``seconds_per_mask``
    (null when nothing was timed) and ``proposed`` (model rows: masks the pre-fill offered)."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"images": set(), "masks": 0, "timed": 0, "seconds": 0.0, "proposed": 0}
    )
    files = 0
    for _, document in documents(output):
        files += 1
        image_id = document["image"]["image_id"]
        prefill = (document.get("annotate") or {}).get("prefill")
        if isinstance(prefill, dict) and isinstance(prefill.get("masks"), int):
            for key in (
                (str(prefill.get("annotator", "-")), str(prefill.get("session", "-")), "model"),
                (ALL, ALL, "model"),
            ):
                groups[key]["proposed"] += prefill["masks"]
        for ann in document["annotations"]:
            source = str(ann.get("source", "model"))
            annotator, session = str(ann.get("annotator", "-")), str(ann.get("session", "-"))
            seconds = ann.get("seconds")
            for key in ((annotator, session, source), (ALL, ALL, source)):
                group = groups[key]
                group["images"].add(image_id)
                group["masks"] += 1
                if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                    group["timed"] += 1
                    group["seconds"] += seconds
    rows = []
    for (annotator, session, source), group in sorted(
        groups.items(), key=lambda item: (item[0][0] == ALL, item[0])
    ):
        images, masks, timed = len(group["images"]), group["masks"], group["timed"]
        rows.append(
            {
                "annotator": annotator,
                "session": session,
                "source": source,
                "images": images,
                "masks": masks,
                "masks_per_image": round(masks / images, 3) if images else None,
                "timed": timed,
                "seconds": round(group["seconds"], 3),
                "seconds_per_mask": round(group["seconds"] / timed, 3) if timed else None,
                "proposed": group["proposed"] if source == "model" else None,
            }
        )
    return {"rows": rows, "files": files}


def format_table(stats: dict[str, Any]) -> str:
    """The rows of :func:`annotation_stats` as a text table."""
    header = [
        "annotator",
        "session",
        "source",
        "images",
        "masks",
        "masks/image",
        "s/mask",
        "proposed",
    ]
    keys = [
        "annotator",
        "session",
        "source",
        "images",
        "masks",
        "masks_per_image",
        "seconds_per_mask",
        "proposed",
    ]
    lines = [[_cell(row[k]) for k in keys] for row in stats["rows"]]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    rendered = [
        "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *lines]
    ]
    rendered.insert(1, "  ".join("-" * w for w in widths))
    footer = f"{stats['files']} annotation file(s); '*' rows are totals per source"
    return "\n".join([*rendered, footer])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def export_coco(output: str | os.PathLike[str], target: str | os.PathLike[str]) -> dict[str, int]:
    """Writes every mask of ``output`` to the COCO instances file ``target`` (atomically);
    returns ``{"images", "annotations"}``. Raises ValueError if two files share an image id."""
    images, annotations, seen = [], [], {}
    for path, document in documents(output):
        info = document["image"]
        if info["image_id"] in seen:
            other = seen[info["image_id"]]
            raise ValueError(f"{path} and {other} share the image id {info['image_id']}")
        seen[info["image_id"]] = path
        images.append(
            {
                "id": info["image_id"],
                "file_name": info["file_name"],
                "width": info["width"],
                "height": info["height"],
            }
        )
        for ann in document["annotations"]:
            annotations.append(
                {
                    "id": ann["id"],
                    "image_id": info["image_id"],
                    "category_id": COCO_CATEGORY["id"],
                    "segmentation": ann["segmentation"],
                    "area": ann["area"],
                    "bbox": ann["bbox"],
                    "iscrowd": 0,
                    **{k: ann[k] for k in PROVENANCE if k in ann},
                }
            )
    coco = {
        "info": {"description": f"sam_lightning.annotate export of {output}"},
        "images": images,
        "annotations": annotations,
        "categories": [COCO_CATEGORY],
    }
    write_atomic(target, json.dumps(coco, separators=(",", ":")).encode("utf-8"))
    return {"images": len(images), "annotations": len(annotations)}


def main(argv: list[str] | None = None) -> int:
    """``python -m sam_lightning.annotate.stats``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sam_lightning.annotate.stats",
        description="Annotation statistics per annotator and session; COCO export.",
    )
    parser.add_argument("output", help="the annotate output directory (SA-1B JSON files)")
    parser.add_argument("--coco", metavar="FILE", help="also write a COCO instances JSON")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        stats = annotation_stats(args.output)
        print(json.dumps(stats, indent=2) if args.json else format_table(stats))
        if args.coco:
            counts = export_coco(args.output, args.coco)
            print(
                f"wrote {args.coco}: {counts['images']} images, {counts['annotations']} masks",
                file=sys.stderr,
            )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

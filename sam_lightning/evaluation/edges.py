"""Zero-shot edge detection with SAM on BSDS500 (paper §7.2 and App. D.2).

The paper's recipe, a simplified automatic mask generator: a 16 x 16 grid of foreground
points gives 768 masks (3 per point); there is no filtering by predicted IoU or stability;
redundant masks are removed by NMS (the generator's box NMS at IoU 0.7, by predicted IoU);
each remaining mask's unthresholded probability map is Sobel-filtered and kept only on the
mask's outer boundary (background pixels 8-adjacent to the mask, i.e. its 3 x 3 dilation
minus the mask); the pixel-wise maximum over masks is linearly normalised to [0, 1] and
thinned with the edge NMS of Dollar's edges toolbox (:func:`sam_lightning.ops.edge_nms`).

:class:`SamEdgeDetector` is the library function (an edge map per image);
:func:`evaluate_sam_edges` runs it over a BSDS500 split and scores it with
:mod:`sam_lightning.evaluation.bsds_eval`; :func:`run_from_config` is the adapter of
``python -m sam_lightning.evaluate +eval=edges_bsds`` and also evaluates edge maps made by
any other detector (``edges_from``: a directory of ``<name>.png``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sam_lightning import ops
from sam_lightning.data.bsds import BSDS500Dataset
from sam_lightning.evaluation import bsds_eval
from sam_lightning.evaluation.item_map import InProcess, ItemMap
from sam_lightning.evaluation.settings import EvalJob
from sam_lightning.inference.crops import build_point_grid
from sam_lightning.inference.predictor import POSTPROCESS_CHUNK_ELEMENTS, SamPredictor
from sam_lightning.modeling.sam import Sam
from sam_lightning.ops.edges import BSDS_MAX_DIST

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(maps: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude ``sqrt(gx^2 + gy^2)`` of ``N x H x W`` maps with the 3 x 3 Sobel
    kernels (unnormalised, as OpenCV's ``Sobel``) and reflect-101 borders (OpenCV's default)."""
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.T])[:, None].to(maps)
    padded = F.pad(maps[:, None], (1, 1, 1, 1), mode="reflect")
    gradients = F.conv2d(padded, kernels)
    return gradients.square().sum(1).sqrt()


def outer_boundary(masks: torch.Tensor) -> torch.Tensor:
    """Background pixels 8-adjacent to each mask of ``N x H x W`` bool masks (the 3 x 3
    dilation minus the mask; pixels outside the image are not part of any mask)."""
    dilated = F.max_pool2d(masks[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
    return dilated & ~masks


class SamEdgeDetector:
    """Edge maps from SAM's masks (App. D.2).

    Args:
        model: the SAM model (or a :class:`SamPredictor` of it).
        points_per_side: points along each side of the prompt grid (16: 768 masks).
        points_per_batch: prompts decoded together (speed and memory only).
        box_nms_thresh: box IoU above which NMS drops the mask of lower predicted IoU.
        nms_radius, nms_border, nms_multiplier: edge NMS parameters (``edgesDetect``'s r, s,
            m: 1, 5, 1.01).
        orientation_smoothing: triangle-filter radius of the edge orientation (4).
    """

    def __init__(
        self,
        model: Sam | SamPredictor,
        points_per_side: int = 16,
        points_per_batch: int = 64,
        box_nms_thresh: float = 0.7,
        nms_radius: int = 1,
        nms_border: int = 5,
        nms_multiplier: float = 1.01,
        orientation_smoothing: int = 4,
    ) -> None:
        if points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        self.predictor = model if isinstance(model, SamPredictor) else SamPredictor(model)
        self.points = build_point_grid(points_per_side)
        self.points_per_batch = points_per_batch
        self.box_nms_thresh = box_nms_thresh
        self.nms_radius = nms_radius
        self.nms_border = nms_border
        self.nms_multiplier = nms_multiplier
        self.orientation_smoothing = orientation_smoothing

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The ``H x W`` float32 edge map, in [0, 1], of an ``H x W x 3`` uint8 RGB image."""
        return self.detect(image)[0]

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(edges, strength)``: the edge map and, before edge NMS, the normalised
        pixel-wise maximum of the masks' boundary Sobel responses (both ``H x W`` float32)."""
        low_res, iou_preds = self.predict_masks(image)
        keep = self.select_masks(low_res, iou_preds)
        strength = self.boundary_strength(low_res[keep.to(low_res.device)])
        self.predictor.reset_image()
        low, high = strength.min(), strength.max()
        if high > low:
            strength = (strength - low) / (high - low)
        else:
            strength = torch.zeros_like(strength)
        strength = strength.float().cpu()
        if min(strength.shape) < 2:  # edge NMS needs 2 x 2 pixels
            return strength.numpy(), strength.numpy()
        orientation = ops.edge_orientation(strength, self.orientation_smoothing)
        edges = ops.edge_nms(
            strength, orientation, self.nms_radius, self.nms_border, self.nms_multiplier
        )
        return edges.clamp_(0, 1).numpy(), strength.numpy()

    @torch.inference_mode()
    def predict_masks(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Sets ``image`` and decodes the point grid: low-resolution logits ``M x h x w``
        (M = 3 x points) and predicted IoUs ``M``, on the model's device."""
        predictor = self.predictor
        predictor.set_image(image)
        size = predictor.original_size
        points = self.points * np.array(size)[None, ::-1]
        logits, ious = [], []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            coords = predictor.transform.apply_coords(batch, size)
            coords = torch.as_tensor(coords, dtype=torch.float32, device=predictor.device)
            labels = torch.ones(len(coords), dtype=torch.int, device=predictor.device)
            low_res, iou = predictor.model.decode(
                predictor.features, coords[:, None, :], labels[:, None], multimask_output=True
            )
            logits.append(low_res.flatten(0, 1))
            ious.append(iou.flatten(0, 1))
        return torch.cat(logits), torch.cat(ious)

    def _chunks(self, low_res: torch.Tensor) -> Iterator[torch.Tensor]:
        """Logits at the image's size, ``k x H x W``, a memory-bounded chunk at a time."""
        predictor = self.predictor
        h, w = predictor.original_size
        largest = max(predictor.transform.target_length**2, h * w)
        step = max(1, POSTPROCESS_CHUNK_ELEMENTS // largest)
        for start in range(0, len(low_res), step):
            yield predictor.model.postprocess_masks(
                low_res[start : start + step, None], predictor.input_size, (h, w)
            )[:, 0]

    @torch.inference_mode()
    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """All logits at the size of the image set by :meth:`predict_masks` (``M x H x W``;
        for tests and inspection)."""
        return torch.cat(list(self._chunks(low_res)))

    @torch.inference_mode()
    def select_masks(self, low_res: torch.Tensor, iou_preds: torch.Tensor) -> torch.Tensor:
        """Indices (int64, CPU) of the masks (of the image set by :meth:`predict_masks`) that
        survive box NMS by predicted IoU, as the automatic mask generator's."""
        threshold = self.predictor.model.mask_threshold
        boxes = torch.cat([ops.masks_to_boxes(c > threshold).cpu() for c in self._chunks(low_res)])
        categories = torch.zeros(len(boxes), dtype=torch.int64)
        return ops.batched_nms(boxes.float(), iou_preds.float().cpu(), categories,
                               self.box_nms_thresh)  # fmt: skip

    @torch.inference_mode()
    def boundary_strength(self, low_res: torch.Tensor) -> torch.Tensor:
        """Pixel-wise maximum over masks of the Sobel magnitude of each mask's probability
        map on its outer boundary (zero elsewhere), at the size of the image set by
        :meth:`predict_masks`: ``H x W`` float32 on the model's device."""
        h, w = self.predictor.original_size
        threshold = self.predictor.model.mask_threshold
        strength = torch.zeros((h, w), dtype=torch.float32, device=low_res.device)
        if h < 2 or w < 2:
            return strength
        for logits in self._chunks(low_res):
            response = sobel_magnitude(torch.sigmoid(logits.float()))
            response = response * outer_boundary(logits > threshold)
            strength = torch.maximum(strength, response.amax(0))
        return strength


# ---------------------------------------------------------------------------- evaluation


def evaluate_sam_edges(
    detector: SamEdgeDetector,
    dataset: BSDS500Dataset,
    output_dir: str | Path,
    thresholds: int = bsds_eval.NUM_THRESHOLDS,
    max_dist: float = BSDS_MAX_DIST,
    progress: bool = True,
    map_items: ItemMap | None = None,
) -> bsds_eval.BoundaryResult | None:
    """Runs ``detector`` on every image of ``dataset``, writes the 8-bit edge maps to
    ``<output_dir>/edges/<name>.png`` and scores those maps (as written) against the
    ground truth (:func:`evaluate_edge_dir`). ``map_items`` runs the images
    (:mod:`~sam_lightning.evaluation.item_map`; one process by default); on ranks other
    than 0 it returns None, and so does this function."""
    edge_dir = Path(output_dir) / "edges"

    def compute(index: int, sample: Any) -> str:
        bsds_eval.write_edge_map(edge_dir / f"{sample.name}.png", detector(sample.image))
        return sample.name

    map_items = map_items or InProcess(progress)
    if map_items(len(dataset), compute, dataset.__getitem__, desc="edges") is None:
        return None
    return evaluate_edge_dir(edge_dir, dataset, thresholds, max_dist, progress)


def evaluate_edge_dir(
    edge_dir: str | Path,
    dataset: BSDS500Dataset,
    thresholds: int = bsds_eval.NUM_THRESHOLDS,
    max_dist: float = BSDS_MAX_DIST,
    progress: bool = True,
) -> bsds_eval.BoundaryResult:
    """Scores edge maps made by any detector: ``<edge_dir>/<name>.png`` (8-bit, one per
    image of ``dataset``, the image's size), as ``edgesEvalDir`` does."""
    edge_dir = Path(edge_dir)
    if not edge_dir.is_dir():
        raise FileNotFoundError(f"edges_from: directory not found: {edge_dir}")

    def samples() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for index, name in enumerate(dataset.names):
            path = edge_dir / f"{name}.png"
            if not path.is_file():
                raise FileNotFoundError(f"edges_from: no edge map {path} for image {name}")
            edges = bsds_eval.read_edge_map(path)
            boundaries = dataset.ground_truth(index).boundaries
            if edges.shape != boundaries.shape[1:]:
                raise ValueError(
                    f"edges_from: {path} is {edges.shape[0]} x {edges.shape[1]} but the ground "
                    f"truth of {name} is {boundaries.shape[1]} x {boundaries.shape[2]}"
                )
            yield name, edges, boundaries

    return bsds_eval.evaluate_boundaries(
        samples(), thresholds, max_dist, progress=progress, total=len(dataset)
    )


#: The ``eval`` settings (:class:`~sam_lightning.settings.evaluate.EdgesSettings`) that
#: configure :class:`SamEdgeDetector`.
_DETECTOR_KEYS = (
    "points_per_side", "points_per_batch", "box_nms_thresh", "nms_radius", "nms_border",
    "nms_multiplier", "orientation_smoothing",
)  # fmt: skip


def run_from_config(job: EvalJob) -> dict[str, float] | None:
    """Runs the BSDS500 edge task (``conf/eval/edges_bsds.yaml``): SAM's edge maps to
    ``<output_dir>/edges/*.png``, or the maps of ``eval_cfg["edges_from"]`` (then the model
    is never built); writes ``pr_curve.png`` and ``bsds_eval.json`` (curve and per-image
    scores) to ``output_dir``; returns the flat metrics (ods, ois, ap, r50, ...; r50 is NaN
    when the precision never reaches 50%). The per-mask work runs on the model's device
    (``get_model()`` builds it on ``device``)."""
    settings = job.settings("edges_bsds")
    if job.data.get("root") in (None, "", "???"):
        raise ValueError("edges_bsds needs data.root: the BSDS500 directory")
    dataset = BSDS500Dataset(
        job.data["root"], job.data.get("split", "test"), settings["max_images"]
    )
    thresholds = int(settings["thresholds"])
    max_dist = float(settings["max_dist"])
    if settings["edges_from"]:
        result = evaluate_edge_dir(
            settings["edges_from"], dataset, thresholds, max_dist, job.progress
        )
    else:
        detector = SamEdgeDetector(job.get_model(), **{k: settings[k] for k in _DETECTOR_KEYS})
        result = evaluate_sam_edges(
            detector,
            dataset,
            Path(job.output_dir),
            thresholds,
            max_dist,
            job.progress,
            job.map_items(settings),
        )
        if result is None:  # not rank 0
            return None
    write_report(result, Path(job.output_dir))
    return result.metrics()


def write_report(result: bsds_eval.BoundaryResult, output_dir: Path) -> None:
    """``bsds_eval.json`` (the scores, the dataset curve and per-image best scores) and,
    when matplotlib is installed, ``pr_curve.png``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = {k: None if math.isnan(v) else v for k, v in result.metrics().items()}  # R50
    report = {
        "metrics": metrics,
        "curve": {
            "threshold": result.thresholds.tolist(),
            "recall": result.recall.tolist(),
            "precision": result.precision.tolist(),
            "f": result.f.tolist(),
        },
        "images": result.per_image,
    }
    (output_dir / "bsds_eval.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    try:
        bsds_eval.plot_pr_curve(result, output_dir / "pr_curve.png")
    except ImportError as error:
        warnings.warn(f"no precision-recall plot: {error}", stacklevel=2)

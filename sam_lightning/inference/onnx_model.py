"""ONNX export of SAM's prompt side: prompt encoder, mask decoder and mask post-processing.

:class:`SamOnnxModel` takes the inputs of the official ``segment_anything`` ONNX model
(``scripts/export_onnx_model.py``), so the same web and runtime front ends run it:

=================  ===========  ====================================================
input              shape        meaning
=================  ===========  ====================================================
image_embeddings   1×C×h×w      the image encoder's output (C=256, h=w=64 for SAM)
point_coords       1×N×2        ``(x, y)`` in the resized input frame (long side =
                                ``img_size``, see :class:`~sam_lightning.transforms.
                                ResizeLongestSide`)
point_labels       1×N          1 positive, 0 negative, 2/3 box top-left/bottom-right
                                corner, -1 padding (float32)
mask_input         1×1×4h×4w    low-resolution logits of a previous prediction
has_mask_input     1            1: use ``mask_input``, 0: ignore it
orig_im_size       2            ``(H, W)`` of the original image (float32)
=================  ===========  ====================================================

Outputs: ``masks`` (logits at ``orig_im_size``, ``1×M×H×W``), ``iou_predictions``
(``1×M``) and ``low_res_masks`` (``1×M×4h×4w``), with M = 4 (the single-mask output
first, then the three ambiguity masks) or M = 1 with ``return_single_mask``. N is dynamic.

Unlike :meth:`~sam_lightning.modeling.sam.Sam.decode`, no padding point is appended: a
prompt of points without a box needs a ``(0, 0)`` point with label -1 at the end, as for the
official ONNX model.
"""

from __future__ import annotations

import warnings
from os import PathLike

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sam_lightning.modeling.prompt_encoder import NOT_A_POINT
from sam_lightning.modeling.sam import Sam

INPUT_NAMES = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")
#: Offset of the stability score's thresholds (the official ONNX model's).
STABILITY_SCORE_OFFSET = 1.0


class SamOnnxModel(nn.Module):
    """Prompt encoder + mask decoder + upscaling of a :class:`Sam`, with the official ONNX
    model's inputs and outputs (see the module docstring). Traceable: no Python control flow
    depends on input values or on N.

    Args:
        model: the SAM model; its prompt encoder and mask decoder are kept (not the image
            encoder).
        return_single_mask: return one mask per prompt: the best of the three ambiguity masks
            (by score) for a prompt of at most 2 points (one click and its padding, or a box
            alone), else the single-mask output, as the official predictor advises.
        use_stability_score: replace the predicted IoUs with the stability score of the
            low-resolution logits (thresholds ``mask_threshold ± 1``).
    """

    def __init__(
        self, model: Sam, return_single_mask: bool = False, use_stability_score: bool = False
    ) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = model.img_size
        self.mask_threshold = model.mask_threshold
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score

    def embed_points(self, point_coords: Tensor, point_labels: Tensor) -> Tensor:
        """``1×N×2`` points with ``1×N`` labels (-1..3) -> sparse tokens ``1×N×C``."""
        encoder = self.prompt_encoder
        embedding = encoder.pe_layer.forward_with_coords(
            point_coords + 0.5, encoder.input_image_size
        )
        labels = point_labels[..., None]
        is_padding = labels == NOT_A_POINT
        embedding = torch.where(is_padding, 0.0, embedding)
        embedding = embedding + is_padding * encoder.not_a_point_embed.weight
        for label, token in enumerate(encoder.point_embeddings):
            embedding = embedding + (labels == label) * token.weight
        return embedding

    def embed_mask(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """Dense embedding ``1×C×h×w``: of ``mask_input`` where ``has_mask_input`` is 1, the
        no-mask embedding where it is 0."""
        encoder = self.prompt_encoder
        mask = encoder.mask_downscaling(mask_input)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return has_mask_input * mask + (1 - has_mask_input) * no_mask

    def stability_score(self, low_res: Tensor) -> Tensor:
        """Stability score ``1×M`` of ``1×M×h×w`` logits, as
        :func:`sam_lightning.ops.stability_score` with offset 1 (counts in float32 are
        exact below 2**24 pixels)."""
        threshold = self.mask_threshold
        high = (low_res > threshold + STABILITY_SCORE_OFFSET).to(torch.float32).sum((-2, -1))
        low = (low_res > threshold - STABILITY_SCORE_OFFSET).to(torch.float32).sum((-2, -1))
        return high / low

    @staticmethod
    def select_mask(masks: Tensor, scores: Tensor, num_points: Tensor) -> tuple[Tensor, Tensor]:
        """The mask to return for prompts of ``num_points`` points (a ``1`` tensor): the
        single-mask output (index 0) if there are more than 2, else the best-scoring
        ambiguity mask. Returns ``1×1×h×w`` masks and ``1×1`` scores."""
        first = torch.arange(scores.shape[1], device=scores.device) == 0
        forced = torch.where(num_points[:, None] > 2, torch.inf, -torch.inf).to(scores.dtype)
        best = torch.where(first, forced, scores).argmax(dim=1, keepdim=True)
        index = best[..., None, None].expand(-1, -1, *masks.shape[-2:])
        return masks.gather(1, index), scores.gather(1, best)

    def upscale(self, low_res: Tensor, orig_im_size: Tensor) -> Tensor:
        """Upscales ``1×M×4h×4w`` logits to the padded input, crops to the resized image and
        resizes to ``orig_im_size``, as :meth:`Sam.postprocess_masks`. The resized size is
        computed in float64 with the rounding of
        :meth:`~sam_lightning.transforms.ResizeLongestSide.get_preprocess_shape`."""
        masks = F.interpolate(
            low_res, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        size = orig_im_size.to(torch.float64)
        resized = torch.floor(size * (self.img_size / size.max()) + 0.5).to(torch.int64)
        masks = masks[..., : resized[0], : resized[1]]
        original = orig_im_size.to(torch.int64)
        return F.interpolate(
            masks, (original[0], original[1]), mode="bilinear", align_corners=False
        )

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(masks, iou_predictions, low_res_masks)`` for one prompt; see the module
        docstring for the inputs."""
        low_res, scores = self.mask_decoder.predict_masks(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            self.embed_points(point_coords, point_labels),
            self.embed_mask(mask_input, has_mask_input),
        )
        if self.use_stability_score:
            scores = self.stability_score(low_res)
        if self.return_single_mask:
            # N computed from an input tensor, so that the trace keeps it dynamic.
            num_points = torch.ones_like(point_labels).sum(1)
            low_res, scores = self.select_mask(low_res, scores, num_points)
        return self.upscale(low_res, orig_im_size), scores, low_res


def example_inputs(model: Sam, num_points: int = 3, seed: int = 0) -> dict[str, Tensor]:
    """Random inputs of :class:`SamOnnxModel` for ``model``, by input name: ``num_points``
    points with the labels 1, 0, 2, 3, -1 in turn, a mask input and a 3:4 original size."""
    generator = torch.Generator().manual_seed(seed)
    encoder = model.prompt_encoder
    labels = torch.tensor([1.0, 0.0, 2.0, 3.0, -1.0]).repeat(num_points)[:num_points]
    return {
        "image_embeddings": torch.randn(
            1, encoder.embed_dim, *encoder.image_embedding_size, generator=generator
        ),
        "point_coords": torch.rand(1, num_points, 2, generator=generator) * model.img_size,
        "point_labels": labels[None],
        "mask_input": torch.randn(1, 1, *encoder.mask_input_size, generator=generator),
        "has_mask_input": torch.ones(1),
        "orig_im_size": torch.tensor([3.0 * model.img_size / 4, 1.0 * model.img_size]),
    }


def export_onnx(
    model: Sam,
    path: str | PathLike[str],
    *,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    opset: int = 17,
) -> SamOnnxModel:
    """Exports :class:`SamOnnxModel` of ``model`` to ``path`` (N dynamic) and returns it.

    Uses the TorchScript exporter (``dynamo=False``, needs only ``onnx``): ``torch.export``
    specialises N (the attention picks its order of operations from the number of tokens)
    and cannot slice and resize by the values of ``orig_im_size``. Its deprecation warning
    and the tracer's warnings about shape-dependent branches are silenced: they fix the
    batch of one and the attention's order of operations, whose result is the same for
    every N (tested).
    """
    wrapper = SamOnnxModel(model, return_single_mask, use_stability_score).eval()
    inputs = example_inputs(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            wrapper,
            tuple(inputs.values()),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            dynamo=False,
        )
    return wrapper


def compare_with_onnxruntime(
    wrapper: SamOnnxModel, path: str | PathLike[str], inputs: dict[str, Tensor]
) -> dict[str, float]:
    """Runs the exported model at ``path`` with onnxruntime (CPU) on ``inputs`` and returns
    the largest absolute difference from ``wrapper`` per output name."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    expected = wrapper(**inputs)
    return {
        name: float((torch.from_numpy(got) - want).abs().max())
        for name, got, want in zip(OUTPUT_NAMES, outputs, expected)
    }

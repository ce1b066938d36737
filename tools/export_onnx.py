"""Exports SAM's prompt encoder, mask decoder and mask upscaling to ONNX.

    python tools/export_onnx.py --checkpoint sam_vit_b_01ec64.pth --model-type vit_b \\
        --output sam_decoder.onnx [--return-single-mask] [--use-stability-score] \\
        [--opset 17] [--image-size 1024]

The model has the inputs and outputs of the official ``segment_anything`` ONNX model (see
:mod:`sam_lightning.inference.onnx_model`); the image embedding comes from the image encoder
(``SamPredictor.get_image_embedding()``). Needs ``pip install -e ".[onnx]"``; with
onnxruntime installed, the export is checked against PyTorch on random inputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from sam_lightning.inference.onnx_model import (
    compare_with_onnxruntime,
    example_inputs,
    export_onnx,
)
from sam_lightning.modeling.build import build_sam, sam_model_registry


def main(argv: Sequence[str] | None = None) -> int:
    """Builds the model, exports it and reports onnxruntime's differences from PyTorch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="official .pth, training checkpoint or .safetensors")
    parser.add_argument("--model-type", required=True, choices=sorted(sam_model_registry))
    parser.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--return-single-mask", action="store_true",
                        help="return only the best mask (cheaper upscaling of large images)")
    parser.add_argument("--use-stability-score", action="store_true",
                        help="score masks by the stability score of the low-resolution logits "
                        "(offset 1) instead of the predicted IoU")
    parser.add_argument("--opset", type=int, default=17,
                        help="ONNX opset version (>= 14: the attention needs it)")
    parser.add_argument("--image-size", type=int, default=1024,
                        help="encoder input size the checkpoint was trained at")
    args = parser.parse_args(argv)

    model = build_sam(args.model_type, args.checkpoint, image_size=args.image_size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    wrapper = export_onnx(
        model,
        args.output,
        return_single_mask=args.return_single_mask,
        use_stability_score=args.use_stability_score,
        opset=args.opset,
    )
    print(f"wrote {args.output}")
    if importlib.util.find_spec("onnxruntime") is None:
        print("onnxruntime is not installed: the export was not checked")
        return 0
    differences = compare_with_onnxruntime(wrapper, args.output, example_inputs(model, 4))
    report = ", ".join(f"{name} {value:.2e}" for name, value in differences.items())
    print(f"onnxruntime vs PyTorch, largest |difference|: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

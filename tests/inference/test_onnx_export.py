"""ONNX export of the prompt encoder + mask decoder (tools/export_onnx.py,
sam_lightning.inference.onnx_model), run with onnxruntime and compared with PyTorch: our
SamPredictor on the same embedding, the wrapper module itself and the official SamOnnxModel."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from sam_lightning.inference import SamPredictor
from sam_lightning.inference.onnx_model import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    SamOnnxModel,
    export_onnx,
)
from sam_lightning.modeling.build import build_sam
from sam_lightning.ops import stability_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import export_onnx as export_command  # noqa: E402
from official_sam import import_official  # noqa: E402
from sam_test_models import build_official, randomize_  # noqa: E402

IMAGE_SIZE = 64
#: Original (H, W): portrait, landscape, square, and larger than the input (upscaled).
SIZES = [(48, 40), (30, 64), (64, 64), (100, 37)]
#: onnxruntime vs PyTorch on logits and scores.
ATOL = 1e-4
#: Masks must agree wherever the logit is farther than this from the threshold 0.
CERTAIN = 1e-3

Session = tuple[SamOnnxModel, onnxruntime.InferenceSession]
Arrays = dict[str, np.ndarray]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return randomize_(build_sam("vit_tiny", image_size=IMAGE_SIZE), seed=3)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Callable[..., Session]:
    """``exported(single, stability)``: the wrapper and an onnxruntime session of its export
    (``return_single_mask``, ``use_stability_score``), each exported once."""
    cache: dict[tuple[bool, bool], Session] = {}

    def get(single: bool = False, stability: bool = False) -> Session:
        if (single, stability) not in cache:
            path = tmp_path_factory.mktemp("onnx") / "decoder.onnx"
            wrapper = export_onnx(
                model, path, return_single_mask=single, use_stability_score=stability
            )
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            cache[single, stability] = wrapper, session
        return cache[single, stability]

    return get


@pytest.fixture(scope="module")
def predictors(model) -> dict[tuple[int, int], SamPredictor]:
    """A predictor per original size, a random image of that size set."""
    rng = np.random.default_rng(0)
    result = {}
    for size in SIZES:
        predictor = SamPredictor(model)
        predictor.set_image(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        result[size] = predictor
    return result


def onnx_inputs(
    predictor: SamPredictor,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
) -> Arrays:
    """The ONNX model's inputs for a prompt in original pixels, as the official notebook
    builds them: points, then the box's corners (labels 2, 3) or a padding point (-1)."""
    coords, point_labels = np.zeros((0, 2)), np.zeros(0)
    if points is not None:
        coords, point_labels = np.asarray(points, float), np.asarray(labels, float)
    if box is None:
        coords, point_labels = np.concatenate([coords, [[0, 0]]]), np.append(point_labels, -1)
    else:
        coords = np.concatenate([coords, np.reshape(box, (2, 2))])
        point_labels = np.append(point_labels, [2, 3])
    size = predictor.original_size
    mask_size = predictor.model.prompt_encoder.mask_input_size
    return {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": predictor.transform.apply_coords(coords, size)[None].astype(np.float32),
        "point_labels": point_labels[None].astype(np.float32),
        "mask_input": (
            np.zeros((1, 1, *mask_size)) if mask_input is None else mask_input[None, None]
        ).astype(np.float32),
        "has_mask_input": np.array([mask_input is not None], np.float32),
        "orig_im_size": np.array(size, np.float32),
    }


def run(session: Session, inputs: Arrays) -> Arrays:
    """onnxruntime's outputs by name, checked against the wrapper module's."""
    wrapper, ort_session = session
    outputs = dict(zip(OUTPUT_NAMES, ort_session.run(None, inputs)))
    expected = wrapper(**{name: torch.from_numpy(value) for name, value in inputs.items()})
    for name, want in zip(OUTPUT_NAMES, expected):
        np.testing.assert_allclose(outputs[name], want.numpy(), rtol=0, atol=ATOL, err_msg=name)
    return outputs


def predict(predictor: SamPredictor, multimask: bool, **prompt: np.ndarray | None) -> Arrays:
    """The predictor's logits, binary masks, scores and low-resolution logits."""
    logits, scores, low_res = predictor.predict(
        **prompt, multimask_output=multimask, return_logits=True
    )
    masks = predictor.predict(**prompt, multimask_output=multimask)[0]
    return {"logits": logits, "masks": masks, "scores": scores, "low_res": low_res}


def assert_matches(onnx_out: Arrays, expected: Arrays, index: slice | list[int]) -> None:
    """ONNX outputs at mask ``index`` equal the predictor's within :data:`ATOL`, and its masks
    (logits > 0) equal the predictor's binary masks away from the threshold."""
    logits = onnx_out["masks"][0, index]
    assert logits.shape == expected["logits"].shape
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(onnx_out["iou_predictions"][0, index], expected["scores"],
                               rtol=0, atol=ATOL)
    np.testing.assert_allclose(onnx_out["low_res_masks"][0, index], expected["low_res"],
                               rtol=0, atol=ATOL)
    certain = np.abs(logits) > CERTAIN
    assert np.array_equal((logits > 0)[certain], expected["masks"][certain])


def clicks(size: tuple[int, int], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random clicks in an image of ``size``, the first positive."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, (n, 2)) * [size[1] - 1, size[0] - 1]
    labels = np.concatenate([[1], rng.integers(0, 2, n - 1)])
    return points, labels


def box_of(size: tuple[int, int]) -> np.ndarray:
    return np.array([0.1 * size[1], 0.2 * size[0], 0.7 * size[1], 0.9 * size[0]])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("num_clicks", [1, 2, 5, 9])
def test_points_any_number(exported, predictors, size, num_clicks):
    """N is a dynamic axis: one export serves every number of points; mask 0 is the
    single-mask output, masks 1-3 the ambiguity masks."""
    predictor = predictors[size]
    points, labels = clicks(size, num_clicks, seed=num_clicks)
    out = run(exported(), onnx_inputs(predictor, points, labels))
    assert out["masks"].shape == (1, 4, *size)
    assert_matches(out, predict(predictor, True, point_coords=points, point_labels=labels),
                   slice(1, None))
    assert_matches(out, predict(predictor, False, point_coords=points, point_labels=labels),
                   slice(0, 1))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("num_clicks", [0, 2])
def test_box_as_corner_labels(exported, predictors, size, num_clicks):
    """A box is two points labelled 2 and 3 after the clicks (and no padding point)."""
    predictor = predictors[size]
    points, labels = clicks(size, num_clicks, seed=7) if num_clicks else (None, None)
    box = box_of(size)
    out = run(exported(), onnx_inputs(predictor, points, labels, box))
    prompt = {"point_coords": points, "point_labels": labels, "box": box}
    assert_matches(out, predict(predictor, True, **prompt), slice(1, None))
    assert_matches(out, predict(predictor, False, **prompt), slice(0, 1))


@pytest.mark.parametrize("size", [(48, 40), (100, 37)])
def test_mask_input(exported, predictors, size):
    """``mask_input`` is used only with ``has_mask_input`` 1."""
    predictor = predictors[size]
    points, labels = clicks(size, 2, seed=11)
    previous = predictor.predict(points, labels, multimask_output=True)[2]
    prompt = {"point_coords": points, "point_labels": labels, "mask_input": previous[[1]]}
    out = run(exported(), onnx_inputs(predictor, points, labels, mask_input=previous[1]))
    assert_matches(out, predict(predictor, True, **prompt), slice(1, None))
    assert_matches(out, predict(predictor, False, **prompt), slice(0, 1))

    ignored = onnx_inputs(predictor, points, labels, mask_input=previous[1])
    ignored["has_mask_input"][:] = 0
    out = run(exported(), ignored)
    expected = predict(predictor, True, point_coords=points, point_labels=labels)
    assert_matches(out, expected, slice(1, None))


@pytest.mark.parametrize("stability", [False, True])
@pytest.mark.parametrize("size", [(48, 40), (30, 64)])
@pytest.mark.parametrize("prompt", ["click", "box", "clicks", "clicks_box"])
def test_return_single_mask(exported, predictors, size, prompt, stability):
    """One mask: the best ambiguity mask for a prompt of at most 2 points (a click and its
    padding, or a box alone), else the single-mask output, as the official model picks."""
    predictor = predictors[size]
    points, labels = clicks(size, 2 if prompt.startswith("clicks") else 1, seed=5)
    box = box_of(size) if prompt.endswith("box") else None
    if prompt == "box":
        points = labels = None
    kwargs = {"point_coords": points, "point_labels": labels, "box": box}
    inputs = onnx_inputs(predictor, points, labels, box)
    out = run(exported(single=True, stability=stability), inputs)
    multi = predictor.predict(**kwargs, multimask_output=True, return_logits=True)
    single = predictor.predict(**kwargs, multimask_output=False, return_logits=True)
    logits = np.concatenate([single[0], multi[0]])
    low_res = np.concatenate([single[2], multi[2]])
    scores = np.concatenate([single[1], multi[1]])
    if stability:
        scores = stability_score(torch.from_numpy(low_res), 0.0, 1.0).numpy()
    best = 0 if prompt in ("clicks", "clicks_box") else 1 + int(np.argmax(scores[1:]))
    expected = {"logits": logits[[best]], "masks": logits[[best]] > 0, "scores": scores[[best]],
                "low_res": low_res[[best]]}
    assert out["masks"].shape == (1, 1, *size)
    assert_matches(out, expected, slice(0, 1))


@pytest.mark.parametrize("size", SIZES)
def test_stability_score(exported, predictors, size):
    """With ``use_stability_score`` the scores are the stability scores (offset 1) of the
    returned low-resolution logits, bitwise as sam_lightning.ops computes them."""
    predictor = predictors[size]
    points, labels = clicks(size, 3, seed=2)
    inputs = onnx_inputs(predictor, points, labels)
    out = run(exported(stability=True), inputs)
    expected = stability_score(torch.from_numpy(out["low_res_masks"]), 0.0, 1.0).numpy()
    np.testing.assert_array_equal(out["iou_predictions"], expected)
    plain = run(exported(), inputs)
    np.testing.assert_array_equal(out["masks"], plain["masks"])
    assert not np.allclose(out["iou_predictions"], plain["iou_predictions"])


def test_attention_path_fixed_at_export(tmp_path):
    """The decoder's attention picks its order of operations from the number of tokens: at
    256 px an export with 3 points traces the folded few-queries path, which must still
    give the predictor's results for 13 points (where PyTorch takes the plain path)."""
    model = randomize_(build_sam("vit_tiny", image_size=256), seed=4)
    attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    tokens = 1 + model.mask_decoder.num_mask_tokens
    assert (tokens + 3) * attention.num_heads < attention.internal_dim < 16 * 16
    assert (tokens + 13) * attention.num_heads > attention.internal_dim
    path = tmp_path / "decoder.onnx"
    wrapper = export_onnx(model, path)
    session = wrapper, onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    predictor = SamPredictor(model)
    size = (200, 256)
    predictor.set_image(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8))
    for num_clicks in (2, 12):
        points, labels = clicks(size, num_clicks, seed=num_clicks)
        out = run(session, onnx_inputs(predictor, points, labels))
        expected = predict(predictor, True, point_coords=points, point_labels=labels)
        assert_matches(out, expected, slice(1, None))


@pytest.mark.parametrize(("single", "stability"), [(False, False), (True, False), (True, True)])
def test_official_onnx_model(model, exported, predictors, single, stability):
    """The official SamOnnxModel on the official modules with the same weights gives the
    same outputs."""
    import_official()  # with the torchvision stand-in; utils.onnx itself needs none
    official_onnx = importlib.import_module("segment_anything.utils.onnx")
    reference = build_official(128, 4, 4, (1, 3), image_size=IMAGE_SIZE)
    reference.load_state_dict(model.state_dict())
    reference_onnx = official_onnx.SamOnnxModel(reference, single, stability)
    for size in ((48, 40), (100, 37)):
        predictor = predictors[size]
        for num_clicks, box in ((1, None), (2, box_of(size))):
            points, labels = clicks(size, num_clicks, seed=9)
            previous = predictor.predict(points, labels)[2][0]
            inputs = onnx_inputs(predictor, points, labels, box, mask_input=previous)
            out = run(exported(single, stability), inputs)
            expected = reference_onnx(**{k: torch.from_numpy(v) for k, v in inputs.items()})
            for name, want in zip(OUTPUT_NAMES, expected):
                np.testing.assert_allclose(out[name], want.numpy(), rtol=0, atol=ATOL)


def test_command(model, tmp_path, capsys):
    """tools/export_onnx.py writes a valid model with the official names and a dynamic N,
    and reports onnxruntime's differences from PyTorch."""
    checkpoint, output = tmp_path / "tiny.pth", tmp_path / "out" / "sam_decoder.onnx"
    torch.save(model.state_dict(), checkpoint)
    argv = ["--checkpoint", str(checkpoint), "--model-type", "vit_tiny", "--output",
            str(output), "--return-single-mask", "--opset", "17", "--image-size", "64"]
    assert export_command.main(argv) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    proto = onnx.load(str(output))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    point_dims = proto.graph.input[1].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in point_dims] == [1, "num_points", 2]
    assert proto.opset_import[0].version == 17

"""ClipEncoder: loading from local files, text embeddings and mask-restricted image
embeddings of a tiny random CLIP."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from clip_test_models import save_tiny_clip
from transformers import CLIPTokenizer

from sam_lightning.modeling.text_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    ClipEncoder,
    ClipEncoderFilesError,
    tiny_clip_config,
)

SIZE, PATCH = 32, 8  # tiny_clip_config's defaults: a 4×4 grid of patches


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny_dir) -> ClipEncoder:
    return ClipEncoder.from_pretrained(tiny_dir)


def _images(count: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 255


def _image_features(encoder: ClipEncoder, images: torch.Tensor) -> torch.Tensor:
    """``CLIPModel.get_image_features`` of the images normalised as CLIP expects."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = (images / 255 - mean) / std
    return encoder.model.get_image_features(pixel_values=pixels).pooler_output


def _restricted_reference(encoder: ClipEncoder, images: torch.Tensor, masks: torch.Tensor):
    """The masked embedding recomputed plainly: the last layer runs on the class token and
    the kept patches only (keys and queries), which for the class token is the same as
    masking the other keys."""
    vision = encoder.model.vision_model
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = (images / 255 - mean) / std
    before_last = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    grid = SIZE // PATCH
    rows = []
    for b in range(len(images)):
        coverage = [
            masks[b, i * PATCH : (i + 1) * PATCH, j * PATCH : (j + 1) * PATCH].float().mean()
            for i in range(grid)
            for j in range(grid)
        ]
        kept = [k for k, c in enumerate(coverage) if c >= 0.5]
        if not kept:
            largest = max(coverage)
            kept = [k for k, c in enumerate(coverage) if c == largest]
        tokens = before_last[b : b + 1, [0] + [1 + k for k in kept]]
        out = vision.encoder.layers[-1](tokens, None)[:, 0]
        rows.append(encoder.model.visual_projection(vision.post_layernorm(out)))
    return torch.cat(rows)


def test_properties_shapes_and_mode(loaded):
    assert (loaded.embed_dim, loaded.image_size, loaded.patch_size) == (16, SIZE, PATCH)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    text = loaded.encode_text(["a cat", "a photo of a dog"])
    image = loaded.encode_image(_images(3))
    assert text.shape == (2, 16) and text.dtype == torch.float32
    assert image.shape == (3, 16) and image.dtype == torch.float32
    uint8 = loaded.encode_image(_images(1).round().to(torch.uint8))
    assert uint8.shape == (1, 16) and uint8.dtype == torch.float32


def test_from_config_is_deterministic_and_keeps_global_rng():
    state = torch.get_rng_state()
    a = ClipEncoder.from_config(tiny_clip_config(), seed=3)
    assert torch.equal(state, torch.get_rng_state())
    b = ClipEncoder.from_config(tiny_clip_config(), seed=3)
    c = ClipEncoder.from_config(tiny_clip_config(), seed=4)
    images = _images(2)
    assert torch.equal(a.encode_image(images), b.encode_image(images))
    assert not torch.allclose(a.encode_image(images), c.encode_image(images))
    assert not a.training
    with pytest.raises(RuntimeError, match="no tokenizer was loaded"):
        a.encode_text(["a cat"])


def test_round_trip_equals_saved_model(loaded):
    saved = ClipEncoder.from_config(tiny_clip_config(), seed=0)
    state, loaded_state = saved.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[key], loaded_state[key]) for key in state)
    images = _images(2)
    torch.testing.assert_close(loaded.encode_image(images), saved.encode_image(images))
    tokens = loaded.tokenizer(["a cat", "hi!"], padding=True, return_tensors="pt")
    expected = saved.model.get_text_features(**tokens).pooler_output
    torch.testing.assert_close(loaded.encode_text(["a cat", "hi!"]), expected)


def test_tokenizer(loaded):
    ids = loaded.tokenizer(["ab c"])["input_ids"][0]
    vocab = loaded.tokenizer.get_vocab()
    expected = ["<|startoftext|>", "a", "b</w>", "c</w>", "<|endoftext|>"]
    assert ids == [vocab[token] for token in expected]


def test_tokenizer_json_only(tiny_dir, loaded, tmp_path):
    """transformers 5's CLIPTokenizer.save_pretrained writes tokenizer.json, not the BPE
    files: such a directory loads too."""
    directory = tmp_path / "tokenizer_json"
    shutil.copytree(tiny_dir, directory)
    (directory / "vocab.json").unlink()
    (directory / "merges.txt").unlink()
    CLIPTokenizer.from_pretrained(tiny_dir).save_pretrained(directory)
    assert (directory / "tokenizer.json").is_file() and not (directory / "vocab.json").exists()
    texts = ["a photo of a cat", "dog"]
    torch.testing.assert_close(
        ClipEncoder.from_pretrained(directory).encode_text(texts), loaded.encode_text(texts)
    )


def test_bin_weights_load_safely(tiny_dir, loaded, tmp_path):
    directory = tmp_path / "bin"
    shutil.copytree(tiny_dir, directory)
    (directory / "model.safetensors").unlink()
    state = loaded.model.state_dict()
    torch.save(state, directory / "pytorch_model.bin")
    images = _images(2)
    torch.testing.assert_close(
        ClipEncoder.from_pretrained(directory).encode_image(images), loaded.encode_image(images)
    )

    ran = []

    class Payload:
        def __reduce__(self):
            return ran.append, ("unpickled",)

    torch.save({**state, "payload": Payload()}, directory / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        ClipEncoder.from_pretrained(directory)
    assert ran == []


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        (["config.json"], ["config.json"]),
        (["model.safetensors"], ["model.safetensors or pytorch_model.bin"]),
        (["vocab.json"], ["vocab.json (or tokenizer.json)"]),
        (["vocab.json", "merges.txt"], ["vocab.json + merges.txt"]),
        (["config.json", "merges.txt"], ["config.json", "merges.txt (or tokenizer.json)"]),
    ],
)
def test_missing_files(tiny_dir, tmp_path, removed, named):
    directory = tmp_path / "incomplete"
    shutil.copytree(tiny_dir, directory)
    for name in removed:
        (directory / name).unlink()
    with pytest.raises(ClipEncoderFilesError) as error:
        ClipEncoder.from_pretrained(directory)
    assert isinstance(error.value, FileNotFoundError)
    assert error.value.directory == directory
    message = str(error.value)
    assert str(directory) in message
    assert all(part in message for part in named)
    assert len(error.value.missing) == len(named)


def test_missing_directory(tmp_path):
    with pytest.raises(ClipEncoderFilesError, match="the directory itself"):
        ClipEncoder.from_pretrained(tmp_path / "nowhere")


def _partial_masks() -> torch.Tensor:
    """Three masks: full and exactly half-covered patches, an L shape, and a small blob on
    four patches, none half covered (the three equally most covered are kept)."""
    masks = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    masks[0, 0:16, 0:12] = True
    masks[1, 8:32, 24:32] = True
    masks[1, 24:32, 0:24] = True
    masks[2, 13:19, 14:18] = True  # 3×2 pixels in each of four patches ...
    masks[2, 13:16, 14:15] = False  # ... but 3×1 in the first
    return masks


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_masked_embedding(attention):
    encoder = ClipEncoder.from_config(tiny_clip_config(), seed=1, attn_implementation=attention)
    assert encoder.model.config._attn_implementation == attention
    images = _images(3, seed=2)
    plain = _image_features(encoder, images)
    full = torch.ones(3, SIZE, SIZE, dtype=torch.bool)
    torch.testing.assert_close(encoder.encode_image(images), plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode_image(images, full), plain, atol=1e-5, rtol=0)
    masks = _partial_masks()
    masked = encoder.encode_image(images, masks)
    assert (masked - plain).abs().amax(dim=1).min() > 1e-3
    reference = _restricted_reference(encoder, images, masks)
    torch.testing.assert_close(masked, reference, atol=1e-5, rtol=0)


def test_mask_errors(loaded):
    images = _images(2)
    masks = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    masks[1] = False
    with pytest.raises(ValueError, match=r"masks \[1\] are empty"):
        loaded.encode_image(images, masks)
    with pytest.raises(ValueError, match="boolean"):
        loaded.encode_image(images, torch.ones(2, SIZE, SIZE))
    with pytest.raises(ValueError, match="boolean 2×32×32"):
        loaded.encode_image(images, torch.ones(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="B×3×32×32"):
        loaded.encode_image(torch.zeros(2, 3, 16, 16))


def test_padding_and_truncation(loaded):
    texts = ["a", "a photo of a cat", "dog!"]
    batch = loaded.encode_text(texts)
    for row, text in zip(batch, texts):
        torch.testing.assert_close(row, loaded.encode_text([text])[0], atol=1e-5, rtol=0)
    # 16 positions: both truncate to the same 14 characters between the special tokens.
    long = loaded.encode_text(["abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz and more"])
    torch.testing.assert_close(long[0], long[1])
    with pytest.raises(ValueError, match="non-empty sequence"):
        loaded.encode_text("a cat")
    with pytest.raises(ValueError, match="non-empty sequence"):
        loaded.encode_text([])

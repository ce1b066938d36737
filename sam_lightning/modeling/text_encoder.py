"""CLIP text and image encoders for SAM's text prompts (paper §7.5 and App. D.5).

:class:`ClipEncoder` wraps HuggingFace ``transformers``' :class:`~transformers.CLIPModel`
(needs the ``text`` extra; importing :mod:`sam_lightning` does not). It embeds texts, and
images with an optional mask that restricts what the class token of the last transformer
layer attends to, so that a mask's embedding describes the masked object. Both give the
projected embedding, not normalised: the SAM prompt encoder normalises it.

Weights come only from local files in the HuggingFace layout (``CLIPModel.save_pretrained``
plus ``CLIPTokenizer.save_pretrained``, or a download of e.g.
``openai/clip-vit-large-patch14-336``, the paper's ViT-L/14@336px), never from the network,
and are read safely: safetensors, or ``torch.load(weights_only=True)`` for a ``.bin``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

#: OpenAI CLIP's per-channel RGB pixel mean and standard deviation (0-1 scale).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

AttentionImplementation = Literal["sdpa", "eager"]

_CONFIG = "config.json"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# transformers 5 writes tokenizer.json only; downloads from the hub also have the BPE files.
_TOKENIZER_JSON = "tokenizer.json"
_BPE_FILES = ("vocab.json", "merges.txt")


class ClipEncoderFilesError(FileNotFoundError):
    """A CLIP directory lacks files that :meth:`ClipEncoder.from_pretrained` needs."""

    def __init__(self, directory: Path, missing: list[str]) -> None:
        self.directory = directory
        self.missing = missing
        super().__init__(f"CLIP directory {directory} lacks {'; '.join(missing)}")


def _missing_files(directory: Path) -> list[str]:
    """Descriptions of the files a CLIP directory lacks (empty when it is complete)."""
    if not directory.is_dir():
        return ["the directory itself"]
    missing = []
    if not (directory / _CONFIG).is_file():
        missing.append(_CONFIG)
    if not any((directory / name).is_file() for name in _WEIGHTS):
        missing.append(" or ".join(_WEIGHTS))
    absent_bpe = [name for name in _BPE_FILES if not (directory / name).is_file()]
    if absent_bpe and not (directory / _TOKENIZER_JSON).is_file():
        missing.append(f"the tokenizer: {' + '.join(absent_bpe)} (or {_TOKENIZER_JSON})")
    return missing


def tiny_clip_config(
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 16,
    max_text_length: int = 16,
    vocab_size: int = 514,
) -> CLIPConfig:
    """A tiny CLIP of ``layers`` blocks of ``width`` channels in both towers, for tests and
    demos. The default vocabulary is byte-level BPE without merges: the 256 byte symbols,
    their end-of-word forms, then ``<|startoftext|>`` and ``<|endoftext|>`` (the last two
    ids, as in OpenAI's CLIP; ``<|endoftext|>`` also pads)."""
    tower = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }
    text = {
        **tower,
        "vocab_size": vocab_size,
        "max_position_embeddings": max_text_length,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": vocab_size - 1,
        "pad_token_id": vocab_size - 1,
    }
    vision = {**tower, "image_size": image_size, "patch_size": patch_size}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


class ClipEncoder(nn.Module):
    """A CLIP model (and its tokenizer) giving projected text and (masked) image embeddings.

    Built by :meth:`from_pretrained` or :meth:`from_config`, it is in eval mode with its
    parameters frozen, the usual use; ``requires_grad_(True)`` makes them trainable.
    """

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.requires_grad_(False)
        self.eval()
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, attn_implementation: AttentionImplementation = "sdpa"
    ) -> ClipEncoder:
        """Load model and tokenizer from a local directory in the HuggingFace layout, in
        float32; raises :class:`ClipEncoderFilesError` naming the files it lacks."""
        directory = Path(path)
        missing = _missing_files(directory)
        if missing:
            raise ClipEncoderFilesError(directory, missing)
        model, info = CLIPModel.from_pretrained(
            directory,
            local_files_only=True,
            use_safetensors=(directory / _WEIGHTS[0]).is_file(),
            weights_only=True,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
            output_loading_info=True,
        )
        problems = {key: sorted(info[key]) for key in ("missing_keys", "mismatched_keys")}
        if any(problems.values()):
            raise ValueError(f"CLIP weights in {directory} do not fit its config: {problems}")
        tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
        return cls(model, tokenizer)

    @classmethod
    def from_config(
        cls,
        config: CLIPConfig,
        seed: int = 0,
        attn_implementation: AttentionImplementation = "sdpa",
    ) -> ClipEncoder:
        """Random weights for ``config``, the same for the same ``seed`` (the global random
        state is left as it was); no tokenizer, so :meth:`encode_text` is unavailable."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(config)
        model.set_attn_implementation(attn_implementation)
        return cls(model)

    @property
    def embed_dim(self) -> int:
        """Dimension of the projected embeddings (768 for ViT-L/14)."""
        return self.model.config.projection_dim

    @property
    def image_size(self) -> int:
        """Side of the square input images in pixels (336 for ViT-L/14@336px)."""
        return self.model.config.vision_config.image_size

    @property
    def patch_size(self) -> int:
        """Side of the image patches in pixels (14 for ViT-L/14)."""
        return self.model.config.vision_config.patch_size

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.model.visual_projection.weight.device

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """``B×embed_dim`` projected embeddings of B texts, on the module's device.

        Texts are padded to the longest and truncated to the model's maximum length (77
        tokens for OpenAI's CLIP), which gives each text the embedding it has alone.
        """
        if self.tokenizer is None:
            raise RuntimeError(
                "no tokenizer was loaded: ClipEncoder.from_config builds the model only; "
                "use ClipEncoder.from_pretrained on a directory with a tokenizer"
            )
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty sequence of strings")
        tokens = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        ).to(self.device)
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return output.pooler_output

    def encode_image(self, images: Tensor, masks: Tensor | None = None) -> Tensor:
        """``B×embed_dim`` projected embeddings of ``B×3×S×S`` RGB images in 0-255 at
        ``S = image_size``, computed on the module's device.

        With ``B×S×S`` boolean ``masks``, the last transformer layer's attention keys are
        the class token and the patches inside the mask: those at least half covered or,
        where none is, those with the largest (non-zero) coverage. Without masks (or with
        all-True ones) this is ``CLIPModel.get_image_features`` of the normalised images.
        """
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"images must be B×3×{size}×{size}, got {tuple(images.shape)}")
        vision = self.model.vision_model
        weight = self.model.visual_projection.weight
        pixels = images.to(device=weight.device, dtype=weight.dtype)
        hidden = vision.embeddings((pixels - self.pixel_mean) / self.pixel_std)
        hidden = vision.pre_layrnorm(hidden)
        *layers, last = vision.encoder.layers
        for layer in layers:
            hidden = layer(hidden, None)
        attention_mask = None
        if masks is not None:
            keys = self._attention_keys(masks.to(weight.device), len(images))
            blocked = torch.zeros(keys.shape, dtype=hidden.dtype, device=hidden.device)
            blocked = blocked.masked_fill(~keys, torch.finfo(hidden.dtype).min)
            tokens = keys.shape[1]
            attention_mask = blocked[:, None, None, :].expand(-1, 1, tokens, tokens)
        hidden = last(hidden, attention_mask)
        return self.model.visual_projection(vision.post_layernorm(hidden[:, 0]))

    def _attention_keys(self, masks: Tensor, batch: int) -> Tensor:
        """``B×(1 + patches)`` boolean keys: the class token and the patches in the masks."""
        size, patch = self.image_size, self.patch_size
        if masks.shape != (batch, size, size) or masks.dtype != torch.bool:
            raise ValueError(
                f"masks must be boolean {batch}×{size}×{size}, "
                f"got {masks.dtype} {tuple(masks.shape)}"
            )
        empty = (~masks.flatten(1).any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"masks {empty} are empty (all False)")
        grid = size // patch
        cells = masks[:, : grid * patch, : grid * patch].reshape(batch, grid, patch, grid, patch)
        coverage = cells.float().mean(dim=(2, 4)).flatten(1)
        inside = coverage >= 0.5
        largest = coverage == coverage.amax(dim=1, keepdim=True)
        inside = torch.where(inside.any(dim=1, keepdim=True), inside, largest & (coverage > 0))
        return torch.cat([inside.new_ones(batch, 1), inside], dim=1)

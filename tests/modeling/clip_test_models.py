"""Helpers for CLIP tests: a tiny random CLIP with a working byte-level BPE tokenizer, saved
in the HuggingFace layout (nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

from sam_lightning.modeling.text_encoder import ClipEncoder, tiny_clip_config


def byte_symbols() -> list[str]:
    """The 256 printable symbols that byte-level BPE (GPT-2, CLIP) uses for the bytes 0-255,
    in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shift)
            shift += 1
    return [symbols[byte] for byte in range(256)]


def save_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP (:func:`tiny_clip_config`) with weights from ``seed`` and a
    merge-free BPE tokenizer (``vocab.json``: the byte symbols, their ``</w>`` forms, then
    ``<|startoftext|>`` and ``<|endoftext|>``; ``merges.txt``: the header only) to
    ``directory``; returns it."""
    directory = Path(directory)
    ClipEncoder.from_config(tiny_clip_config(), seed=seed).model.save_pretrained(directory)
    symbols = byte_symbols()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return directory

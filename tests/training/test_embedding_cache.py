"""The disk cache of image embeddings: bit-identical float32 entries, half-precision
entries, staleness (fingerprint, dtype, entry metadata), corrupt and temporary files, image
keys, concurrent processes and the configurations that cannot use it."""

from __future__ import annotations

import copy
import multiprocessing
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from sam_lightning.file_io import is_temp_file, remove_temp_files
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.fingerprint import encoder_fingerprint
from sam_lightning.training import embedding_cache
from sam_lightning.training.embedding_cache import (
    CorruptEntryWarning,
    EmbeddingCache,
    StaleCacheError,
    cache_problems,
    image_key,
)

SIDE = 64  # the vit_tiny model's input side
TINY_SIDE = 32  # the TinyEncoder's


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam("vit_tiny", image_size=SIDE).eval()


class TinyEncoder(nn.Module):
    """A deterministic encoder (a per-pixel channel mix, then 4×4 average pooling) with a
    parameter and a buffer, whose output does not depend on the number of threads, so
    processes compute the same bits."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(channels, 3, generator=generator))
        self.register_buffer("offset", torch.randn(channels, generator=generator))

    def encode(self, images: list[Tensor]) -> Tensor:
        batch = torch.stack(
            [
                F.pad(
                    image.float() / 255,
                    (0, TINY_SIDE - image.shape[2], 0, TINY_SIDE - image.shape[1]),
                )
                for image in images
            ]
        )
        mixed = sum(self.weight[:, k, None, None] * batch[:, k, None] for k in range(3))
        return F.avg_pool2d(mixed + self.offset[:, None, None], 4)


class Counting:
    """Wraps an encode function and records each call's images."""

    def __init__(self, encode: Callable[[list[Tensor]], Tensor]) -> None:
        self.encode = encode
        self.calls: list[list[Tensor]] = []

    def __call__(self, images: list[Tensor]) -> Tensor:
        self.calls.append([image.clone() for image in images])
        return self.encode(images)


def never(images: list[Tensor]) -> Tensor:
    raise AssertionError(f"encode called with {len(images)} images")


def make_batch(sizes: list[tuple[int, int]], side: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``B×3×S×S`` uint8 images, random in their unpadded part and zero elsewhere, and their
    ``B×2`` input sizes."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros((len(sizes), 3, side, side), dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randint(0, 256, (3, h, w), generator=generator)
    return images, torch.tensor(sizes, dtype=torch.int64)


def crops(images: Tensor, sizes: Tensor) -> list[Tensor]:
    return [image[:, :h, :w] for image, (h, w) in zip(images, sizes.tolist())]


def direct(sam, images: Tensor, sizes: Tensor) -> Tensor:
    with torch.no_grad():
        return sam.encode_images(crops(images, sizes))


SIZES = [(64, 48), (40, 64), (64, 64)]


# ----------------------------------------------------------------------- hits and misses


def test_float32_cache_is_bit_identical_and_read_back_without_encoding(tmp_path, sam):
    images, sizes = make_batch(SIZES, SIDE)
    expected = direct(sam, images, sizes)
    fingerprint = encoder_fingerprint(sam.image_encoder)
    cache = EmbeddingCache(tmp_path, fingerprint)
    encode = Counting(sam.encode_images)
    out = cache.embed(encode, images, sizes)
    assert len(encode.calls) == 1
    assert [tuple(image.shape) for image in encode.calls[0]] == [(3, h, w) for h, w in SIZES]
    assert out.dtype == torch.float32 and out.device == images.device
    assert torch.equal(out, expected)
    assert (cache.hits, cache.misses) == (0, 3)
    entries = sorted(p for p in tmp_path.rglob("*.safetensors"))
    keys = sorted(image_key(image, size) for image, size in zip(images, sizes))
    assert [p.stem for p in entries] == keys
    assert all(p.parent.name == p.stem[:2] for p in entries)

    reopened = EmbeddingCache(tmp_path, fingerprint)
    encode = Counting(sam.encode_images)
    order = [2, 0, 1]
    again = reopened.embed(encode, images[order], sizes[order])
    assert encode.calls == []
    assert (reopened.hits, reopened.misses) == (3, 0)
    assert torch.equal(again, expected[order])


def test_only_the_missing_images_are_encoded_once_each(tmp_path):
    encoder = TinyEncoder()
    images, sizes = make_batch([(32, 20), (16, 32), (32, 32)], TINY_SIDE)
    cache = EmbeddingCache(tmp_path, encoder_fingerprint(encoder))
    cache.embed(encoder.encode, images[:2], sizes[:2])
    encode = Counting(encoder.encode)
    order = [2, 1, 2, 0]  # image 2 twice, missing; 0 and 1 stored
    out = cache.embed(encode, images[order], sizes[order])
    assert len(encode.calls) == 1 and len(encode.calls[0]) == 1
    assert torch.equal(encode.calls[0][0], images[2, :, :32, :32])
    assert torch.equal(out, encoder.encode(crops(images[order], sizes[order])))
    assert (cache.hits, cache.misses) == (2, 2 + 2)  # the first call: 2 misses


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [(torch.float16, 2**-11, 2**-25), (torch.bfloat16, 2**-8, 0.0)],
    ids=["float16", "bfloat16"],
)
def test_half_precision_cache_rounds_and_stores_in_its_dtype(tmp_path, sam, dtype, rtol, atol):
    """Round to nearest: relative error at most 2^-11 (float16; 2^-25 absolute below its
    normal range) or 2^-8 (bfloat16)."""
    images, sizes = make_batch(SIZES, SIDE)
    expected = direct(sam, images, sizes)
    fingerprint = encoder_fingerprint(sam.image_encoder)
    cache = EmbeddingCache(tmp_path / "half", fingerprint, dtype=dtype)
    out = cache.embed(sam.encode_images, images, sizes)
    assert out.dtype == torch.float32
    assert torch.equal(out, expected.to(dtype).float())  # misses return the stored values
    assert not torch.equal(out, expected)
    assert ((out - expected).abs() <= atol + rtol * expected.abs()).all()
    again = EmbeddingCache(tmp_path / "half", fingerprint, dtype=dtype).embed(never, images, sizes)
    assert torch.equal(again, out)

    full = EmbeddingCache(tmp_path / "full", fingerprint)
    full.embed(sam.encode_images, images, sizes)
    for image, size in zip(images, sizes):
        path = cache.path(image_key(image, size))
        with safe_open(str(path), framework="pt") as entry:
            assert entry.get_tensor("embedding").dtype == dtype
        full_size = full.path(image_key(image, size)).stat().st_size
        assert path.stat().st_size < 0.6 * full_size


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_with_one_weight_one_buffer_or_the_dtype(sam):
    encoder = sam.image_encoder
    fingerprint = encoder_fingerprint(encoder)
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    changed = copy.deepcopy(encoder)
    assert encoder_fingerprint(changed) == fingerprint
    weight = changed.blocks[0].attn.qkv.weight
    with torch.no_grad():
        old = weight[3, 5].clone()
        weight[3, 5] = torch.nextafter(old, torch.tensor(1.0))
    assert encoder_fingerprint(changed) != fingerprint
    with torch.no_grad():
        weight[3, 5] = old
    assert encoder_fingerprint(changed) == fingerprint

    half = copy.deepcopy(encoder).to(torch.bfloat16)
    half_fingerprint = encoder_fingerprint(half)
    assert half_fingerprint != fingerprint
    with torch.no_grad():
        half.neck[0].weight.view(-1)[0] += 1
    assert encoder_fingerprint(half) != half_fingerprint

    tiny = TinyEncoder()
    tiny_fingerprint = encoder_fingerprint(tiny)
    with torch.no_grad():
        tiny.offset[1] += 1e-3  # a buffer
    assert encoder_fingerprint(tiny) != tiny_fingerprint


def test_fingerprint_extra_values(sam):
    encoder = sam.image_encoder
    plain = encoder_fingerprint(encoder)
    extra = {"pixel_mean": sam.pixel_mean, "precision": "32-true"}
    with_extra = encoder_fingerprint(encoder, extra=extra)
    assert with_extra != plain
    assert encoder_fingerprint(encoder, extra={**extra, "precision": "bf16-mixed"}) != with_extra
    assert encoder_fingerprint(encoder, extra={**extra, "pixel_mean": sam.pixel_mean + 1}) != (
        with_extra
    )
    with pytest.raises(TypeError, match="'module'.*Linear"):
        encoder_fingerprint(encoder, extra={"module": nn.Linear(1, 1)})


# ------------------------------------------------------------------------------- entries


def filled(tmp_path: Path) -> tuple[EmbeddingCache, TinyEncoder, Tensor, Tensor, Path]:
    """A cache holding one image's entry, the encoder, the image batch and the entry path."""
    encoder = TinyEncoder()
    images, sizes = make_batch([(24, 32)], TINY_SIDE)
    cache = EmbeddingCache(tmp_path, encoder_fingerprint(encoder))
    cache.embed(encoder.encode, images, sizes)
    return cache, encoder, images, sizes, cache.path(image_key(images[0], sizes[0]))


@pytest.mark.parametrize("field", ["fingerprint", "key", "format"])
def test_entry_with_altered_metadata_is_refused(tmp_path, field):
    cache, _, images, sizes, path = filled(tmp_path)
    with safe_open(str(path), framework="pt") as entry:
        metadata, tensor = entry.metadata(), entry.get_tensor("embedding")
    save_file({"embedding": tensor}, str(path), metadata={**metadata, field: "0" * 64})
    with pytest.raises(StaleCacheError, match=re.escape(str(path))) as error:
        EmbeddingCache(tmp_path, cache.fingerprint).embed(never, images, sizes)
    assert (error.value.field, error.value.cached) == (field, "0" * 64)
    assert error.value.current == metadata[field]


def test_entry_of_another_dtype_is_refused(tmp_path):
    cache, _, images, sizes, path = filled(tmp_path)
    with safe_open(str(path), framework="pt") as entry:
        metadata, tensor = entry.metadata(), entry.get_tensor("embedding")
    save_file({"embedding": tensor.half()}, str(path), metadata=metadata)
    with pytest.raises(StaleCacheError, match="its dtype is 'torch.float16'") as error:
        EmbeddingCache(tmp_path, cache.fingerprint).embed(never, images, sizes)
    assert error.value.field == "dtype"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40
    path.write_bytes(bytes(data))


def _drop_checksum(path: Path) -> None:
    with safe_open(str(path), framework="pt") as entry:
        metadata, tensor = entry.metadata(), entry.get_tensor("embedding")
    del metadata["crc32"]
    save_file({"embedding": tensor}, str(path), metadata=metadata)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_truncate, "SafetensorError"),
        (lambda path: path.write_bytes(b""), "SafetensorError"),
        (lambda path: path.write_bytes(b"\x13garbage" * 40), "SafetensorError"),
        (_flip_last_byte, "crc32"),
        (_drop_checksum, "lacks crc32"),
    ],
    ids=["truncated", "empty", "garbage", "flipped-byte", "no-checksum"],
)
def test_corrupt_entry_is_recomputed_with_a_warning(tmp_path, damage, reason):
    cache, encoder, images, sizes, path = filled(tmp_path)
    expected = encoder.encode(crops(images, sizes))
    damage(path)
    reopened = EmbeddingCache(tmp_path, cache.fingerprint)
    encode = Counting(encoder.encode)
    with pytest.warns(CorruptEntryWarning, match=re.escape(str(path))) as caught:
        out = reopened.embed(encode, images, sizes)
    assert reason in str(caught[0].message)
    assert len(encode.calls) == 1 and torch.equal(out, expected)
    assert (reopened.hits, reopened.misses) == (0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # overwritten: read back without a warning
        again = EmbeddingCache(tmp_path, cache.fingerprint).embed(never, images, sizes)
    assert torch.equal(again, expected)


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    """A writer failing halfway (disk full, killed) leaves no partial entry behind."""
    encoder = TinyEncoder()
    images, sizes = make_batch([(32, 32)], TINY_SIDE)
    cache = EmbeddingCache(tmp_path, encoder_fingerprint(encoder))

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedding_cache, "save_file", failing_save)
    with pytest.raises(OSError, match="No space left"):
        cache.embed(encoder.encode, images, sizes)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [tmp_path / "manifest.json"]
    monkeypatch.undo()
    encode = Counting(encoder.encode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cache.embed(encode, images, sizes)
    assert len(encode.calls) == 1 and torch.equal(out, encoder.encode(crops(images, sizes)))


def test_leftover_temporary_file_is_never_read(tmp_path):
    """A killed writer's temporary file, even a complete one with other values, is no entry:
    the image is a miss, and the file is left for :func:`remove_temp_files`."""
    encoder = TinyEncoder()
    images, sizes = make_batch([(32, 32)], TINY_SIDE)
    cache = EmbeddingCache(tmp_path, encoder_fingerprint(encoder))
    key = image_key(images[0], sizes[0])
    entry = cache.path(key)
    entry.parent.mkdir()
    leftover = entry.with_name(f".{entry.name}.0123456789ab.tmp")
    assert is_temp_file(leftover)
    zeros = torch.zeros_like(encoder.encode(crops(images, sizes))[0])
    cache._write(key, zeros)  # a valid entry of wrong values, moved to the temporary name
    entry.rename(leftover)
    encode = Counting(encoder.encode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cache.embed(encode, images, sizes)
    assert len(encode.calls) == 1
    assert torch.equal(out, encoder.encode(crops(images, sizes)))
    assert leftover.is_file()
    assert torch.equal(EmbeddingCache(tmp_path, cache.fingerprint).embed(never, images, sizes), out)
    assert remove_temp_files(tmp_path, recursive=True) == 1


# ----------------------------------------------------------------------------- image key


def test_image_key_covers_the_pixels_and_the_transform_not_the_padding():
    images, sizes = make_batch([(20, 28)], TINY_SIDE)
    image, size = images[0], (20, 28)
    key = image_key(image, size)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert image_key(image.clone(), sizes[0]) == key  # a tensor input size

    pixel = image.clone()
    pixel[1, 19, 27] ^= 1
    assert image_key(pixel, size) != key

    # The padding: the model never sees it (it pads the unpadded part with zeros itself).
    padding = image.clone()
    padding[:, 20:, :] = 255
    padding[:, :, 28:] = 7
    assert image_key(padding, size) == key

    # Another input size over the same pixels (the extra row or column is zero padding).
    assert image_key(image, (21, 28)) != key
    assert image_key(image, (20, 29)) != key
    assert image_key(image, (20, 27)) != key

    # The same pixels padded to another side.
    larger = torch.zeros((3, TINY_SIDE + 8, TINY_SIDE + 8), dtype=torch.uint8)
    larger[:, :TINY_SIDE, :TINY_SIDE] = image
    assert image_key(larger, size) != key


@pytest.mark.parametrize(
    ("image", "size", "message"),
    [
        (torch.zeros((3, 8, 8), dtype=torch.float32), (8, 8), "dtype torch.float32"),
        (torch.zeros((1, 3, 8, 8), dtype=torch.uint8), (8, 8), r"shape \(1, 3, 8, 8\)"),
        (torch.zeros((2, 8, 8), dtype=torch.uint8), (8, 8), r"shape \(2, 8, 8\)"),
        (torch.zeros((3, 8, 9), dtype=torch.uint8), (8, 8), r"shape \(3, 8, 9\)"),
        (torch.zeros((3, 8, 8), dtype=torch.uint8), (9, 8), r"1 <= h, w <= 8.*\[9, 8\]"),
        (torch.zeros((3, 8, 8), dtype=torch.uint8), (0, 8), r"\[0, 8\]"),
        (torch.zeros((3, 8, 8), dtype=torch.uint8), (8, 8, 3), r"\[8, 8, 3\]"),
    ],
    ids=["float", "4d", "two-channels", "not-square", "too-high", "zero", "three-values"],
)
def test_image_key_refuses_other_inputs(image, size, message):
    with pytest.raises(ValueError, match=message):
        image_key(image, size)


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="float32, float16, bfloat16, got torch.int8"):
        EmbeddingCache(tmp_path, "a" * 64, dtype=torch.int8)
    with pytest.raises(ValueError, match="description must hold JSON values"):
        EmbeddingCache(tmp_path, "a" * 64, description={"path": Path("x")})
    encoder = TinyEncoder()
    cache = EmbeddingCache(tmp_path, encoder_fingerprint(encoder))
    images, sizes = make_batch([(32, 32), (16, 16)], TINY_SIDE)
    with pytest.raises(ValueError, match="dtype torch.float32"):
        cache.embed(encoder.encode, images.float(), sizes)
    with pytest.raises(ValueError, match=r"2×2 \(h, w\) for 2 images, got \(1, 2\)"):
        cache.embed(encoder.encode, images, sizes[:1])
    with pytest.raises(ValueError, match=r"B >= 1, got \(0, 3, 32, 32\)"):
        cache.embed(encoder.encode, images[:0], sizes[:0])
    with pytest.raises(ValueError, match=r"2×C×h×w tensor for 2 images, got \(2, 8, 8\)"):
        cache.embed(lambda crops: encoder.encode(crops)[:, 0], images, sizes)


# ------------------------------------------------------------------------------ processes

ROUNDS = 4
_PROCESS_SIZES = [(32, 32 - i) if i % 2 else (32 - i, 32) for i in range(10)]


def _fill(root: str, indices: list[int], barrier, result: str) -> None:
    """A process filling ``root/<round>`` with the images ``indices``, two at a time, in
    step with the other process; saves what it got."""
    torch.set_num_threads(1)
    warnings.simplefilter("error", CorruptEntryWarning)  # a partial entry fails the process
    encoder = TinyEncoder()
    images, sizes = make_batch(_PROCESS_SIZES, TINY_SIDE, seed=1)
    got: dict[tuple[int, int], Tensor] = {}
    for round_ in range(ROUNDS):
        barrier.wait(timeout=60)
        cache = EmbeddingCache(Path(root) / str(round_), encoder_fingerprint(encoder))
        for start in range(0, len(indices), 2):
            batch = indices[start : start + 2]
            out = cache.embed(encoder.encode, images[batch], sizes[batch])
            got.update({(round_, i): embedding for i, embedding in zip(batch, out)})
    torch.save(got, result)


def test_two_processes_fill_the_same_directory(tmp_path):
    """Overlapping image sets (3..6 in both, in opposite orders), started together in each of
    a few fresh directories: every entry is whole and equal to a single process's result."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    orders = [list(range(0, 7)), list(range(9, 2, -1))]
    results = [str(tmp_path / f"result{i}.pt") for i in range(2)]
    processes = [
        context.Process(target=_fill, args=(str(tmp_path / "cache"), order, barrier, result))
        for order, result in zip(orders, results)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    for process in processes:
        if process.is_alive():
            process.terminate()
    assert [process.exitcode for process in processes] == [0, 0]

    encoder = TinyEncoder()
    images, sizes = make_batch(_PROCESS_SIZES, TINY_SIDE, seed=1)
    expected = encoder.encode(crops(images, sizes))
    for result in results:
        for (_, i), embedding in torch.load(result).items():
            assert torch.equal(embedding, expected[i])
    fingerprint = encoder_fingerprint(encoder)
    for round_ in range(ROUNDS):
        root = tmp_path / "cache" / str(round_)
        files = [p for p in root.rglob("*") if p.is_file()]
        assert not [p for p in files if is_temp_file(p)]
        assert len([p for p in files if p.suffix == ".safetensors"]) == len(images)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = EmbeddingCache(root, fingerprint).embed(never, images, sizes)
        assert torch.equal(out, expected)


# ---------------------------------------------------------------------------- eligibility


def test_cache_problems_names_each_reason():
    ok = {"frozen": ["image_encoder"], "lsj": False, "drop_path_rate": 0.0}
    assert cache_problems(**ok, lora_on_encoder=False) == []
    assert (
        cache_problems(
            **ok | {"frozen": ["image_encoder", "prompt_encoder"]}, lora_on_encoder=False
        )
        == []
    )

    (line,) = cache_problems(**ok | {"frozen": ["mask_decoder"]}, lora_on_encoder=False)
    assert "training.frozen must list image_encoder" in line
    (line,) = cache_problems(**ok | {"lsj": True}, lora_on_encoder=False)
    assert "data.lsj=true changes the image" in line and "every epoch" in line
    (line,) = cache_problems(**ok, lora_on_encoder=True)
    assert "LoRA" in line and "model.lora.targets matches image_encoder" in line
    (line,) = cache_problems(**ok | {"drop_path_rate": 0.4}, lora_on_encoder=False)
    assert "training.drop_path_rate=0.4 > 0" in line and "random" in line

    everything = cache_problems(frozen=(), lsj=True, drop_path_rate=0.1, lora_on_encoder=True)
    assert len(everything) == 4 and all("\n" not in line for line in everything)

"""Unreadable checkpoint files: each kind of damage gets its own one-line CheckpointError
naming the file, real pickles of disallowed objects keep the safety refusal (and never run),
and the segment, amg and export commands print the message on one line with exit status 2."""

from __future__ import annotations

import os
import pickle
import random
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from pickle_payloads import _Payload
from safetensors.torch import save_file

from sam_lightning.modeling import build_sam, load_checkpoint, load_state_dict_file
from sam_lightning.modeling.checkpoint import CheckpointError, UnsafeCheckpointError

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = {"image_encoder.a": torch.randn(32, 32), "mask_decoder.b": torch.arange(10)}
TRUNCATED_ZIP = r"is a truncated or corrupt zip archive \(the torch\.save format\)"


def _torch_bytes(**save_options) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(WEIGHTS, buffer, **save_options)
    return buffer.getvalue()


def _safetensors_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "source.safetensors"
    save_file(WEIGHTS, path)
    return path.read_bytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def refused(path: Path, error: type[Exception] = CheckpointError) -> str:
    """The message of ``load_state_dict_file(path)``'s error, checked to be one line that
    names the file."""
    with pytest.raises(error) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still work
    assert "\n" not in message and str(path) in message, message
    return message


# ------------------------------------------------------------------------------ .pth files


def test_a_good_file_and_a_legacy_pickle_still_load(tmp_path):
    for name, data in [
        ("zip.pth", _torch_bytes()),
        ("legacy.pth", _torch_bytes(_use_new_zipfile_serialization=False)),
    ]:
        loaded = load_state_dict_file(write(tmp_path / name, data))
        assert loaded.keys() == WEIGHTS.keys()
        assert all(torch.equal(loaded[key], WEIGHTS[key]) for key in WEIGHTS)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_empty_file(tmp_path, suffix):
    path = write(tmp_path / f"empty{suffix}", b"")
    assert re.search(r"empty\.\w+ is empty \(0 bytes\)", refused(path))


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_zip_archive(tmp_path, keep):
    data = _torch_bytes()
    path = write(tmp_path / "cut.pth", data[: int(len(data) * keep)])
    message = refused(path)
    assert re.search(TRUNCATED_ZIP, message) and "interrupted download" in message


def test_zip_archive_that_is_not_a_torch_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    assert "is a zip archive but not a torch checkpoint" in refused(path)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_not_called_unsafe(tmp_path, seed):
    path = write(tmp_path / "noise.pth", random.Random(seed).randbytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    message = refused(path)
    assert "could run code" not in message
    assert "is not a torch checkpoint: neither a zip archive" in message


@pytest.mark.parametrize(
    "data",
    [b"hello world, not a checkpoint\n", b"checkpoint: sam.pth\nmodel: vit_b\n"],
    ids=["text", "yaml"],
)
def test_text_is_not_a_torch_checkpoint(tmp_path, data):
    assert "is not a torch checkpoint" in refused(write(tmp_path / "text.pth", data))


def test_garbage_after_a_pickle_header_is_a_corrupt_pickle(tmp_path):
    data = b"\x80\x02" + random.Random(1).randbytes(4096)
    message = refused(write(tmp_path / "noise.pth", data))
    assert "truncated or corrupt pickle" in message and "could run code" not in message


@pytest.mark.parametrize("keep", [10, 0.5])
def test_truncated_legacy_pickle(tmp_path, keep):
    data = _torch_bytes(_use_new_zipfile_serialization=False)
    cut = keep if isinstance(keep, int) else int(len(data) * keep)
    message = refused(write(tmp_path / "legacy.pth", data[:cut]))
    assert "(the legacy torch.save format" in message and "truncated or corrupt" in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_of_a_protocol_torch_cannot_read(tmp_path):
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert "is a pickle of protocol 4, which torch.load(weights_only=True) cannot" in refused(path)


def test_a_safetensors_file_named_pth_gets_a_hint(tmp_path):
    message = refused(write(tmp_path / "weights.pth", _safetensors_bytes(tmp_path)))
    assert "is not a torch checkpoint" in message and "suffix .safetensors" in message


def test_not_a_state_dict_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    assert "holds a list, not a state dict" in refused(path)


# ---------------------------------------------------------------------- .safetensors files


def test_safetensors_damage(tmp_path):
    data = _safetensors_bytes(tmp_path)
    (header_length,) = struct.unpack("<Q", data[:8])
    cases = {
        "seven.safetensors": (data[:7], r"is truncated: 7 bytes, fewer than the 8 of its header"),
        "header.safetensors": (data[: 8 + header_length // 2], r"has a truncated header"),
        "data.safetensors": (data[:-1], r"has truncated data: the header describes [\d,]+ bytes"),
        "json.safetensors": (struct.pack("<Q", 6) + b"{nope}", r"has a corrupt header"),
        "extra.safetensors": (data + b"xx", r"has corrupt data"),
        "noise.safetensors": (
            random.Random(0).randbytes(4096),
            r"is not a safetensors file, or its header is corrupt",
        ),
        "torch.safetensors": (_torch_bytes(), r"not a safetensors file.*a torch \.pth file\?"),
    }
    for name, (content, expected) in cases.items():
        message = refused(write(tmp_path / name, content))
        assert re.search(expected, message), message


# ------------------------------------------------------------------------- unsafe pickles


class _System:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "how",
    [
        "torch.save",
        "legacy torch.save",
        "pickle protocol 0",
        "pickle protocol 2",
        "pickle protocol 4",
        "pickle protocol 5",
    ],
)
@pytest.mark.parametrize("payload", [_Payload, _System])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_real_pickles_of_disallowed_objects_keep_the_safety_refusal(tmp_path, how, payload):
    marker = tmp_path / "marker"
    content = {**WEIGHTS, "extra": payload(marker)}
    path = tmp_path / "evil.pth"
    if how == "torch.save":
        torch.save(content, path)
    elif how == "legacy torch.save":
        torch.save(content, path, _use_new_zipfile_serialization=False)
    else:  # without tensors: pickle pickles them with torch.storage._load_from_bytes, unsafe
        path.write_bytes(pickle.dumps({"extra": payload(marker)}, protocol=int(how[-1])))
    message = refused(path, UnsafeCheckpointError)
    assert re.search(r"refusing to load .*evil\.pth.*other than tensors.*could run code", message)
    culprit = "_leave_marker" if payload is _Payload else "system"
    assert re.search(rf"first found: \S*{culprit}$", message), message
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state_dict_file(path)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no torch advice
    assert not marker.exists()


def test_errors_reach_the_model_builder(tmp_path):
    data = _torch_bytes()
    path = write(tmp_path / "cut.pth", data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=TRUNCATED_ZIP):
        build_sam("vit_nano", image_size=64, checkpoint=path)
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(torch.nn.Linear(1, 1), write(tmp_path / "e.safetensors", b""))


# ---------------------------------------------------------------------------- the commands


@pytest.fixture
def truncated(tmp_path) -> Path:
    data = _torch_bytes()
    return write(tmp_path / "sam_cut.pth", data[: len(data) // 2])


def run_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], path: Path) -> None:
    log = result.stdout + result.stderr
    assert result.returncode == 2, log[-2000:]
    assert "Traceback" not in log, log[-2000:]
    lines = [line for line in log.splitlines() if str(path) in line]
    assert len(lines) == 1 and re.search(TRUNCATED_ZIP, lines[0]), log[-2000:]


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "images" / "a.png"
    path.parent.mkdir()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(path)
    return path


def test_segment_command(truncated, image, tmp_path):
    args = [
        "sam_lightning.segment",
        str(image),
        "--point",
        "10,10",
        "--model-type",
        "vit_tiny",
        "--image-size",
        "256",
        "--checkpoint",
        str(truncated),
        "--output",
        str(tmp_path / "o"),
    ]
    result = run_command(args, tmp_path)
    assert_one_line_error(result, truncated)
    assert result.stderr.splitlines()[-1].startswith("python -m sam_lightning.segment: error: ")
    assert "usage:" not in result.stderr


def test_amg_command(truncated, image, tmp_path):
    args = [
        "sam_lightning.amg",
        f"input={image.parent}",
        f"output={tmp_path / 'out'}",
        "model.type=vit_tiny",
        "model.image_size=256",
        f"model.checkpoint={truncated}",
        "device=cpu",
        "progress=false",
    ]
    assert_one_line_error(run_command(args, tmp_path), truncated)


def test_export_command(truncated, tmp_path):
    result = run_command(
        ["sam_lightning.export", str(truncated), str(tmp_path / "out.pth")], tmp_path
    )
    assert_one_line_error(result, truncated)
    assert result.stderr.startswith("error: checkpoint ") and not (tmp_path / "out.pth").exists()

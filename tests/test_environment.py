"""The extension loader and the environment report."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from sam_lightning.ops import _extension

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )


def test_collect_env_reports_loaded_extension_and_cpu_kernels():
    report = json.loads(_run(["tools/collect_env.py", "--json"]).stdout)
    assert report["packages"]["torch"] == torch.__version__
    assert report["extension_loaded"] is _extension.HAS_EXTENSION
    if report["extension_loaded"]:
        assert report["kernels"], "the extension registered no operators"
        assert all("CPU" in keys for keys in report["kernels"].values())


def test_collect_env_says_why_extension_is_missing():
    completed = _run(["tools/collect_env.py"], SAM_LIGHTNING_DISABLE_EXTENSION="1")
    assert "sam_lightning._C:     NOT loaded" in completed.stdout
    assert "disabled by SAM_LIGHTNING_DISABLE_EXTENSION=1" in completed.stdout


def test_import_without_extension_warns_once_and_says_why():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import sam_lightning, sam_lightning.ops\n"
        "    import sam_lightning.ops._extension\n"
        "messages = [str(w.message) for w in caught if 'sam_lightning' in str(w.message)]\n"
        "print(len(messages)); print(messages[0])\n"
    )
    out = _run(["-c", code], SAM_LIGHTNING_DISABLE_EXTENSION="1").stdout.splitlines()
    assert out[0] == "1"
    assert "reference implementations" in out[1] and "SAM_LIGHTNING_DISABLE_EXTENSION" in out[1]


def test_stale_extension_built_for_other_torch_is_rejected(monkeypatch):
    stale = types.SimpleNamespace(torch_version="1.13.1")
    monkeypatch.setattr(_extension.importlib, "import_module", lambda name: stale)
    monkeypatch.delenv(_extension.DISABLE_ENV, raising=False)
    module, error = _extension._load()
    assert module is None
    assert "built for torch 1.13.1" in error and "--no-build-isolation" in error


def test_missing_extension_names_the_import_error(monkeypatch):
    def fail(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_extension.importlib, "import_module", fail)
    monkeypatch.delenv(_extension.DISABLE_ENV, raising=False)
    module, error = _extension._load()
    assert module is None
    assert "No module named 'sam_lightning._C'" in error


@pytest.mark.skipif(not _extension.HAS_EXTENSION, reason="compiled extension not built")
def test_extension_matches_running_torch():
    assert _extension.EXTENSION.torch_version.split("+")[0] == torch.__version__.split("+")[0]
    if torch.version.cuda is None:  # a CPU torch cannot have produced CUDA kernels
        assert not _extension.built_with_cuda()

"""The Hydra configs are found in a source checkout and in an installed wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sam_lightning
from sam_lightning.entry_points import config_dir, find_config_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [
    "amg.yaml",
    "amg/default.yaml",
    "amg/sa1b.yaml",
    "train.yaml",
    "evaluate.yaml",
    "annotate.yaml",
]


def test_checkout_configs():
    found = config_dir()
    assert all((found / name).is_file() for name in CONFIGS)
    if Path(sam_lightning.__file__).resolve().parent == REPO / "sam_lightning":
        assert found == REPO / "conf"


def test_lookup_order(tmp_path):
    checkout = tmp_path / "repo"
    (checkout / "sam_lightning").mkdir(parents=True)
    (checkout / "conf").mkdir()
    with pytest.raises(FileNotFoundError, match="configs are missing"):
        find_config_dir(checkout / "sam_lightning")  # a conf/ but no pyproject.toml
    (checkout / "pyproject.toml").write_text("")
    assert find_config_dir(checkout / "sam_lightning") == checkout / "conf"
    (checkout / "sam_lightning" / "conf").mkdir()  # installed copy wins
    assert find_config_dir(checkout / "sam_lightning") == checkout / "sam_lightning" / "conf"


def test_wheel_build_ships_configs(tmp_path):
    """``setup.py build_py`` (what ``pip wheel`` runs) copies conf/ into the package, and
    config_dir() of the built package finds it."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "conf", source / "conf")
    shutil.copytree(
        REPO / "sam_lightning",
        source / "sam_lightning",
        ignore=shutil.ignore_patterns("*.so", "__pycache__", "conf"),
    )
    build = tmp_path / "build"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in CONFIGS:
        assert (build / "sam_lightning" / "conf" / name).read_bytes() == (
            REPO / "conf" / name
        ).read_bytes()
    shutil.rmtree(source)  # no checkout to fall back on
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sam_lightning.entry_points as c; print(c.__file__); print(c.config_dir())",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(build), "PATH": ""},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert found == [
        str(build / "sam_lightning" / "entry_points.py"),
        str(build / "sam_lightning" / "conf"),
    ]


@pytest.mark.parametrize("name", ["train", "evaluate", "amg", "annotate"])
def test_each_entry_point_logs_to_a_file_named_after_it(name):
    """One Hydra main serves them all, so the job name (the log file's) is set per config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(name, return_hydra_config=True)
    assert cfg.hydra.job.name == name

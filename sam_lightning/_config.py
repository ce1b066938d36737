"""Where the Hydra configs of the entry points are, in a source checkout and installed.

The configs live in ``conf/`` at the root of the repository. Wheels ship a copy inside the
package as ``sam_lightning/conf/`` (see ``setup.py``), so :func:`config_dir` looks there
first and then for the checkout's ``conf/`` next to the package (a source tree or an
editable install). Entry points pass the result to ``hydra.main(config_path=...)``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def find_config_dir(package_dir: Path) -> Path:
    """The config directory for the ``sam_lightning`` package at ``package_dir``:
    ``package_dir/conf`` (installed) or ``package_dir/../conf`` when ``package_dir/..`` is
    a source checkout (has ``pyproject.toml``). Raises FileNotFoundError otherwise."""
    packaged = package_dir / "conf"
    if packaged.is_dir():
        return packaged
    root = package_dir.parent
    if (root / "conf").is_dir() and (root / "pyproject.toml").is_file():
        return root / "conf"
    raise FileNotFoundError(
        f"sam_lightning's Hydra configs are missing: neither {packaged} (installed package) "
        f"nor {root / 'conf'} (source checkout) exists; reinstall the package"
    )


def config_dir() -> Path:
    """The directory holding ``amg.yaml`` and the other top-level configs."""
    return find_config_dir(_PACKAGE_DIR)

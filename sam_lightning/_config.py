"""Where the Hydra configs of the entry points are, in a source checkout and installed.

The configs live in ``conf/`` at the root of the repository. Wheels ship a copy inside the
package as ``sam_lightning/conf/`` (see ``setup.py``), so :func:`config_dir` looks there
first and then for the checkout's ``conf/`` next to the package (a source tree or an
editable install). Entry points pass the result to ``hydra.main(config_path=...)``.

An experiment cannot make a setting required with ``???`` when a config group already gives
it a value (OmegaConf keeps the value: ``model.checkpoint: ???`` over the model group's
``null`` stays ``null``). Experiments write ``${sam_required:model.checkpoint}`` instead; the
entry points call :func:`register_resolvers`, and resolving it raises
:class:`RequiredSettingError` naming the key, unless the command line sets it;
:func:`unset_settings` lists both kinds of unset values without resolving anything.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


class RequiredSettingError(ValueError):
    """A setting that the chosen experiment requires was not given."""


def _required(key: str) -> None:
    raise RequiredSettingError(
        f"{key} is required by this experiment: set {key}=... on the command line"
    )


def unset_settings(config: Any) -> list[str]:
    """Dotted keys of an (unresolved) OmegaConf config that must still be given: values
    ``???`` and ``${sam_required:...}``; nothing is resolved."""
    from omegaconf import OmegaConf

    unset: list[str] = []

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{prefix}{index}.")
        elif node == "???" or (isinstance(node, str) and node.startswith("${sam_required:")):
            unset.append(prefix[:-1])

    visit(OmegaConf.to_container(config, resolve=False), "")
    return sorted(unset)


def register_resolvers() -> None:
    """Registers the OmegaConf resolver ``sam_required`` (see the module docstring)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sam_required"):
        OmegaConf.register_new_resolver("sam_required", _required)


def unset_before_start(config_name: str, keys: Sequence[str], overrides: list[str]) -> list[str]:
    """Which of ``keys`` are still ``???`` once ``overrides`` are applied to ``config_name``,
    checked before Hydra starts (an entry point whose run directory lives under one of them
    cannot let Hydra fail first); [] if the overrides do not compose (Hydra then reports the
    problem itself)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides)
    except Exception:  # any problem is for Hydra to report
        return []
    return [key for key in keys if OmegaConf.is_missing(cfg, key)]


def run_entry_point(
    config_name: str, required: Sequence[str], example: str, run: Callable[[Any], int]
) -> int:
    """The ``main`` of a Hydra entry point whose ``required`` settings must be given before
    Hydra starts (its run directory lives under one of them): without them it prints which,
    with ``example`` (a command line), and returns 2; otherwise it returns ``run(cfg)``'s
    status, ``cfg`` being the composed ``config_name`` of the command line."""
    import hydra

    overrides = sys.argv[1:]
    if not any(arg.startswith("-") for arg in overrides):  # not --help, --cfg, -m ...
        missing = unset_before_start(config_name, required, overrides)
        if missing:
            keys = " and ".join(f"{key}=..." for key in missing)
            print(f"error: set {keys}, e.g.\n  {example}", file=sys.stderr)
            return 2
    status = 0

    @hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    def _main(cfg: Any) -> None:
        nonlocal status
        status = run(cfg)

    _main()
    return status

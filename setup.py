"""Builds the compiled operators ``sam_lightning._C`` from ``csrc/``.

CPU kernels are always built. CUDA kernels (``csrc/**/*.cu``) are added when a CUDA build of
torch and a CUDA toolkit are present, or when ``FORCE_CUDA=1``. Build without isolation so
pip uses the torch already installed: ``pip install --no-build-isolation -e .``.

Wheels also ship the Hydra configs of ``conf/`` as ``sam_lightning/conf/`` (see
``sam_lightning/entry_points.py``); editable installs read ``conf/`` in place.
"""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"
CONF = ROOT / "conf"


class BuildPyWithConfigs(build_py):
    """build_py that also copies ``conf/**/*.yaml`` to ``sam_lightning/conf/`` (not for
    editable installs, which find ``conf/`` in the checkout)."""

    def _configs(self):
        if getattr(self, "editable_mode", False):
            return []
        target_dir = Path(self.build_lib, "sam_lightning", "conf")
        return [(src, target_dir / src.relative_to(CONF)) for src in sorted(CONF.rglob("*.yaml"))]

    def run(self):
        super().run()
        for source, target in self._configs():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode=True):
        configs = [str(target) for _, target in self._configs()]
        return super().get_outputs(include_bytecode) + configs


def _sources(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in CSRC.rglob(pattern))


def _want_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None and bool(_sources("*.cu"))


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-std=c++17", "-fopenmp"]
    define_macros = []
    sources = _sources("*.cpp")
    extension_cls = CppExtension
    extra = {"cxx": cxx_flags}
    if _want_cuda():
        extension_cls = CUDAExtension
        sources += _sources("*.cu")
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.0;8.0;8.6;9.0")
    return [
        extension_cls(
            name="sam_lightning._C",
            sources=sources,
            include_dirs=[str(CSRC)],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {
        "build_ext": BuildExtension.with_options(use_ninja=_has_ninja()),
        "build_py": BuildPyWithConfigs,
    }


def _has_ninja() -> bool:
    from torch.utils.cpp_extension import is_ninja_available

    return is_ninja_available()


setup(ext_modules=_extensions(), cmdclass=_cmdclass())

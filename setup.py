"""Builds the compiled operators ``sam_lightning._C`` from ``csrc/``.

CPU kernels are always built. CUDA kernels (``csrc/**/*.cu``) are added when a CUDA build of
torch and a CUDA toolkit are present, or when ``FORCE_CUDA=1``. Build without isolation so
pip uses the torch already installed: ``pip install --no-build-isolation -e .``.
"""

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


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

    return {"build_ext": BuildExtension.with_options(use_ninja=_has_ninja())}


def _has_ninja() -> bool:
    from torch.utils.cpp_extension import is_ninja_available

    return is_ninja_available()


setup(ext_modules=_extensions(), cmdclass=_cmdclass())

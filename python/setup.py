"""Build of kd_torch, kd's PyTorch package (see docs/python.md).

The extension (kd_torch/csrc/kd_torch.cpp) is compiled against the installed torch and linked with kd::dispatch, the
run-time instruction-set dispatch library of the C++ repository (src/dispatch: one translation unit per x86-64
instruction set, each with its own -m flags). kd::dispatch is built by CMake from the repository's own CMakeLists.txt,
so the per-instruction-set flags live in one place (src/dispatch/CMakeLists.txt); the extension itself is compiled
without -m flags and picks SSE2 / SSE4.2 / AVX2 / AVX-512 at run time.

Needs: the kd repository around this directory (or KD_ROOT=<repo>), CMake >= 3.18, a C++17 compiler, Eigen 3.4 and
xsimd 8.1 headers (Debian: libeigen3-dev libxsimd-dev; scripts/setup.sh installs them).
"""
import os
import shutil
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.environ.get("KD_ROOT", os.path.join(HERE, "..")))
if not os.path.isfile(os.path.join(ROOT, "include", "kd", "divergence.hpp")):
    sys.exit(f"kd_torch: kd's C++ headers were not found under {ROOT}/include; build from the kd repository "
             "(pip install ./python) or set KD_ROOT to it")


def _version():
    vals = {}
    with open(os.path.join(ROOT, "include", "kd", "version.hpp")) as f:
        for line in f:
            for part in ("MAJOR", "MINOR", "PATCH"):
                tag = f"#define KD_VERSION_{part} "
                if line.startswith(tag):
                    vals[part] = line[len(tag):].strip()
    return "{MAJOR}.{MINOR}.{PATCH}".format(**vals)


def _eigen_include():
    for d in (os.environ.get("EIGEN3_INCLUDE_DIR"), "/usr/include/eigen3", "/usr/local/include/eigen3"):
        if d and os.path.isfile(os.path.join(d, "Eigen", "Core")):
            return d
    sys.exit("kd_torch: Eigen 3 headers not found (Debian: apt-get install libeigen3-dev, or set EIGEN3_INCLUDE_DIR)")


ABI = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"


class build_ext(BuildExtension):
    """Builds kd::dispatch with CMake first, then the extension linked against it."""

    def build_extensions(self):
        lib = self._build_dispatch()
        for ext in self.extensions:
            ext.extra_objects.append(lib)
        super().build_extensions()

    def _build_dispatch(self):
        cmake = os.environ.get("CMAKE", shutil.which("cmake"))
        if not cmake:
            sys.exit("kd_torch: cmake not found (Debian: apt-get install cmake; or pip install cmake)")
        bdir = os.path.join(os.path.abspath(self.build_temp), "kd-dispatch")
        cfg = [cmake, "-S", ROOT, "-B", bdir, "-DCMAKE_BUILD_TYPE=Release", "-DKD_BUILD_TESTS=OFF",
               "-DKD_BUILD_TOOLS=OFF", "-DKD_BUILD_BENCH=OFF", "-DKD_BUILD_EXAMPLES=OFF", "-DKD_INSTALL=OFF",
               "-DKD_BUILD_DISPATCH=ON", f"-DCMAKE_CXX_FLAGS={ABI}"]
        if shutil.which("ninja") and not os.path.isfile(os.path.join(bdir, "CMakeCache.txt")):
            cfg += ["-G", "Ninja"]
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(cfg, stdout=subprocess.DEVNULL)
        subprocess.check_call([cmake, "--build", bdir, "--target", "kd_dispatch", "-j", jobs])
        lib = os.path.join(bdir, "src", "dispatch", "libkd_dispatch.a")
        if not os.path.isfile(lib):
            sys.exit(f"kd_torch: CMake did not produce {lib}")
        return lib


ext = CppExtension(
    name="kd_torch._C",
    sources=[os.path.join("kd_torch", "csrc", "kd_torch.cpp")],
    include_dirs=[os.path.join(ROOT, "include"), _eigen_include()],
    extra_compile_args={"cxx": ["-O2", "-Wall", "-Wno-unused-function"]},
)

setup(
    name="kd-torch",
    version=_version(),
    description="kd's fused knowledge-distillation losses (KL, JSD, TVD, ABKD, MiniLLM policy gradient) for PyTorch",
    packages=["kd_torch"],
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.8",
    install_requires=["torch>=2.0"],
)

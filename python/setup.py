"""Builds and installs the `snapback` Python package (no network needed).

    python3 -m venv --system-site-packages /opt/snapback-venv
    /opt/snapback-venv/bin/pip install --no-build-isolation ./python

or, into Debian's system Python (as root):

    /usr/bin/python3 -m pip install --no-build-isolation --break-system-packages ./python

The extension snapback._core is built with the CMake project of the
repository this directory belongs to (RelWithDebInfo, tests and benchmarks
off, target snapback_python) in build/pip/, with ccache when present. To use
an extension built already instead, point SNAPBACK_PYTHON_EXTENSION at it,
e.g. build/release/python/snapback/_core.cpython-311-x86_64-linux-gnu.so.
Build outputs stay under build/pip/, not in the source tree.

Environment: SNAPBACK_PYTHON_EXTENSION (a built _core*.so),
SNAPBACK_CMAKE_BUILD_DIR (default <repo>/build/pip), SNAPBACK_JOBS (build
jobs, default 2).
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.environ.get("SNAPBACK_CMAKE_BUILD_DIR", os.path.join(ROOT, "build", "pip"))


class CMakeBuild(build_ext):
    """Builds snapback._core with CMake (or copies a prebuilt one)."""

    def build_extension(self, ext: Extension) -> None:
        dest = self.get_ext_fullpath(ext.name)
        built = os.environ.get("SNAPBACK_PYTHON_EXTENSION")
        if not built:
            if not os.path.exists(os.path.join(ROOT, "CMakeLists.txt")):
                sys.exit(f"setup.py: no CMake project at {ROOT}; install from the "
                         "repository's python/ directory or set SNAPBACK_PYTHON_EXTENSION")
            subprocess.check_call([
                "cmake", "-S", ROOT, "-B", BUILD, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
                "-DSNAPBACK_BUILD_TESTS=OFF", "-DSNAPBACK_BUILD_BENCH=OFF",
                "-DSNAPBACK_BUILD_PYTHON=ON", f"-DPYTHON_EXECUTABLE={sys.executable}"])
            subprocess.check_call([
                "cmake", "--build", BUILD, "--target", "snapback_python", "-j",
                os.environ.get("SNAPBACK_JOBS", "2")])
            found = glob.glob(os.path.join(BUILD, "python", "snapback", "_core*.so"))
            if not found:
                sys.exit(f"setup.py: the build produced no _core*.so under {BUILD}")
            built = found[0]
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(built, dest)


os.makedirs(BUILD, exist_ok=True)
setup(
    name="snapback",
    version="0.1.0",
    description="Asynchronous, incremental, verified checkpoints for ML training",
    packages=["snapback"],
    package_data={"snapback": ["py.typed", "_core.pyi"]},
    ext_modules=[Extension("snapback._core", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["numpy"],
    extras_require={"torch": ["torch"]},
    options={
        # Keep build outputs out of the source tree.
        "build": {"build_base": os.path.join(BUILD, "setuptools")},
        "egg_info": {"egg_base": BUILD},
    },
    zip_safe=False,
)

"""Build the Cython kernels with optimization and, where the compiler has it, OpenMP.

Without OpenMP the extension still builds and runs single-threaded; ``fastnorm.show_config()``
reports which build is installed.  With gcc, the OpenMP loops run on fastnorm's own thread pool
(``src/fastnorm/_pool.h``) and libgomp is not linked; other compilers link their OpenMP runtime.
Environment variables:

* ``FASTNORM_NO_OPENMP=1``: the single-threaded build.
* ``FASTNORM_SANITIZE=1``: build with AddressSanitizer and UndefinedBehaviorSanitizer (gcc or clang);
  run Python with the sanitizer runtime preloaded, e.g.
  ``LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 python -m pytest tests``.
* ``FASTNORM_CFLAGS``: extra compiler flags (``-DFASTNORM_NO_ISA``: the C loops at ISA level 0 alone, for a
  compiler without gcc's target attributes; see ``src/fastnorm/_simd.h``).
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def compiler_accepts(flag):
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc.split()[0]) is None:
        return False
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    if flag != "-fopenmp":
        src = "int main(void){return 0;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        result = subprocess.run(
            cc.split() + [flag, path, "-o", os.path.join(tmp, "t")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0


def compiler_is_gcc():
    """Whether the compiler is gcc (clang and icx define __GNUC__ too, and use LLVM's OpenMP ABI)."""
    cc = os.environ.get("CC", "cc")
    probe = subprocess.run(cc.split() + ["-dM", "-E", "-"], input="", capture_output=True, text=True)
    return probe.returncode == 0 and "__GNUC__" in probe.stdout and not any(
        name in probe.stdout for name in ("__clang__", "__INTEL_LLVM_COMPILER", "__INTEL_COMPILER"))


openmp = not os.environ.get("FASTNORM_NO_OPENMP") and compiler_accepts("-fopenmp")
# -ffp-contract=off: results must not depend on where the compiler chose to fuse a multiply-add,
# so that every code path (fused per channel, split across threads) rounds identically.
compile_args = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
# Loops on 64-byte boundaries: a hot loop's speed must not depend on where unrelated code moved it
# (bench/NOTES.md, "Loop alignment").
if compiler_accepts("-falign-loops=64"):
    compile_args.append("-falign-loops=64")
compile_args += os.environ.get("FASTNORM_CFLAGS", "").split()
link_args = []
# The C API of the oldest NumPy that pyproject admits (numpy>=1.25): a build against NumPy 2 otherwise
# targets an older API whose table lacks PyDataMem_SetHandler, and the import fails.
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("NPY_TARGET_VERSION", "NPY_1_25_API_VERSION")]
if os.environ.get("FASTNORM_SANITIZE"):
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
    compile_args += sanitize + ["-O1", "-g"]
    link_args += sanitize
# With gcc the parallel loops run on fastnorm's own pool (src/fastnorm/_pool.h implements the part of
# libgomp's ABI they call), so libgomp is not linked; other compilers link their OpenMP runtime.
own_runtime = openmp and sys.platform != "win32" and compiler_is_gcc()
if own_runtime:
    compile_args += ["-fopenmp", "-pthread"]
    link_args.append("-pthread")
    macros.append(("FASTNORM_OWN_RUNTIME", "1"))
elif openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
elif compiler_accepts("-fopenmp-simd"):
    # The SIMD reductions of _simd.h need only the "omp simd" pragma, not the OpenMP runtime.
    compile_args.append("-fopenmp-simd")
if sys.platform == "win32":
    compile_args, link_args = (["/O2", "/openmp"] if openmp else ["/O2"]), []


class build_ext_checked(build_ext):
    """Say plainly what is missing before the compiler's own errors would."""

    def run(self):
        if sys.platform != "win32" and not compiler_accepts("-O0"):
            cc = os.environ.get("CC", "cc")
            raise SystemExit(
                f"fastnorm: no working C compiler ({cc!r}) was found, and building from source needs one. "
                "Install gcc or clang (Debian/Ubuntu: apt-get install gcc), or install a wheel "
                "(pip install --only-binary=:all: fastnorm)."
            )
        if not openmp:
            why = ("FASTNORM_NO_OPENMP is set" if os.environ.get("FASTNORM_NO_OPENMP")
                   else "the compiler does not accept -fopenmp")
            sys.stderr.write(f"fastnorm: building WITHOUT OpenMP ({why}): the kernels will run on one thread; "
                             "fastnorm.show_config() reports openmp: False.\n")
        super().run()


extensions = [
    Extension(
        "fastnorm._kernels",
        ["src/fastnorm/_kernels.pyx"],
        include_dirs=[np.get_include(), "src/fastnorm"],
        # _kernels.pyx includes the .pxi parts and its .pxd; the .h files hold the C loops, the pool and the
        # output cache: a change to any of them rebuilds the module.
        depends=sorted(glob.glob("src/fastnorm/*.pxi") + glob.glob("src/fastnorm/*.pxd")
                       + glob.glob("src/fastnorm/*.h")),
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(
    cmdclass={"build_ext": build_ext_checked},
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        compile_time_env={"FASTNORM_OPENMP_BUILD": openmp},
    )
)

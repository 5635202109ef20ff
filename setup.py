"""Builds the exact C kernels (mresnet_core/exact_kernels.c) at install time.

``pip install .`` and ``pip install -e .`` compile them into a plain shared library,
mresnet_core/libexact_kernels.so, loaded by ctypes (exact_native.py): inside the package,
so nothing is compiled into or loaded from a folder another user could write. One build
serves every CPU (the library picks its kernels' instruction set when it is loaded), and
it links the OpenMP runtime by name, which is torch's own at run time. torch is not
needed here (pip's isolated build has only setuptools). Without a C compiler the package
installs all the same: exact_native then builds the kernels in a per-user cache, or the
torch kernels are used. The metadata is in pyproject.toml.
"""
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

#: The same flags as exact_native.CFLAGS (a test checks it).
CFLAGS = ["-O3", "-std=c11", "-fPIC", "-fno-trapping-math", "-ffp-contract=off"]


def source_key(source: bytes, flags: list) -> str:
    """exact_native.source_key: what the library reports it was built from."""
    return hashlib.sha256(source + b"\0" + " ".join(flags).encode()).hexdigest()[:16]


def find_compiler():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class BuildKernels(build_ext):
    """Builds each extension as a plain C shared library (no Python module in it)."""

    def get_ext_filename(self, fullname):
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        cc = find_compiler()
        if cc is None:
            raise CompileError("no C compiler found ($CC, cc, gcc or clang)")
        source = ext.sources[0]
        key = source_key(Path(source).read_bytes(), CFLAGS)
        base = [cc, *CFLAGS, f'-DEXACT_KERNELS_KEY="{key}"', "-shared", source, "-o", target]
        errors = []
        for openmp in (["-fopenmp"], []):  # without OpenMP (serial kernels) if the compiler has none
            done = subprocess.run(base[:1] + openmp + base[1:], capture_output=True, text=True)
            if done.returncode == 0:
                if not openmp:
                    print(f"warning: the C kernels were built without OpenMP: {errors[0]}")
                return
            errors.append((done.stderr or done.stdout).strip()[-1000:])
        raise CompileError(f"building {target} failed: {errors[-1]}")


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it for CFLAGS
    setup(
        ext_modules=[Extension("mresnet_core.libexact_kernels", ["mresnet_core/exact_kernels.c"],
                               optional=True)],
        cmdclass={"build_ext": BuildKernels},
    )

"""Builds the native copy-and-checksum module (cffi, API out-of-line mode).

Everything else is in pyproject.toml. The module is optional at run time: where it cannot
be built (no C compiler or OpenSSL headers) symphonyd uses its pure-Python copy and says
so in `symphonyd status`; the tests insist on it unless SYMPHONYD_ALLOW_NO_NATIVE=1.
"""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(
                f"WARNING: native module {ext.name} not built ({exc}); "
                "symphonyd will use its pure-Python copy"
            )


setup(
    cffi_modules=["native/build_symcopy.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)

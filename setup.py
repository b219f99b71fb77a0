import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class BuildPyWithProto(build_py):
    """Compile cachefs/csi/csi.proto with grpcio-tools (a build requirement) before collecting the
    package, into the source tree: an editable install then imports the result in place, and a wheel
    picks it up as package data (csi_pb2*.py are listed by the package finder after generation)."""

    def run(self):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cachefs", "csi"))
        try:
            import protogen
        finally:
            sys.path.pop(0)
        protogen.compile_proto()
        super().run()


# Metadata lives in pyproject.toml. The one C extension reads cached block files into a buffer
# pyfuse3 can pass on without a copy (native/blockread.c). optional=True: without a compiler or
# xxhash.h (Debian: libxxhash-dev) the build warns and cachefs uses its pure-Python fallback.
setup(
    cmdclass={"build_py": BuildPyWithProto},
    ext_modules=[
        Extension(
            "cachefs._native",
            sources=["native/blockread.c"],
            libraries=["xxhash"],
            optional=True,
        )
    ]
)

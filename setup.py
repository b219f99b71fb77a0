"""Only what pyproject.toml cannot say; every piece of metadata lives there.

Two build steps need code: the C extension (a list of sources, libraries and compiler flags) and
compiling cachefs/csi/csi.proto into Python before the package is collected. setuptools has no
declarative form for either, so they stay here, and nothing else does.
"""
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


# The first C extension reads cached block files into a buffer pyfuse3 can pass on without a copy
# (native/blockread.c). optional=True: without a compiler or xxhash.h (Debian: libxxhash-dev) the
# build warns and cachefs uses its pure-Python fallback. Every warning is an error: the code is
# small enough to keep clean, and a warning in memory-handling C is usually a bug.
setup(
    cmdclass={"build_py": BuildPyWithProto},
    ext_modules=[
        Extension(
            "cachefs._native",
            sources=["native/blockread.c"],
            libraries=["xxhash"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror"],
            optional=True,
        ),
        # S3 GETs on libcurl in a thread of their own (native/fetch.c); without libcurl's headers
        # (Debian: libcurl4-openssl-dev) the build warns and the read path stays on pycurl.
        Extension(
            "cachefs._fetch",
            sources=["native/fetch.c"],
            libraries=["curl"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror"],
            optional=True,
        ),
        # The FUSE requests of a file whose bytes are in memory, answered in C (native/fastfuse.c):
        # it stands in for two libfuse functions pyfuse3 calls, hence the version script. Without
        # libfuse3's headers (Debian: libfuse3-dev) the build warns and every request goes to Python.
        Extension(
            "cachefs._fastfuse",
            sources=["native/fastfuse.c"],
            include_dirs=["/usr/include/fuse3"],
            libraries=["fuse3", "dl"],
            extra_compile_args=["-Wall", "-Wextra", "-Werror"],
            extra_link_args=["-Wl,--version-script=native/fastfuse.map"],
            depends=["native/fastfuse.map"],
            optional=True,
        ),
    ],
)

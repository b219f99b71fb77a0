from setuptools import Extension, setup

# Metadata lives in pyproject.toml. The one C extension reads cached block files into a buffer
# pyfuse3 can pass on without a copy (native/blockread.c). optional=True: without a compiler or
# xxhash.h (Debian: libxxhash-dev) the build warns and cachefs uses its pure-Python fallback.
setup(
    ext_modules=[
        Extension(
            "cachefs._native",
            sources=["native/blockread.c"],
            libraries=["xxhash"],
            optional=True,
        )
    ]
)

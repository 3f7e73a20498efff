"""Build script for the optional compiled kernels of ``popql.engine.vector``.

Everything else is declared in pyproject.toml. ``engine/_vecscan.c`` (the in-place float16 scan
and the filtered HNSW search, see docs/vector-search.md) is built as an *optional* extension:
when no C compiler is available or the build fails, ``pip install`` still succeeds and
``popql.engine.vector`` falls back to usearch's own kernels (same results, slower).
"""

import sys

from setuptools import Extension, setup

extra_compile_args = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-pthread"]
extra_link_args = [] if sys.platform == "win32" else ["-pthread"]

setup(
    ext_modules=[
        Extension(
            "popql.engine._vecscan",
            sources=["engine/_vecscan.c"],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
            optional=True,
        )
    ]
)

"""Compiles the native proxy's request path with mypyc (docs/native.md, "Compiled request path").

Everything else about the package is in pyproject.toml. Without mypyc or a C compiler, or with
MESHC_PURE_PYTHON=1, nothing is compiled and the same modules run as plain Python
(meshc/runtime/__init__.py also falls back to the .py files when they are newer than the build).
"""

import os
import sys

from setuptools import setup

# The per-request modules of `meshc proxy`; the same list as meshc.runtime.COMPILED_MODULES.
COMPILED_MODULES = ("http", "server", "match", "observability", "cluster")

ext_modules = []
if not os.environ.get("MESHC_PURE_PYTHON"):
    try:
        from mypyc.build import mypycify
    except ImportError:
        pass
    else:
        try:
            ext_modules = mypycify([f"meshc/runtime/{name}.py" for name in COMPILED_MODULES],
                                   opt_level="3", group_name="meshc.runtime._compiled")
        except (Exception, SystemExit) as e:  # mypy found an error: build the pure-Python package
            print(f"warning: mypyc could not compile meshc.runtime ({e!r}); it runs as Python", file=sys.stderr)
        for ext in ext_modules:
            ext.optional = True  # no C compiler: a warning, and the .py files are used

setup(ext_modules=ext_modules)

"""Compiles the native proxy's request path with mypyc (docs/native.md, "Compiled request path").

Everything else about the package is in pyproject.toml. Without mypyc or a C compiler, or with
MESHC_PURE_PYTHON=1, nothing is compiled and the same modules run as plain Python. Beside the
compiled library the build writes the SHA-256 of each source it compiled
(`_compiled_sources.json`): meshc/runtime/__init__.py uses the library only while every .py is
still the one compiled, so an edited checkout runs the code as edited.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The per-request modules of `meshc proxy`; the same list as meshc.runtime.COMPILED_MODULES.
COMPILED_MODULES = ("http", "server", "match", "observability", "cluster")
SOURCES = [f"meshc/runtime/{name}.py" for name in COMPILED_MODULES]
GROUP = "meshc.runtime._compiled"


def _digests() -> dict[str, str]:
    return {Path(s).stem: hashlib.sha256(Path(s).read_bytes()).hexdigest() for s in SOURCES}


class BuildExtRecordingSources(build_ext):
    """build_ext that records which sources the compiled library was built from."""

    def run(self) -> None:
        super().run()
        library = self.get_ext_fullpath(GROUP + "__mypyc")
        if COMPILED_DIGESTS and os.path.exists(library):
            with open(os.path.join(os.path.dirname(library), "_compiled_sources.json"), "w") as f:
                json.dump(COMPILED_DIGESTS, f, indent=1, sort_keys=True)


ext_modules = []
COMPILED_DIGESTS: dict[str, str] = {}
if not os.environ.get("MESHC_PURE_PYTHON"):
    try:
        from mypyc.build import mypycify
    except ImportError:
        pass
    else:
        COMPILED_DIGESTS = _digests()  # read now: mypycify compiles the files as they are now
        try:
            ext_modules = mypycify(SOURCES, opt_level="3", group_name=GROUP)
        except (Exception, SystemExit) as e:  # mypy found an error: build the pure-Python package
            print(f"warning: mypyc could not compile meshc.runtime ({e!r}); it runs as Python", file=sys.stderr)
            COMPILED_DIGESTS = {}
        for ext in ext_modules:
            ext.optional = True  # no C compiler: a warning, and the .py files are used

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExtRecordingSources})

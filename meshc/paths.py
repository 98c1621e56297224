"""Path normalization before authorization: one implementation for every evaluator in
meshc (the authorization semantics in meshc.authz, the native proxy's matcher) so that what
`meshc why` answers is what the proxy does.

Steps, in the order every target applies them (Envoy's canonicalization as meshc configures
it; docs/language.md, "Path normalization"): a raw backslash is a slash (`/a\\..\\admin` is
`/admin`, not a file name an application might split on backslashes); a segment that is `.` or
`..` before a `;` path parameter is that dot segment (`/..;/admin` is `/admin`, the spelling
Tomcat-style servers resolve); percent-decode unreserved characters (other escapes keep their
encoding, hex upper-cased); reject encoded slashes and backslashes (`%2F`, `%5C`), `%00` and
malformed escapes; resolve `.` and `..` (RFC 3986 5.2.4, never above the root), keeping the
trailing slash of `/a/.` and `/a/b/..`; merge repeated slashes.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
_MULTISLASH = re.compile(r"/{2,}")
# The spellings of `.` and `..` that normalize resolves, lower-cased.
_DOTS = frozenset({".", "..", "%2e", ".%2e", "%2e.", "%2e%2e"})


def normalize(path: str) -> str | None:
    """The normalized path, or None when the request must be rejected with 400."""
    if "\\" in path:
        path = path.replace("\\", "/")
    if ";" in path:
        segments = path.split("/")
        for i, seg in enumerate(segments):
            semi = seg.find(";")
            if semi >= 0 and seg[:semi].lower() in _DOTS:
                segments[i] = seg[:semi]
        path = "/".join(segments)
    if "%" not in path and "/." not in path and "//" not in path:
        return path  # the common case costs a few scans
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        ch = path[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        pair = path[i + 1:i + 3]
        if len(pair) != 2 or not set(pair) <= _HEX:
            return None
        pair = pair.upper()
        if pair in ("2F", "5C", "00"):
            return None
        decoded = chr(int(pair, 16))
        out.append(decoded if decoded in _UNRESERVED else "%" + pair)
        i += 3
    segments = "".join(out).split("/")[1:]
    kept: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == "." or seg == "..":
            if seg == ".." and kept:
                kept.pop()
            if i == last:
                kept.append("")
        else:
            kept.append(seg)
    return _MULTISLASH.sub("/", "/" + "/".join(kept))

"""The two sides of a large `meshc diff`, loaded at once on two cores.

A forked child loads the old side while this process loads the new one. Sending the old
model back whole costs about as much as loading it (10,000 services: load ~4.5 s, pickle
~2.6 s + unpickle ~1.6 s), so the child sends a summary instead: a digest of each service's
span-free signature and of each authorization rule's key, and the rules' spans. This process
asks for what differs (the services whose digests differ, the rules the new side does not
have) and rebuilds the old mesh from those and the new side's own objects for everything
else. An unchanged service is then the very object on both sides, so `semantic_diff` skips it
without comparing; an unchanged rule is the new side's rule with the old side's span (access
changes cite the old line).

The rebuilt mesh has the old side's meaning; what it does not have is the old side's spans
inside unchanged services, which no diff output cites. Generated files (`--target`) do
depend on every span, so that case loads both sides whole (meshc.diff decides).
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing as mp
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshc import parallel
from meshc.model import AuthzRule, Mesh, Service, Span


class OldSideError(Exception):
    """Loading the old side failed in the child; `error` is its exception."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


@dataclass
class Summary:
    settings: Mesh  # the mesh without services and rules
    services: dict[str, bytes]  # name -> digest of its signature, in the mesh's order
    rules: list[bytes]  # digest of each rule's key, in order
    rule_spans: list[Span]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def summarize(mesh: Mesh) -> Summary:
    from meshc.diff import rule_key_of, sig

    key = rule_key_of(mesh)
    settings = Mesh(**{f: getattr(mesh, f) for f in Mesh.model_fields if f not in ("services", "rules")})
    return Summary(settings, {s.name: _digest(sig(s)) for s in mesh.services},
                   [_digest(repr(key(r))) for r in mesh.rules], [r.span for r in mesh.rules])


Fetch = Callable[[list[str], list[int]], tuple[list[Service], list[AuthzRule]]]


def rebuild(old: Summary, new: Mesh, new_summary: Summary, fetch: Fetch) -> Mesh:
    """The old mesh from its summary, the objects `fetch(service names, rule indexes)` gets
    from the old side, and the new side's objects for everything the two share."""
    differing = [n for n, d in old.services.items() if new_summary.services.get(n) != d]
    new_rule_at: dict[bytes, int] = {}
    for i, d in enumerate(new_summary.rules):
        new_rule_at.setdefault(d, i)
    missing = [i for i, d in enumerate(old.rules) if d not in new_rule_at]
    sent_services, sent_rules = fetch(differing, missing) if differing or missing else ([], [])
    sent = dict(zip(differing, sent_services, strict=True))
    shared = {s.name: s for s in new.services}  # equal digests: the new side has the service
    services = tuple(sent[n] if n in sent else shared[n] for n in old.services)
    sent_rule = dict(zip(missing, sent_rules, strict=True))
    rules = []
    for i, d in enumerate(old.rules):
        rule = sent_rule.get(i)
        if rule is None:
            rule = new.rules[new_rule_at[d]]
            if rule.span != old.rule_spans[i]:
                rule = rule.model_copy(update={"span": old.rule_spans[i]})
        rules.append(rule)
    fields = {f: getattr(old.settings, f) for f in Mesh.model_fields if f not in ("services", "rules")}
    return Mesh(**fields, services=services, rules=tuple(rules))


def _serve_old_side(load_old: Callable[[], Mesh | None], conn: Any) -> None:
    """In the child: load the old side, send its summary, then the objects asked for."""
    parallel.enabled = False  # no grandchildren
    gc.disable()  # the child allocates and exits: nothing to collect
    old: Mesh | None = None
    try:
        old = load_old()
        reply: tuple[str, Any] = ("ok", None if old is None else summarize(old))
    except BaseException as e:  # reported to the parent, which decides
        reply = ("raised", e)
    try:
        payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        payload = pickle.dumps(("raised", None))
    conn.send_bytes(payload)
    if reply[0] != "ok" or old is None:
        return
    try:
        names, indexes = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):  # the parent gave up
        return
    conn.send_bytes(pickle.dumps(([old.service(n) for n in names], [old.rules[i] for i in indexes]),
                                 protocol=pickle.HIGHEST_PROTOCOL))


class OldSide:
    """The old side loading in a forked child from construction."""

    def __init__(self, load_old: Callable[[], Mesh | None]):
        ctx = mp.get_context("fork")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._child = ctx.Process(target=_serve_old_side, args=(load_old, child_conn), daemon=True)
        self._child.start()
        child_conn.close()

    def _receive(self) -> Any:
        try:
            return pickle.loads(self._conn.recv_bytes())
        except EOFError:
            raise OldSideError(OSError("the process loading the old side died")) from None

    def summary(self) -> Summary | None:
        """The old side's summary (None: no old side); OldSideError if loading it failed."""
        kind, value = self._receive()
        if kind != "ok":
            self.close()
            raise OldSideError(value if value is not None else OSError("loading the old side failed"))
        return value  # type: ignore[no-any-return]

    def fetch(self, names: list[str], indexes: list[int]) -> tuple[list[Service], list[AuthzRule]]:
        self._conn.send_bytes(pickle.dumps((names, indexes), protocol=pickle.HIGHEST_PROTOCOL))
        return self._receive()  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._child.is_alive():
            self._child.kill()
        self._child.join()
        self._conn.close()


def load_both(load_old: Callable[[], Mesh | None], load_new: Callable[[], Mesh]) -> tuple[Mesh | None, Mesh]:
    """(old, new), the old side loading in a child meanwhile; old-side errors as OldSideError."""
    side = OldSide(load_old)
    try:
        new = load_new()
        new_summary = summarize(new)
        old = side.summary()
        if old is None:
            return None, new
        return rebuild(old, new, new_summary, side.fetch), new
    finally:
        side.close()

"""A generator of realistic meshes for benchmarks: N services in tiers, each with ~5 route
rules (header, path and method matches, a canary split), 3 allow rules, retries, timeouts and
circuit breakers. Calls go only to lower tiers, so the call graph is a DAG like real meshes.
Deterministic for a given (n, seed)."""

from __future__ import annotations

import random


def generate(n: int, seed: int = 1, *, tweak: int | None = None) -> str:
    """The .mesh text of an n-service mesh. `tweak=i` changes one allow rule of service i
    (for diff benchmarks: two versions that differ in one rule)."""
    rnd = random.Random(seed)
    out = ['mesh bench {\n  trust_domain "bench.local"\n  namespace bench\n  mtls strict\n'
           '  authz deny_by_default\n  timeout 30s\n}\n',
           "policy std {\n  retry 2 on 5xx, connect-failure per_try 500ms\n"
           "  circuit_breaker max_connections 100 max_pending 10 max_requests 200\n}\n"]
    for i in range(n):
        name = f"svc-{i:05d}"
        callees = sorted({rnd.randrange(i + 1, n) for _ in range(3)}) if i < n - 1 else []
        out.append(f"service {name} {{\n  port http {8000 + i % 1000}\n"
                   f"  version v1 {{ labels version=v1 endpoints 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8080 }}\n"
                   f"  version v2 {{ labels version=v2 endpoints 10.{128 + i // 65536 % 128}.{i // 256 % 256}.{i % 256}:8080 }}\n")
        if callees:
            out.append("  calls " + ", ".join(f"svc-{c:05d}" for c in callees) + "\n")
        out.append("  use std\n  timeout 10s\n  route {\n"
                   '    when header x-canary == "on" -> v2\n'
                   f'    when path under "/api/v2/{name}" -> v2\n'
                   '    when path prefix "/beta" and method GET -> split { v1 80%, v2 20% }\n'
                   '    when header x-debug present -> v1 {\n      request_headers set x-debugged "1"\n    }\n'
                   "    otherwise -> v1\n  }\n}\n")
        for c in callees:
            out.append(f"allow {name} -> svc-{c:05d} methods GET, POST\n")
        extra = 3 - len(callees)
        for _ in range(extra):
            out.append(f'allow ingress -> {name} paths prefix "/{name}"\n')
        if tweak == i:
            out.append(f'allow ingress -> {name} methods DELETE paths prefix "/admin"\n')
    return "".join(out)

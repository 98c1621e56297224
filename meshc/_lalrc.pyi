"""Types of meshc/_lalrc.c: meshc.lalr's parse loop and contextual lexer in C."""

from collections.abc import Callable
from typing import Any

# matcher kinds
LITERAL: int
NAME: int
STRING: int
ENDPOINT: int
DURATION: int
PERCENT: int
RATE: int
STATUS_CLASS: int
INT: int
END: int
SIZE: int
# reduction kinds
CALL: int
ONLY_CHILD: int
INLINE: int
SPLICE_CALL: int

def make_tables(states: int, terms: int, nonterms: int, rules: int, action: Any, go: Any, rule_length: Any,
                rule_origin: Any, start_state: int, end_state: int, end_term: int,
                lexers: list[tuple[tuple[int, int, str | None, dict[str, int] | None], ...]],
                term_names: tuple[str, ...], token_type: type, inline_type: type) -> object: ...
def parse(tables: object, text: str, callbacks: list[Callable[[list[Any]], Any] | None], kinds: bytes,
          start: int, end: int) -> Any: ...
def match(kind: int, literal: str | None, text: str, pos: int, end: int) -> int: ...

# meshc.ast's Builder helpers
def set_ast_types(token_type: type, part_type: type, span_type: type, meaningful: frozenset[str]) -> None: ...
def kids(children: list[Any]) -> list[Any]: ...
def span(children: list[Any], path: str) -> Any: ...

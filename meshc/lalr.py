"""A lean runtime for lark's LALR tables: the same language and the same tree, 3x faster.

lark analyses `grammar/mesh.lark` (the one grammar) into parse tables, terminal patterns and
tree-building callbacks; its general-purpose runtime then spends ~9 µs per token on a large
file (a lexer object per state, line counters, token objects built through keyword
arguments, interactive-parser bookkeeping). This module drives the *same* tables with a
tight loop:

- one compiled alternation per set of acceptable terminals (lark's contextual lexing: a
  keyword is a keyword only where the parser state accepts it, otherwise a NAME), ordered
  as lark orders terminals (priority, then longest possible match);
- string terminals that a regex terminal also matches (keywords vs NAME) are resolved after
  the match, as lark's `unless` callbacks do;
- tokens are lark `Token`s with the same positions; each reduction calls lark's own
  callbacks (a tree), or a transformer's method per rule (meshc.ast.Builder builds the AST
  this way, as lark's `transformer=` option does, without a tree in between).

It accepts exactly what lark accepts and builds an equal tree (tests/test_lalr.py compares
both on every example, generated meshes and random mutations). It has no error reporting
of its own: on any input it cannot parse it returns None, and the caller re-parses with lark,
whose exceptions drive meshc's syntax diagnostics.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from lark import Lark, Token
from lark.lexer import PatternStr, TerminalDef
from lark.parsers.lalr_analysis import Shift

_END = "$END"
_END_GROUP = "END_OF_TEXT_"  # group names cannot contain "$"
_new_str = str.__new__


def _lexer_for(accepted: frozenset[str], terminals: dict[str, TerminalDef], ignore: frozenset[str]
               ) -> tuple[Callable[[str, int], re.Match[str] | None], dict[str, dict[str, str]]]:
    """(match function, {regex terminal: {keyword text: keyword terminal}}) for one state.

    The match skips ignored text (whitespace, comments) in an atomic group, so it never
    backtracks into it, then matches one acceptable terminal or the end of the text."""
    defs = [terminals[n] for n in sorted(accepted) if n in terminals]
    regex_defs = [t for t in defs if not isinstance(t.pattern, PatternStr)]
    keywords: dict[str, dict[str, str]] = {}
    alternatives: list[TerminalDef] = []
    for t in defs:
        if isinstance(t.pattern, PatternStr):
            covering = next((r for r in regex_defs if r.priority == t.priority
                             and re.fullmatch(r.pattern.to_regexp(), t.pattern.value)), None)
            if covering is not None:
                keywords.setdefault(covering.name, {})[t.pattern.value] = t.name
                continue
        alternatives.append(t)
    alternatives.sort(key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
    skip = "|".join(terminals[n].pattern.to_regexp() for n in sorted(ignore))
    tokens = [f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in alternatives]
    if _END in accepted:
        tokens.append(f"(?P<{_END_GROUP}>\\Z)")
    rx = re.compile(f"(?>(?:{skip})*)(?:{'|'.join(tokens)})" if skip else "|".join(tokens))
    return rx.match, keywords


class _Inline(list):  # type: ignore[type-arg]
    """The children of a `_rule`, to be spliced into its parent's children."""


def _spliced(children: list[Any]) -> _Inline:
    """`children` with the children of `_rules` spliced in. Repetitions are left-recursive
    `_rules` (`_decl*` runs over a whole file), so the first child's list is extended in
    place (each value is used once) rather than copied."""
    first = children[0]
    flat = first if first.__class__ is _Inline else _Inline((first,))
    for child in children[1:]:
        if child.__class__ is _Inline:
            flat += child
        else:
            flat.append(child)
    return flat


def _splicing(method: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    if method is _Inline:
        return _spliced
    return lambda children: method(_spliced(children))


def _only_child(children: list[Any]) -> Any:
    """A `_rule` of one symbol: its value spliced into the parent is the child itself."""
    return children[0]


class _Lexers(dict):  # type: ignore[type-arg]
    """state -> lexer, compiled on first use (a small file meets few of the ~450 states)."""

    def __init__(self, terminals: dict[str, TerminalDef], ignore: frozenset[str],
                 accepted: dict[int, frozenset[str]]):
        super().__init__()
        self.terminals, self.ignore, self.accepted = terminals, ignore, accepted
        self.by_set: dict[frozenset[str], Any] = {}

    def __missing__(self, state: int) -> Any:
        acc = self.accepted[state]
        lexer = self.by_set.get(acc)
        if lexer is None:
            lexer = self.by_set[acc] = _lexer_for(acc, self.terminals, self.ignore)
        self[state] = lexer
        return lexer


class LeanParser:
    """Parses with the tables of a lark LALR parser built with keep_all_tokens and the
    contextual lexer. `parse(text)` returns lark's tree; `parse(text, callbacks_for(t))` what
    the transformer `t` builds bottom-up instead of a tree (as lark's `transformer=` option
    does). Either is None when the text does not parse."""

    def __init__(self, lark: Lark, start: str = "start"):
        inner = lark.parser.parser.parser  # ParsingFrontend -> LALR_Parser -> _Parser
        table = inner.parse_table
        self.lark = lark
        self.start_state = table.start_states[start]
        self.end_state = table.end_states[start]
        terminals = {t.name: t for t in lark.terminals}
        ignore = frozenset(lark.lexer_conf.ignore)
        # Rules by index: reductions name their rule by position in this list, and a parse
        # brings the list of callbacks in the same order (Rule hashing is Python code).
        self.rules = list(inner.callbacks)
        index = {rule: i for i, rule in enumerate(self.rules)}
        # state -> {terminal: (next state,) to shift, or (rule length, rule name, rule index)}
        self.actions: dict[int, dict[str, tuple[Any, ...]]] = {
            s: {k: (arg,) if a is Shift else (len(arg.expansion), arg.origin.name, index[arg])
                for k, (a, arg) in acts.items()}
            for s, acts in table.states.items()}
        self.tree_callbacks = [inner.callbacks[r] for r in self.rules]
        self.lexers = _Lexers(terminals, ignore, {s: frozenset(k for k in acts if k in terminals or k == _END)
                                                  for s, acts in table.states.items()})

    def callbacks_for(self, transformer: Any) -> list[Callable[[list[Any]], Any]]:
        """Reduction callbacks that call `transformer`'s method named after each rule (alias
        first; its `__default__(name, children, None)` for rules with no method), with lark's
        inlining of `_rules`: their children are spliced into the parent's children, in place.

        The same shape as lark's `create_callback(transformer)` (with keep_all_tokens), but
        with one Python call per reduction where lark chains three wrappers and builds a tree
        for every `_rule`; half of this grammar's reductions are such unit `_rules`."""
        made: list[Callable[[list[Any]], Any]] = []
        for rule in self.rules:
            name = rule.alias or rule.origin.name
            if rule.options.expand1 or rule.options.template_source:
                raise NotImplementedError(f"rule {name}: `?rule` and templates are not used by meshc")
            if name.startswith("_") and len(rule.expansion) == 1:
                made.append(_only_child)
                continue
            method: Callable[[list[Any]], Any] | None = (
                _Inline if name.startswith("_") else getattr(transformer, name, None))
            if method is None:
                method = functools.partial(transformer.__default__, name, meta=None)
            if any(not sym.is_term and sym.name.startswith("_") for sym in rule.expansion):
                method = _splicing(method)
            made.append(method)
        return made

    def parse(self, text: str, callbacks: list[Callable[[list[Any]], Any]] | None = None,
              start: int = 0, end: int | None = None) -> Any:
        """Parse `text[start:end]`; tokens keep their positions, lines and columns in `text`."""
        actions, lexers = self.actions, self.lexers
        callbacks = callbacks or self.tree_callbacks
        end_state = self.end_state
        states = [self.start_state]
        values: list[Any] = []
        state = self.start_state
        count, rfind = text.count, text.rfind
        pos, line, line_start = start, count("\n", 0, start) + 1, rfind("\n", 0, start) + 1
        endpos = len(text) if end is None else end
        while True:
            # ---- next token (after ignored text), lexed for what this state accepts
            match, keywords = lexers[state]
            m = match(text, pos, endpos)
            if m is None:
                return None
            typ = m.lastgroup
            start = m.start(typ)
            newlines = count("\n", pos, start)
            if newlines:
                line += newlines
                line_start = rfind("\n", pos, start) + 1
            pos = m.end()
            if typ == _END_GROUP:
                typ, val = _END, ""
            else:
                val = m.group(typ)
                kw = keywords.get(typ)
                if kw is not None:
                    typ = kw.get(val, typ)
            # ---- shift it, after the reductions it triggers
            while True:
                act = actions[state].get(typ)
                if act is None:
                    return None
                if len(act) == 1:
                    state = act[0]
                    states.append(state)
                    tok = _new_str(Token, val)
                    tok.type, tok.value, tok.start_pos, tok.end_pos = typ, val, start, pos
                    tok.line = tok.end_line = line
                    tok.column = column = start - line_start + 1
                    tok.end_column = column + len(val)
                    if "\n" in val:  # no meshc terminal spans lines, but stay exact if one does
                        line += val.count("\n")
                        line_start = start + val.rfind("\n") + 1
                        tok.end_line, tok.end_column = line, pos - line_start + 1
                    values.append(tok)
                    break
                n, origin, rule = act
                if n:
                    children = values[-n:]
                    del values[-n:]
                    del states[-n:]
                else:
                    children = []
                values.append(callbacks[rule](children))
                state = actions[states[-1]][origin][0]
                states.append(state)
                if state == end_state and typ == _END:
                    return values[-1]
            if typ == _END:
                return None  # lark would have finished on a reduction

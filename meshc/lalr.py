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

When meshc/_lalrc.c is built (it is wherever a C compiler is), the loop runs there, on the
same tables and the same lexer order, ~5x faster; tests/test_lalrc.py holds the two loops
equal. A grammar with a terminal the C lexer has no matcher for keeps the Python loop.

It accepts exactly what lark accepts and builds an equal tree (tests/test_lalr.py compares
both on every example, generated meshes and random mutations). It has no error reporting
of its own: on any input it cannot parse it returns None, and the caller re-parses with lark,
whose exceptions drive meshc's syntax diagnostics.
"""

from __future__ import annotations

import functools
import re
import sys
from array import array
from collections.abc import Callable
from typing import Any

from lark import Lark, Token
from lark.lexer import PatternStr, TerminalDef
from lark.parsers.lalr_analysis import Shift

try:
    import meshc._lalrc as _lalrc
except ImportError:  # installed without a C compiler: the Python loop does the same work
    _lalrc = None  # type: ignore[assignment]

_END = "$END"
_END_GROUP = "END_OF_TEXT_"  # group names cannot contain "$"
_new_str = str.__new__


def _alternatives(accepted: frozenset[str], terminals: dict[str, TerminalDef]
                  ) -> tuple[list[TerminalDef], dict[str, dict[str, str]]]:
    """The terminals a state's lexer tries, in order (the first that matches wins), and
    {regex terminal: {keyword text: keyword terminal}} for the keywords it covers.

    The order is lark's: priority, then longest possible match. A string terminal that an
    acceptable regex terminal of the same priority also matches (a keyword, and NAME) is
    not tried on its own: it is resolved after the match, as lark's `unless` callbacks do."""
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
    return alternatives, keywords


def _lexer_for(accepted: frozenset[str], terminals: dict[str, TerminalDef], ignore: frozenset[str]
               ) -> tuple[Callable[[str, int], re.Match[str] | None], dict[str, dict[str, str]]]:
    """(match function, keywords as `_alternatives` gives them) for one state.

    The match skips ignored text (whitespace, comments) in an atomic group, so it never
    backtracks into it, then matches one acceptable terminal or the end of the text."""
    alternatives, keywords = _alternatives(accepted, terminals)
    skip = "|".join(terminals[n].pattern.to_regexp() for n in sorted(ignore))
    tokens = [f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in alternatives]
    if _END in accepted:
        tokens.append(f"(?P<{_END_GROUP}>\\Z)")
    rx = re.compile(f"(?>(?:{skip})*)(?:{'|'.join(tokens)})" if skip else "|".join(tokens))
    return rx.match, keywords


# The regex terminals meshc/_lalrc.c has a matcher for, by their exact regex (a grammar whose
# terminals differ in any way keeps the Python loop), and the ignored text it skips.
_C_MATCHERS = {
    "[A-Za-z_]([A-Za-z0-9_-]*[A-Za-z0-9_])?": "NAME",
    '"([^"\\\\\n]|\\\\.)*"': "STRING",
    "(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]+": "ENDPOINT",
    "[0-9]+(\\.[0-9]+)?(ms|s|m|h|d)(?![A-Za-z0-9_])": "DURATION",
    "[0-9]+(\\.[0-9]+)?%": "PERCENT",
    "[0-9]+(\\.[0-9]+)?(B|KB|KiB|MB|MiB|GB|GiB)(?![A-Za-z0-9_])": "SIZE",
    "[0-9]+\\/(s|m|h)(?![A-Za-z0-9_])": "RATE",
    "[1-5]xx(?![A-Za-z0-9_])": "STATUS_CLASS",
    "[0-9]+": "INT",
}
_C_IGNORED = frozenset({"(?:[ \t\x0c\r\n])+", "#[^\n]*"})
# A regex that is a choice of plain words, e.g. `(?:allow|deny)`: its words are tried in order.
_WORD_CHOICE = re.compile(r"\(\?:(\w+(?:\|\w+)*)\)")


def _c_alternatives(t: TerminalDef, index: int) -> list[tuple[int, int, str | None]] | None:
    """(matcher kind, terminal index, literal) for `t` in meshc/_lalrc.c, or None if it has none."""
    assert _lalrc is not None
    if t.pattern.flags:
        return None
    if isinstance(t.pattern, PatternStr):
        return [(_lalrc.LITERAL, index, t.pattern.value)] if "\n" not in t.pattern.value else None
    regex = t.pattern.to_regexp()
    if regex in _C_MATCHERS:
        return [(getattr(_lalrc, _C_MATCHERS[regex]), index, None)]
    choice = _WORD_CHOICE.fullmatch(regex)
    if choice:
        return [(_lalrc.LITERAL, index, word) for word in choice.group(1).split("|")]
    return None


def _c_lexer(accepted: frozenset[str], terminals: dict[str, TerminalDef], term_index: dict[str, int]
             ) -> tuple[Any, ...] | None:
    """One state's lexer for meshc/_lalrc.c: (matcher kind, terminal, literal, keywords) in
    the order `_alternatives` gives, or None if a terminal has no C matcher."""
    assert _lalrc is not None
    alternatives, keywords = _alternatives(accepted, terminals)
    state_lexer: list[tuple[int, int, str | None, dict[str, int] | None]] = []
    for t in alternatives:
        matchers = _c_alternatives(t, term_index[t.name])
        if matchers is None:
            return None
        kw = keywords.get(t.name)
        kw_index = {text: term_index[name] for text, name in kw.items()} if kw else None
        state_lexer += [(kind, index, literal, kw_index) for kind, index, literal in matchers]
    if _END in accepted:
        state_lexer.append((_lalrc.END, term_index[_END], None, None))
    return tuple(state_lexer)


def _c_tables(parser: LeanParser, terminals: dict[str, TerminalDef], ignore: frozenset[str]) -> Any:
    """The parser's tables for meshc/_lalrc.c, or None if it is not built or cannot match
    some terminal of this grammar exactly."""
    if _lalrc is None or {terminals[n].pattern.to_regexp() for n in ignore} != _C_IGNORED:
        return None
    term_names = sorted(terminals) + [_END]
    term_index = {name: i for i, name in enumerate(term_names)}
    nonterms = sorted({k for acts in parser.actions.values() for k in acts if k not in term_index})
    nonterm_index = {name: i for i, name in enumerate(nonterms)}
    states = len(parser.actions)
    if sorted(parser.actions) != list(range(states)):
        return None
    action = array("i", bytes(4 * states * len(term_names)))
    go = array("i", [-1]) * (states * len(nonterms))
    for s, acts in parser.actions.items():
        for symbol, act in acts.items():
            if symbol in term_index:
                action[s * len(term_names) + term_index[symbol]] = act[0] + 1 if len(act) == 1 else -act[2] - 1
            elif len(act) == 1:
                go[s * len(nonterms) + nonterm_index[symbol]] = act[0]
            else:
                return None
    by_set: dict[frozenset[str], tuple[Any, ...]] = {}  # many states accept the same terminals
    lexers = []
    for s in range(states):
        accepted = parser.lexers.accepted[s]
        if accepted not in by_set:
            state_lexer = _c_lexer(accepted, terminals, term_index)
            if state_lexer is None:
                return None
            by_set[accepted] = state_lexer
        lexers.append(by_set[accepted])
    rule_length = array("i", [len(r.expansion) for r in parser.rules])
    rule_origin = array("i", [nonterm_index[r.origin.name] for r in parser.rules])
    return _lalrc.make_tables(states, len(term_names), len(nonterms), len(parser.rules), action, go,
                              rule_length, rule_origin, parser.start_state, parser.end_state,
                              term_index[_END], lexers, tuple(sys.intern(n) for n in term_names), Token, _Inline)


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


class _Splicing:
    """A rule's method, called with the children of its `_rule` children spliced in."""

    __slots__ = ("method",)

    def __init__(self, method: Callable[[list[Any]], Any]):
        self.method = method

    def __call__(self, children: list[Any]) -> Any:
        return self.method(_spliced(children))


def _splicing(method: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    return _spliced if method is _Inline else _Splicing(method)


def _c_reductions(callbacks: list[Callable[[list[Any]], Any]]) -> tuple[list[Any], bytes]:
    """`callbacks` as meshc/_lalrc.c takes them: (callables, what each reduction does), so
    that it passes one-symbol `_rules` through and splices `_rule` children without calling
    back into Python for either."""
    assert _lalrc is not None
    made: list[Any] = []
    kinds = bytearray()
    for given in callbacks:
        callback: Any = given
        if callback is _only_child:
            kind, callback = _lalrc.ONLY_CHILD, None
        elif callback is _spliced or callback is _Inline:  # `_Inline(c)` is `_spliced(c)` with no `_rule` in c
            kind, callback = _lalrc.INLINE, None
        elif isinstance(callback, _Splicing):
            kind, callback = _lalrc.SPLICE_CALL, callback.method
        else:
            kind = _lalrc.CALL
        made.append(callback)
        kinds.append(kind)
    return made, bytes(kinds)


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
        self.c_tables = _c_tables(self, terminals, ignore)

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
        if self.c_tables is not None:
            assert _lalrc is not None
            made, kinds = _c_reductions(callbacks or self.tree_callbacks)
            return _lalrc.parse(self.c_tables, text, made, kinds, start, len(text) if end is None else end)
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


class LarkParser:
    """LeanParser's interface over lark's own LALR parser: what meshc.parse falls back to when
    the lean runtime cannot be set up (it reads lark internals; lark is pinned to the minor
    version it is tested with, but a different lark must still parse, only slower). It builds
    no AST while parsing: the caller transforms lark's tree, as for any text LeanParser returns
    None for."""

    def __init__(self, lark: Lark) -> None:
        self.lark = lark

    def callbacks_for(self, transformer: Any) -> list[Callable[[list[Any]], Any]]:
        return []

    def parse(self, text: str, callbacks: list[Callable[[list[Any]], Any]] | None = None) -> Any:
        return None if callbacks is not None else self.lark.parse(text)

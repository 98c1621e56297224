/* meshc._lalrc: meshc.lalr's parse loop in C, on the same lark tables.
 *
 * meshc.lalr.LeanParser drives lark's LALR tables with a Python loop that costs ~3 µs a
 * token (a regex match per token, then Python bytecode for the shift/reduce steps): about
 * half of `meshc check` on a large mesh. This module runs the same loop in C:
 *
 * - the tables (actions, gotos, rule lengths) as flat int arrays, built by
 *   meshc.lalr from lark's analysis of grammar/mesh.lark;
 * - the contextual lexer as an ordered list of alternatives per parser state, exactly the
 *   order of the Python alternation (first alternative that matches wins), with each of
 *   the grammar's regex terminals matched by a hand-written function equal to its regex.
 *   meshc.lalr maps a terminal to one of these matchers only when its regex is textually
 *   the one the matcher implements; a grammar with any other terminal keeps the Python
 *   loop (tests/test_lalrc.py checks each matcher against `re` on generated strings);
 * - tokens are lark Tokens with the same fields, and reductions call the same callbacks.
 *
 * Like the Python loop it reports no errors: any input it cannot parse returns None and
 * the caller re-parses with lark, whose exceptions drive meshc's diagnostics.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

enum {
    M_LITERAL = 0, M_NAME, M_STRING, M_ENDPOINT, M_DURATION, M_PERCENT, M_RATE,
    M_STATUS_CLASS, M_INT, M_END, M_SIZE, M_COUNT
};

typedef struct {
    int kind;
    int term;               /* terminal index */
    Py_UCS4 *literal;       /* M_LITERAL only */
    Py_ssize_t literal_len;
    PyObject *keywords;     /* dict {text: terminal index} for a regex terminal covering keywords, or NULL */
} Alternative;

typedef struct {
    Alternative *alternatives;
    int count;
} Lexer;

/* lark Token slots, in this order */
static const char *const TOKEN_SLOTS[] = {
    "type", "value", "start_pos", "end_pos", "line", "end_line", "column", "end_column"};
enum { S_TYPE, S_VALUE, S_START_POS, S_END_POS, S_LINE, S_END_LINE, S_COLUMN, S_END_COLUMN, S_COUNT };

typedef struct {
    int states, terms, nonterms, rules;
    int32_t *action;        /* [state * terms + term]: 0 error, s > 0 shift to s - 1, r < 0 reduce rule -r - 1 */
    int32_t *go;            /* [state * nonterms + nonterm]: next state, or -1 */
    int32_t *rule_length;
    int32_t *rule_origin;   /* nonterminal index */
    int start_state, end_state, end_term;
    Lexer *lexers;          /* per state */
    PyObject *term_names;   /* tuple of str */
    PyTypeObject *inline_type;  /* meshc.lalr._Inline: the children of a `_rule`, spliced into its parent's */
    PyTypeObject *token_type;
    Py_ssize_t slot_offset[S_COUNT];
} Tables;

#define CAPSULE_NAME "meshc._lalrc.Tables"

/* ------------------------------------------------------------------ matchers */

#define AT(i) PyUnicode_READ(kind, data, (i))

static inline int is_digit(Py_UCS4 c) { return c >= '0' && c <= '9'; }
static inline int is_alpha(Py_UCS4 c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static inline int is_alnum(Py_UCS4 c) { return is_alpha(c) || is_digit(c); }
static inline int is_word(Py_UCS4 c) { return is_alnum(c) || c == '_'; }  /* [A-Za-z0-9_] */
static inline int is_hex(Py_UCS4 c) {
    return is_digit(c) || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

static Py_ssize_t digits(int kind, const void *data, Py_ssize_t i, Py_ssize_t end) {
    while (i < end && is_digit(AT(i))) i++;
    return i;
}

/* The end of `word` at i followed by no [A-Za-z0-9_] (the `(?![A-Za-z0-9_])` of the unit
 * alternatives), or -1. */
static Py_ssize_t unit(int kind, const void *data, Py_ssize_t i, Py_ssize_t end, const char *word) {
    for (; *word; word++, i++)
        if (i >= end || AT(i) != (Py_UCS4)(unsigned char)*word) return -1;
    if (i < end && is_word(AT(i))) return -1;
    return i;
}

/* [0-9]+(\.[0-9]+)? greedily: the regexes that follow it never match a digit or a '.', so
 * backtracking into it cannot make them match (checked against `re` in the tests). */
static Py_ssize_t decimal(int kind, const void *data, Py_ssize_t i, Py_ssize_t end) {
    Py_ssize_t j = digits(kind, data, i, end);
    if (j == i) return -1;
    if (j + 1 < end && AT(j) == '.' && is_digit(AT(j + 1))) j = digits(kind, data, j + 1, end);
    return j;
}

/* The end of the match of one alternative at `pos`, or -1. */
static Py_ssize_t match(const Alternative *a, int kind, const void *data, Py_ssize_t pos, Py_ssize_t end) {
    Py_ssize_t i, j;
    Py_UCS4 c;
    switch (a->kind) {
    case M_LITERAL:
        if (end - pos < a->literal_len) return -1;
        for (i = 0; i < a->literal_len; i++)
            if (AT(pos + i) != a->literal[i]) return -1;
        return pos + a->literal_len;
    case M_NAME:  /* [A-Za-z_]([A-Za-z0-9_-]*[A-Za-z0-9_])? */
        if (pos >= end || !(is_alpha(c = AT(pos)) || c == '_')) return -1;
        i = pos + 1;
        while (i < end && (is_word(c = AT(i)) || c == '-')) i++;
        while (AT(i - 1) == '-') i--;  /* a name does not end in '-' */
        return i;
    case M_STRING:  /* "([^"\\\n]|\\.)*" */
        if (pos >= end || AT(pos) != '"') return -1;
        for (i = pos + 1; i < end; i++) {
            c = AT(i);
            if (c == '"') return i + 1;
            if (c == '\n') return -1;
            if (c == '\\') {
                if (i + 1 >= end || AT(i + 1) == '\n') return -1;
                i++;
            }
        }
        return -1;
    case M_ENDPOINT:  /* (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):[0-9]+ */
        if (pos >= end) return -1;
        c = AT(pos);
        if (c == '[') {
            for (i = pos + 1; i < end && (is_hex(c = AT(i)) || c == ':' || c == '.'); i++) {}
            if (i == pos + 1 || i >= end || AT(i) != ']') return -1;
            i++;
        } else if (is_alnum(c)) {
            for (i = pos + 1; i < end && (is_alnum(c = AT(i)) || c == '.' || c == '-'); i++) {}
        } else {
            return -1;
        }
        if (i >= end || AT(i) != ':') return -1;
        j = digits(kind, data, i + 1, end);
        return j == i + 1 ? -1 : j;
    case M_DURATION:  /* [0-9]+(\.[0-9]+)?(ms|s|m|h|d)(?![A-Za-z0-9_]) */
        if ((i = decimal(kind, data, pos, end)) < 0) return -1;
        if ((j = unit(kind, data, i, end, "ms")) >= 0) return j;
        if ((j = unit(kind, data, i, end, "s")) >= 0) return j;
        if ((j = unit(kind, data, i, end, "m")) >= 0) return j;
        if ((j = unit(kind, data, i, end, "h")) >= 0) return j;
        return unit(kind, data, i, end, "d");
    case M_SIZE:  /* [0-9]+(\.[0-9]+)?(B|KB|KiB|MB|MiB|GB|GiB)(?![A-Za-z0-9_]) */
        if ((i = decimal(kind, data, pos, end)) < 0) return -1;
        {
            static const char *const units[] = {"B", "KB", "KiB", "MB", "MiB", "GB", "GiB"};
            for (size_t k = 0; k < sizeof units / sizeof units[0]; k++)
                if ((j = unit(kind, data, i, end, units[k])) >= 0) return j;
        }
        return -1;
    case M_PERCENT:  /* [0-9]+(\.[0-9]+)?% */
        if ((i = decimal(kind, data, pos, end)) < 0) return -1;
        return i < end && AT(i) == '%' ? i + 1 : -1;
    case M_RATE:  /* [0-9]+\/(s|m|h)(?![A-Za-z0-9_]) */
        i = digits(kind, data, pos, end);
        if (i == pos || i >= end || AT(i) != '/') return -1;
        i++;
        if ((j = unit(kind, data, i, end, "s")) >= 0) return j;
        if ((j = unit(kind, data, i, end, "m")) >= 0) return j;
        return unit(kind, data, i, end, "h");
    case M_STATUS_CLASS:  /* [1-5]xx(?![A-Za-z0-9_]) */
        if (pos >= end || (c = AT(pos)) < '1' || c > '5') return -1;
        return unit(kind, data, pos + 1, end, "xx");
    case M_INT:  /* [0-9]+ */
        i = digits(kind, data, pos, end);
        return i == pos ? -1 : i;
    case M_END:  /* \Z */
        return pos == end ? pos : -1;
    }
    return -1;
}

/* ------------------------------------------------------------------ tables */

static void tables_free(Tables *t) {
    if (t == NULL) return;
    if (t->lexers != NULL) {
        for (int s = 0; s < t->states; s++) {
            Lexer *lx = &t->lexers[s];
            for (int k = 0; k < lx->count; k++) {
                PyMem_Free(lx->alternatives[k].literal);
                Py_XDECREF(lx->alternatives[k].keywords);
            }
            PyMem_Free(lx->alternatives);
        }
        PyMem_Free(t->lexers);
    }
    PyMem_Free(t->action);
    PyMem_Free(t->go);
    PyMem_Free(t->rule_length);
    PyMem_Free(t->rule_origin);
    Py_XDECREF(t->term_names);
    Py_XDECREF(t->token_type);
    Py_XDECREF(t->inline_type);
    PyMem_Free(t);
}

static void capsule_free(PyObject *capsule) {
    tables_free((Tables *)PyCapsule_GetPointer(capsule, CAPSULE_NAME));
}

/* A copy of a buffer of `count` native ints (array('i')) into a new int32 array. */
static int32_t *int_array(PyObject *obj, Py_ssize_t count, const char *what) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    int32_t *out = NULL;
    if (view.itemsize != 4 || view.format == NULL || strcmp(view.format, "i") != 0 || view.len != count * 4) {
        PyErr_Format(PyExc_ValueError, "%s: expected array('i') of %zd items", what, count);
    } else if ((out = PyMem_Malloc(view.len ? view.len : 1)) == NULL) {
        PyErr_NoMemory();
    } else {
        memcpy(out, view.buf, view.len);
    }
    PyBuffer_Release(&view);
    return out;
}

static int read_lexers(Tables *t, PyObject *lexers) {
    /* lexers: sequence, one per state, of sequences of (kind, term, literal or None, keywords or None) */
    if (!PyList_Check(lexers) || PyList_GET_SIZE(lexers) != t->states) {
        PyErr_SetString(PyExc_ValueError, "lexers: expected a list with one entry per state");
        return -1;
    }
    if ((t->lexers = PyMem_Calloc(t->states, sizeof(Lexer))) == NULL) { PyErr_NoMemory(); return -1; }
    for (int s = 0; s < t->states; s++) {
        PyObject *alts = PyList_GET_ITEM(lexers, s);
        if (!PyTuple_Check(alts)) { PyErr_SetString(PyExc_ValueError, "lexers: a tuple per state"); return -1; }
        Lexer *lx = &t->lexers[s];
        Py_ssize_t n = PyTuple_GET_SIZE(alts);
        if ((lx->alternatives = PyMem_Calloc(n ? n : 1, sizeof(Alternative))) == NULL) { PyErr_NoMemory(); return -1; }
        lx->count = (int)n;
        for (Py_ssize_t k = 0; k < n; k++) {
            Alternative *a = &lx->alternatives[k];
            PyObject *literal, *keywords;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(alts, k), "iiOO", &a->kind, &a->term, &literal, &keywords)) return -1;
            if (a->kind < 0 || a->kind >= M_COUNT || a->term < 0 || a->term >= t->terms) {
                PyErr_SetString(PyExc_ValueError, "lexers: bad matcher kind or terminal");
                return -1;
            }
            if (a->kind == M_LITERAL) {
                if (!PyUnicode_Check(literal) || PyUnicode_GET_LENGTH(literal) == 0) {
                    PyErr_SetString(PyExc_ValueError, "lexers: a literal needs its text");
                    return -1;
                }
                if ((a->literal = PyUnicode_AsUCS4Copy(literal)) == NULL) return -1;
                a->literal_len = PyUnicode_GET_LENGTH(literal);
            }
            if (keywords != Py_None) {
                if (!PyDict_Check(keywords)) { PyErr_SetString(PyExc_ValueError, "lexers: keywords is a dict"); return -1; }
                Py_INCREF(keywords);
                a->keywords = keywords;
            }
        }
    }
    return 0;
}

static int read_token_slots(PyTypeObject *token_type, Py_ssize_t *offsets) {
    for (int k = 0; k < S_COUNT; k++) {
        PyObject *descr = PyDict_GetItemString(token_type->tp_dict, TOKEN_SLOTS[k]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)
                || ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "token type: '%s' is not a slot", TOKEN_SLOTS[k]);
            return -1;
        }
        offsets[k] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return 0;
}

static PyObject *make_tables(PyObject *self, PyObject *args) {
    PyObject *action, *go, *rule_length, *rule_origin, *lexers, *term_names, *token_type, *inline_type;
    Tables *t = PyMem_Calloc(1, sizeof(Tables));
    if (t == NULL) return PyErr_NoMemory();
    if (!PyArg_ParseTuple(args, "iiiiOOOOiiiOO!O!O!:make_tables", &t->states, &t->terms, &t->nonterms, &t->rules,
                          &action, &go, &rule_length, &rule_origin, &t->start_state, &t->end_state,
                          &t->end_term, &lexers, &PyTuple_Type, &term_names, &PyType_Type, &token_type,
                          &PyType_Type, &inline_type))
        goto fail;
    if (t->states <= 0 || t->terms <= 0 || t->nonterms <= 0 || t->rules <= 0
            || PyTuple_GET_SIZE(term_names) != t->terms || t->end_term < 0 || t->end_term >= t->terms
            || t->start_state < 0 || t->start_state >= t->states || t->end_state < 0 || t->end_state >= t->states) {
        PyErr_SetString(PyExc_ValueError, "make_tables: inconsistent sizes");
        goto fail;
    }
    Py_INCREF(term_names);
    t->term_names = term_names;
    Py_INCREF(token_type);
    t->token_type = (PyTypeObject *)token_type;
    if (!PyType_IsSubtype(t->token_type, &PyUnicode_Type)) {
        PyErr_SetString(PyExc_TypeError, "token type: a str subclass");
        goto fail;
    }
    if (read_token_slots(t->token_type, t->slot_offset) < 0) goto fail;
    Py_INCREF(inline_type);
    t->inline_type = (PyTypeObject *)inline_type;
    if (!PyType_IsSubtype(t->inline_type, &PyList_Type)) {
        PyErr_SetString(PyExc_TypeError, "inline type: a list subclass");
        goto fail;
    }
    if ((t->action = int_array(action, (Py_ssize_t)t->states * t->terms, "action")) == NULL) goto fail;
    if ((t->go = int_array(go, (Py_ssize_t)t->states * t->nonterms, "go")) == NULL) goto fail;
    if ((t->rule_length = int_array(rule_length, t->rules, "rule_length")) == NULL) goto fail;
    if ((t->rule_origin = int_array(rule_origin, t->rules, "rule_origin")) == NULL) goto fail;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)t->states * t->terms; i++) {
        int32_t a = t->action[i];
        if (a > t->states || a < -t->rules) { PyErr_SetString(PyExc_ValueError, "action out of range"); goto fail; }
    }
    for (Py_ssize_t i = 0; i < (Py_ssize_t)t->states * t->nonterms; i++)
        if (t->go[i] < -1 || t->go[i] >= t->states) { PyErr_SetString(PyExc_ValueError, "go out of range"); goto fail; }
    for (int r = 0; r < t->rules; r++)
        if (t->rule_length[r] < 0 || t->rule_origin[r] < 0 || t->rule_origin[r] >= t->nonterms) {
            PyErr_SetString(PyExc_ValueError, "rule out of range");
            goto fail;
        }
    if (read_lexers(t, lexers) < 0) goto fail;
    PyObject *capsule = PyCapsule_New(t, CAPSULE_NAME, capsule_free);
    if (capsule == NULL) goto fail;
    return capsule;
fail:
    tables_free(t);
    return NULL;
}

/* ------------------------------------------------------------------ parse */

static int set_slot(PyObject *tok, Py_ssize_t offset, PyObject *value) {  /* steals value */
    if (value == NULL) return -1;
    PyObject **slot = (PyObject **)((char *)tok + offset);
    Py_XSETREF(*slot, value);
    return 0;
}

static PyObject *new_token(const Tables *t, PyObject *value, int term, Py_ssize_t start, Py_ssize_t end,
                           Py_ssize_t line, Py_ssize_t column) {
    PyObject *args = PyTuple_Pack(1, value);
    if (args == NULL) return NULL;
    PyObject *tok = PyUnicode_Type.tp_new(t->token_type, args, NULL);  /* str.__new__(Token, value) */
    Py_DECREF(args);
    if (tok == NULL) return NULL;
    PyObject *type = PyTuple_GET_ITEM(t->term_names, term);
    PyObject *line_obj = PyLong_FromSsize_t(line);
    Py_INCREF(type);
    Py_INCREF(value);
    Py_XINCREF(line_obj);
    if (set_slot(tok, t->slot_offset[S_TYPE], type) < 0
            || set_slot(tok, t->slot_offset[S_VALUE], value) < 0
            || set_slot(tok, t->slot_offset[S_START_POS], PyLong_FromSsize_t(start)) < 0
            || set_slot(tok, t->slot_offset[S_END_POS], PyLong_FromSsize_t(end)) < 0
            || set_slot(tok, t->slot_offset[S_LINE], line_obj) < 0
            || set_slot(tok, t->slot_offset[S_END_LINE], line_obj) < 0
            || set_slot(tok, t->slot_offset[S_COLUMN], PyLong_FromSsize_t(column)) < 0
            || set_slot(tok, t->slot_offset[S_END_COLUMN], PyLong_FromSsize_t(column + (end - start))) < 0) {
        Py_DECREF(tok);
        return NULL;
    }
    return tok;
}

/* What a reduction does with its children (meshc.lalr.LeanParser.parse passes one per rule). */
enum { R_CALL = 0, R_ONLY_CHILD, R_INLINE, R_SPLICE_CALL, R_KINDS };

/* `children` with the children of its `_rule` children (inline_type lists) spliced in, as
 * an inline_type list: meshc.lalr._spliced. The first child's list is extended in place. */
static PyObject *spliced(PyTypeObject *inline_type, PyObject *children) {
    Py_ssize_t n = PyList_GET_SIZE(children), k = 0;
    PyObject *flat;
    if (n > 0 && Py_IS_TYPE(PyList_GET_ITEM(children, 0), inline_type)) {
        flat = PyList_GET_ITEM(children, 0);
        Py_INCREF(flat);
        k = 1;
    } else if ((flat = PyObject_CallNoArgs((PyObject *)inline_type)) == NULL) {
        return NULL;
    }
    for (; k < n; k++) {
        PyObject *child = PyList_GET_ITEM(children, k);
        Py_ssize_t size = PyList_GET_SIZE(flat);
        if ((Py_IS_TYPE(child, inline_type) ? PyList_SetSlice(flat, size, size, child)
                                            : PyList_Append(flat, child)) < 0) {
            Py_DECREF(flat);
            return NULL;
        }
    }
    return flat;
}

typedef struct { int32_t *items; Py_ssize_t size, capacity; } StateStack;

static int push(StateStack *st, int32_t state) {
    if (st->size == st->capacity) {
        Py_ssize_t capacity = st->capacity ? st->capacity * 2 : 256;
        int32_t *items = PyMem_Realloc(st->items, capacity * sizeof(int32_t));
        if (items == NULL) { PyErr_NoMemory(); return -1; }
        st->items = items;
        st->capacity = capacity;
    }
    st->items[st->size++] = state;
    return 0;
}

static PyObject *parse(PyObject *self, PyObject *args) {
    PyObject *capsule, *text, *callbacks;
    const char *kinds;
    Py_ssize_t kinds_len, start, end;
    if (!PyArg_ParseTuple(args, "OUO!y#nn:parse", &capsule, &text, &PyList_Type, &callbacks, &kinds, &kinds_len,
                          &start, &end))
        return NULL;
    Tables *t = PyCapsule_GetPointer(capsule, CAPSULE_NAME);
    if (t == NULL) return NULL;
    if (PyList_GET_SIZE(callbacks) != t->rules || kinds_len != t->rules) {
        PyErr_SetString(PyExc_ValueError, "parse: one callback and one kind per rule");
        return NULL;
    }
    for (int r = 0; r < t->rules; r++) {
        if (kinds[r] < 0 || kinds[r] >= R_KINDS || (kinds[r] == R_ONLY_CHILD && t->rule_length[r] != 1)) {
            PyErr_SetString(PyExc_ValueError, "parse: bad reduction kind");
            return NULL;
        }
    }
    const int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (end < 0 || end > length) end = length;
    if (start < 0 || start > end) {
        PyErr_SetString(PyExc_ValueError, "parse: bad start");
        return NULL;
    }
    Py_ssize_t line = 1, line_start = 0;
    for (Py_ssize_t i = 0; i < start; i++)
        if (AT(i) == '\n') { line++; line_start = i + 1; }

    PyObject *result = NULL;
    PyObject *values = PyList_New(0);
    StateStack states = {NULL, 0, 0};
    if (values == NULL || push(&states, t->start_state) < 0) goto done;
    int32_t state = t->start_state;
    Py_ssize_t pos = start;
    for (;;) {
        /* ---- skip ignored text (whitespace, comments), counting lines */
        while (pos < end) {
            Py_UCS4 c = AT(pos);
            if (c == '\n') { line++; line_start = ++pos; }
            else if (c == ' ' || c == '\t' || c == '\r' || c == '\f') pos++;
            else if (c == '#') { while (pos < end && AT(pos) != '\n') pos++; }
            else break;
        }
        /* ---- the first alternative this state's lexer matches */
        const Lexer *lx = &t->lexers[state];
        const Alternative *hit = NULL;
        Py_ssize_t token_end = -1;
        for (int k = 0; k < lx->count; k++) {
            if ((token_end = match(&lx->alternatives[k], kind, data, pos, end)) >= 0) {
                hit = &lx->alternatives[k];
                break;
            }
        }
        if (hit == NULL) { result = Py_None; Py_INCREF(result); goto done; }
        int term = hit->term;
        PyObject *value = PyUnicode_Substring(text, pos, token_end);
        if (value == NULL) goto done;
        if (hit->keywords != NULL) {
            PyObject *keyword = PyDict_GetItemWithError(hit->keywords, value);
            if (keyword != NULL) {
                term = (int)PyLong_AsLong(keyword);
                if (term < 0 || term >= t->terms) {
                    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "keyword terminal out of range");
                    Py_DECREF(value);
                    goto done;
                }
            } else if (PyErr_Occurred()) {
                Py_DECREF(value);
                goto done;
            }
        }
        Py_ssize_t token_start = pos;
        pos = token_end;
        /* ---- shift it, after the reductions it triggers. No matcher spans lines, so the
         * token's line is the current one. */
        for (;;) {
            int32_t act = t->action[(Py_ssize_t)state * t->terms + term];
            if (act == 0) { Py_DECREF(value); result = Py_None; Py_INCREF(result); goto done; }
            if (act > 0) {
                state = act - 1;
                PyObject *tok = new_token(t, value, term, token_start, token_end, line, token_start - line_start + 1);
                if (tok == NULL || push(&states, state) < 0 || PyList_Append(values, tok) < 0) {
                    Py_XDECREF(tok);
                    Py_DECREF(value);
                    goto done;
                }
                Py_DECREF(tok);
                break;
            }
            int rule = -act - 1;
            Py_ssize_t n = t->rule_length[rule], top = PyList_GET_SIZE(values);
            if (n > top || n >= states.size) { PyErr_SetString(PyExc_RuntimeError, "parse stack underflow"); Py_DECREF(value); goto done; }
            states.size -= n;
            if (kinds[rule] != R_ONLY_CHILD) {  /* a `_rule` of one symbol: its value is the child's */
                PyObject *children = PyList_GetSlice(values, top - n, top), *reduced = NULL;
                if (children != NULL && PyList_SetSlice(values, top - n, top, NULL) == 0) {
                    if (kinds[rule] == R_CALL) {
                        reduced = PyObject_CallOneArg(PyList_GET_ITEM(callbacks, rule), children);
                    } else {
                        PyObject *flat = spliced(t->inline_type, children);
                        if (kinds[rule] == R_INLINE || flat == NULL) {
                            reduced = flat;
                        } else {
                            reduced = PyObject_CallOneArg(PyList_GET_ITEM(callbacks, rule), flat);
                            Py_DECREF(flat);
                        }
                    }
                }
                Py_XDECREF(children);
                if (reduced == NULL || PyList_Append(values, reduced) < 0) {
                    Py_XDECREF(reduced);
                    Py_DECREF(value);
                    goto done;
                }
                Py_DECREF(reduced);
            }
            state = t->go[(Py_ssize_t)states.items[states.size - 1] * t->nonterms + t->rule_origin[rule]];
            if (state < 0) { PyErr_SetString(PyExc_RuntimeError, "parse table has no goto"); Py_DECREF(value); goto done; }
            if (push(&states, state) < 0) { Py_DECREF(value); goto done; }
            if (state == t->end_state && term == t->end_term) {
                Py_DECREF(value);
                result = PyList_GET_ITEM(values, PyList_GET_SIZE(values) - 1);
                Py_INCREF(result);
                goto done;
            }
        }
        Py_DECREF(value);
        if (term == t->end_term) { result = Py_None; Py_INCREF(result); goto done; }  /* lark ends on a reduction */
    }
done:
    PyMem_Free(states.items);
    Py_XDECREF(values);
    return result;
}

/* match(kind, literal, text, pos, end) -> end of the match or -1: one matcher, for tests */
static PyObject *match_one(PyObject *self, PyObject *args) {
    int kind_;
    PyObject *literal, *text;
    Py_ssize_t pos, end;
    if (!PyArg_ParseTuple(args, "iOUnn:match", &kind_, &literal, &text, &pos, &end)) return NULL;
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (kind_ < 0 || kind_ >= M_COUNT || pos < 0 || end > length || pos > end) {
        PyErr_SetString(PyExc_ValueError, "match: bad arguments");
        return NULL;
    }
    Alternative a = {kind_, 0, NULL, 0, NULL};
    if (kind_ == M_LITERAL) {
        if (!PyUnicode_Check(literal) || (a.literal = PyUnicode_AsUCS4Copy(literal)) == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "match: literal text");
            return NULL;
        }
        a.literal_len = PyUnicode_GET_LENGTH(literal);
    }
    Py_ssize_t r = match(&a, PyUnicode_KIND(text), PyUnicode_DATA(text), pos, end);
    PyMem_Free(a.literal);
    return PyLong_FromSsize_t(r);
}

/* ------------------------------------------------------------------ AST helpers
 * meshc.ast.Builder calls these for nearly every reduction (about a million times for a
 * 10,000-service file): `kids`, the children that carry meaning, and `span`, a rule's extent
 * from the tokens at its edges. They do what meshc.ast's Python versions do (tests compare). */

static PyTypeObject *ast_token_type, *ast_part_type, *ast_span_type;
static PyObject *ast_meaningful, *str_children, *str_span;
static Py_ssize_t ast_slot[S_COUNT];

static PyObject *set_ast_types(PyObject *self, PyObject *args) {
    PyObject *token_type, *part_type, *span_type, *meaningful;
    if (!PyArg_ParseTuple(args, "O!O!O!O!:set_ast_types", &PyType_Type, &token_type, &PyType_Type, &part_type,
                          &PyType_Type, &span_type, &PyFrozenSet_Type, &meaningful))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)span_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "span type: a tuple subclass");
        return NULL;
    }
    Py_ssize_t offsets[S_COUNT];
    if (read_token_slots((PyTypeObject *)token_type, offsets) < 0) return NULL;
    memcpy(ast_slot, offsets, sizeof offsets);
    Py_INCREF(token_type); Py_XSETREF(ast_token_type, (PyTypeObject *)token_type);
    Py_INCREF(part_type); Py_XSETREF(ast_part_type, (PyTypeObject *)part_type);
    Py_INCREF(span_type); Py_XSETREF(ast_span_type, (PyTypeObject *)span_type);
    Py_INCREF(meaningful); Py_XSETREF(ast_meaningful, meaningful);
    Py_RETURN_NONE;
}

static PyObject *token_slot(PyObject *tok, int k) {  /* borrowed; NULL with AttributeError if unset */
    PyObject *v = *(PyObject **)((char *)tok + ast_slot[k]);
    if (v == NULL) PyErr_Format(PyExc_AttributeError, "token has no '%s'", TOKEN_SLOTS[k]);
    return v;
}

/* kids(children) -> [c for c in children if type(c) is not Token or c.type in MEANINGFUL] */
static PyObject *kids(PyObject *self, PyObject *children) {
    if (ast_token_type == NULL || !PyList_Check(children)) {
        PyErr_SetString(PyExc_TypeError, "kids: a list, after set_ast_types");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(children);
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyList_GET_ITEM(children, i);
        if (Py_IS_TYPE(c, ast_token_type)) {
            PyObject *type = token_slot(c, S_TYPE);
            int keep = type == NULL ? -1 : PySet_Contains(ast_meaningful, type);
            if (keep < 0) { Py_DECREF(out); return NULL; }
            if (!keep) continue;
        }
        if (PyList_Append(out, c) < 0) { Py_DECREF(out); return NULL; }
    }
    return out;
}

/* The (line, column) where `node` starts, or (end_line, end_column) where it ends, as new
 * references with None made 0 (meshc.ast._start/_end, then `or 0`). */
static int edge(PyObject *node, int at_end, PyObject **line, PyObject **column) {
    Py_INCREF(node);
    while (Py_IS_TYPE(node, ast_part_type)) {  /* a Part: its edge child */
        PyObject *children = PyObject_GetAttr(node, str_children);
        Py_DECREF(node);
        if (children == NULL) return -1;
        if (!PyList_Check(children) || PyList_GET_SIZE(children) == 0) {
            Py_DECREF(children);
            PyErr_SetString(PyExc_TypeError, "a Part without children");
            return -1;
        }
        node = PyList_GET_ITEM(children, at_end ? PyList_GET_SIZE(children) - 1 : 0);
        Py_INCREF(node);
        Py_DECREF(children);
    }
    PyObject *a, *b;
    if (Py_IS_TYPE(node, ast_token_type)) {
        a = token_slot(node, at_end ? S_END_LINE : S_LINE);
        b = a == NULL ? NULL : token_slot(node, at_end ? S_END_COLUMN : S_COLUMN);
        Py_XINCREF(a);
        Py_XINCREF(b);
    } else {  /* an AST node: its span */
        PyObject *span = PyObject_GetAttr(node, str_span);
        a = b = NULL;
        if (span != NULL && PyTuple_Check(span) && PyTuple_GET_SIZE(span) == 5) {
            a = PyTuple_GET_ITEM(span, at_end ? 3 : 1);
            b = PyTuple_GET_ITEM(span, at_end ? 4 : 2);
            Py_INCREF(a);
            Py_INCREF(b);
        } else if (span != NULL) {
            PyErr_SetString(PyExc_TypeError, "a node's span is not a Span");
        }
        Py_XDECREF(span);
    }
    Py_DECREF(node);
    if (a == NULL || b == NULL) { Py_XDECREF(a); Py_XDECREF(b); return -1; }
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) { Py_DECREF(a); Py_DECREF(b); return -1; }
    if (!PyObject_IsTrue(a)) { Py_DECREF(a); a = zero; Py_INCREF(zero); }  /* None (or 0) -> 0 */
    if (!PyObject_IsTrue(b)) { Py_DECREF(b); b = zero; Py_INCREF(zero); }
    Py_DECREF(zero);
    *line = a;
    *column = b;
    return 0;
}

/* span(children, path) -> Span(path, line, column, end_line, end_column) of a rule's children */
static PyObject *span(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (ast_token_type == NULL || nargs != 2 || !PyList_Check(args[0]) || PyList_GET_SIZE(args[0]) == 0) {
        PyErr_SetString(PyExc_TypeError, "span(children, path): a non-empty list, after set_ast_types");
        return NULL;
    }
    PyObject *children = args[0];
    PyObject *items[4];
    if (edge(PyList_GET_ITEM(children, 0), 0, &items[0], &items[1]) < 0) return NULL;
    if (edge(PyList_GET_ITEM(children, PyList_GET_SIZE(children) - 1), 1, &items[2], &items[3]) < 0) {
        Py_DECREF(items[0]);
        Py_DECREF(items[1]);
        return NULL;
    }
    PyObject *out = ast_span_type->tp_alloc(ast_span_type, 5);
    if (out == NULL) {
        for (int k = 0; k < 4; k++) Py_DECREF(items[k]);
        return NULL;
    }
    Py_INCREF(args[1]);
    PyTuple_SET_ITEM(out, 0, args[1]);
    for (int k = 0; k < 4; k++) PyTuple_SET_ITEM(out, k + 1, items[k]);  /* steals */
    return out;
}

static PyMethodDef methods[] = {
    {"make_tables", make_tables, METH_VARARGS,
     "make_tables(states, terms, nonterms, rules, action, go, rule_length, rule_origin, start_state, "
     "end_state, end_term, lexers, term_names, token_type, inline_type) -> tables"},
    {"parse", parse, METH_VARARGS,
     "parse(tables, text, callbacks, kinds, start, end) -> value, or None if it does not parse"},
    {"match", match_one, METH_VARARGS, "match(kind, literal, text, pos, end) -> end of the match, or -1"},
    {"set_ast_types", set_ast_types, METH_VARARGS, "set_ast_types(token_type, part_type, span_type, meaningful)"},
    {"kids", kids, METH_O, "kids(children) -> the children that are not keyword or punctuation tokens"},
    {"span", (PyCFunction)(void (*)(void))span, METH_FASTCALL, "span(children, path) -> Span of the children's extent"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "meshc._lalrc", "meshc.lalr's LALR parse loop and contextual lexer in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__lalrc(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if ((str_children = PyUnicode_InternFromString("children")) == NULL
            || (str_span = PyUnicode_InternFromString("span")) == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    static const char *const kinds[] = {"LITERAL", "NAME", "STRING", "ENDPOINT", "DURATION", "PERCENT", "RATE",
                                        "STATUS_CLASS", "INT", "END", "SIZE"};
    for (int k = 0; k < M_COUNT; k++) {
        if (PyModule_AddIntConstant(m, kinds[k], k) < 0) { Py_DECREF(m); return NULL; }
    }
    if (PyModule_AddIntConstant(m, "CALL", R_CALL) < 0 || PyModule_AddIntConstant(m, "ONLY_CHILD", R_ONLY_CHILD) < 0
            || PyModule_AddIntConstant(m, "INLINE", R_INLINE) < 0
            || PyModule_AddIntConstant(m, "SPLICE_CALL", R_SPLICE_CALL) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

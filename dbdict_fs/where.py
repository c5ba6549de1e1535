"""`--where` expressions: our own small parser, compiled to parameterised SQL (never eval).

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | "(" expr ")" | operand [tail]
    tail    := (= | == | != | <> | < | <= | > | >=) operand
             | ["not"] "in" "(" literal ("," literal)* ")" | ["not"] "like" operand
             | "is" ["not"] "null"
    operand := column | literal      column := a.dotted.name | `any name`
    (`status` and `path` are the job's own fields; `` `status` `` in backquotes is a user's key
    of that name: the backquotes reach `resolve`, which decides.)
    literal := "string" | 'string' | number | -number | true | false | null

Values only ever reach SQLite as bound parameters, and column names only as quoted
identifiers of columns that exist, so nothing in an expression can inject SQL.
"""

import re

from .errors import UsageError

MAX_DEPTH = 50

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
  | (?P<string>"(?:[^"\\]|\\.|"")*"|'(?:[^'\\]|\\.|'')*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<quoted>`[^`]+`)
  | (?P<op>==|!=|<>|<=|>=|=|<|>|\(|\)|,|-)
""", re.X)
_KEYWORDS = {"and", "or", "not", "in", "like", "is", "null", "true", "false"}
_COMPARE = {"=": "=", "==": "=", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}
_NULL = object()


def quote(name):
    """A SQL identifier for any column name: `"model.arch"` (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def compile_where(expr, resolve, column_sql=quote):
    """-> (sql, params). `resolve(name)` maps a user's column name to an existing column
    (raising UsageError for unknown ones), `column_sql(column)` that column to SQL (its
    quoted name, or the index's expression for a key kept beside the table)."""
    if not isinstance(expr, str) or not expr.strip():
        raise UsageError("--where: an empty expression")
    parser = _Parser(expr, resolve)
    parser.column_sql = column_sql
    sql = parser.parse_or()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.describe()}")
    return sql, parser.params


def _tokenize(expr):
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise UsageError(f"--where: unexpected character {expr[pos]!r} at position {pos + 1} in {expr!r}")
        kind = m.lastgroup
        text = m.group()
        if kind == "name" and text.lower() in _KEYWORDS:
            kind, text = "keyword", text.lower()
        elif kind == "quoted":
            kind = "name"  # backquotes kept: resolve() takes the name literally
        if kind != "space":
            tokens.append((kind, text, pos))
        pos = m.end()
    return tokens


def _unquote(text):
    quote_char, body = text[0], text[1:-1]
    body = body.replace(quote_char * 2, quote_char)
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _number(text):
    return float(text) if any(c in text for c in ".eE") else int(text)


class _Parser:
    def __init__(self, expr, resolve):
        self.expr = expr
        self.resolve = resolve
        self.tokens = _tokenize(expr)
        self.pos = 0
        self.depth = 0
        self.params = []
        self.column_sql = quote

    # -- tokens
    def peek(self, offset=0):
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def is_(self, kind, text=None, offset=0):
        tok = self.peek(offset)
        return tok is not None and tok[0] == kind and (text is None or tok[1] == text)

    def take(self):
        tok = self.peek()
        self.pos += 1
        return tok

    def describe(self):
        tok = self.peek()
        return "end of expression" if tok is None else repr(tok[1])

    def fail(self, message):
        tok = self.peek()
        where = f"at position {tok[2] + 1}" if tok else "at the end"
        raise UsageError(f"--where: {message} {where} in {self.expr!r}")

    def expect(self, kind, text, what):
        if not self.is_(kind, text):
            self.fail(f"expected {what}, got {self.describe()}")
        return self.take()

    # -- grammar
    def _chain(self, keyword, operand):
        """operand (keyword operand)*, as one parenthesised SQL expression."""
        parts = [operand()]
        while self.is_("keyword", keyword):
            self.take()
            parts.append(operand())
        return parts[0] if len(parts) == 1 else "(" + f" {keyword.upper()} ".join(parts) + ")"

    def parse_or(self):
        return self._chain("or", self.parse_and)

    def parse_and(self):
        return self._chain("and", self.parse_not)

    def parse_not(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail("nested too deeply")
        try:
            if self.is_("keyword", "not"):
                self.take()
                return f"(NOT {self.parse_not()})"
            if self.is_("op", "("):
                self.take()
                inner = self.parse_or()
                self.expect("op", ")", "')'")
                return f"({inner})"
            return self.parse_comparison()
        finally:
            self.depth -= 1

    def parse_comparison(self):
        left = self.operand()
        tok = self.peek()
        if tok is None or tok[0] not in ("op", "keyword"):
            return self.truthy(left)
        if tok[0] == "op" and tok[1] in _COMPARE:
            self.take()
            right = self.operand()
            op = _COMPARE[tok[1]]
            if left is _NULL or right is _NULL:
                if op not in ("=", "!="):
                    self.fail(f"null cannot be compared with {tok[1]}")
                if left is _NULL and right is _NULL:
                    return "(NULL IS NULL)" if op == "=" else "(NULL IS NOT NULL)"
                other = right if left is _NULL else left
                return f"({other} IS {'NOT ' if op == '!=' else ''}NULL)"  # `x = null` means `x is null`
            return f"({left} {op} {right})"
        negate = ""
        if tok == ("keyword", "not", tok[2]) and (self.is_("keyword", "in", 1) or self.is_("keyword", "like", 1)):
            self.take()
            negate = "NOT "
            tok = self.peek()
        if tok[0] == "keyword" and tok[1] == "in":
            self.take()
            self.expect("op", "(", "'(' after in")
            marks = [self.value(self.literal())]
            while self.is_("op", ","):
                self.take()
                marks.append(self.value(self.literal()))
            self.expect("op", ")", "')' to close the in list")
            return f"({self.value(left)} {negate}IN ({', '.join(marks)}))"
        if tok[0] == "keyword" and tok[1] == "like":
            self.take()
            return f"({self.value(left)} {negate}LIKE {self.value(self.operand())})"
        if tok[0] == "keyword" and tok[1] == "is" and not negate:
            self.take()
            if self.is_("keyword", "not"):
                self.take()
                negate = "NOT "
            self.expect("keyword", "null", "null after is")
            return f"({self.value(left)} IS {negate}NULL)"
        return self.truthy(left)

    def truthy(self, operand):
        return "NULL" if operand is _NULL else operand

    def value(self, operand):
        return "NULL" if operand is _NULL else operand

    def operand(self):
        tok = self.peek()
        if tok is None:
            self.fail("expected a column or a value")
        if tok[0] == "name":
            self.take()
            return self.column_sql(self.resolve(tok[1]))
        return self.literal()

    def literal(self):
        """A bound parameter ('?') for a literal, or _NULL for null."""
        tok = self.peek()
        if tok is None:
            self.fail("expected a value")
        kind, text, _ = tok
        sign = 1
        if kind == "op" and text == "-" and self.is_("number", offset=1):
            self.take()
            kind, text, _ = tok = self.peek()
            sign = -1
        if kind == "number":
            value = sign * _number(text)
        elif kind == "string":
            value = _unquote(text)
        elif kind == "keyword" and text in ("true", "false"):
            value = text == "true"
        elif kind == "keyword" and text == "null":
            self.take()
            return _NULL
        else:
            self.fail(f"expected a value, got {self.describe()}")
        self.take()
        self.params.append(value)
        return "?"

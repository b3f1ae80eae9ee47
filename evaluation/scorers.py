r"""Answer extraction and equivalence for math and multiple-choice benchmarks.

Math answers (`extract_answer`)
-------------------------------
The answer is taken from the model output by the first rule that applies:
1. the content of the LAST `\boxed{...}` / `\fbox{...}` (balanced braces, so nested `\frac{}{}`
   survive; the unbraced `\boxed 5` form is accepted too);
2. the text after the last GSM8K marker `#### `, to the end of that line;
3. the text after the last "the answer is" / "final answer:" / "answer:" phrase, cut at the end
   of its sentence (a period that is not a decimal point, a new line, or a top-level ", ");
4. the last number in the text (signs, decimals, "1,000" separators, `a/b`).

Equivalence (`math_equal(pred, ref)`)
-------------------------------------
Both sides are normalised (`normalize_answer`): `$`/`\(`, `\left`/`\right`, LaTeX spacing
(`\!`, `\,`, `~`...), `\dfrac`/`\tfrac` -> `\frac`, `\frac12` -> `\frac{1}{2}`, degree signs,
percent signs, currency signs, `\text{...}` units and trailing unit words ("5 cm", "5 dollars"),
"x = " / "x \in " prefixes, thousands separators ("1,000", "10,\!080"), trailing punctuation,
mixed numbers (`1\frac{4}{5}` = 9/5), `\text{(C)}` -> `C`. Then they are equal when:
- the normalised strings match (letters compared case-insensitively for plain words);
- both are numbers with the same value (`0.5` = `1/2` = `\frac{2}{4}` = `\dfrac12`);
- both parse (with this module's own small LaTeX parser, no `eval`) into sympy expressions with
  the same value: rational expressions exactly, other constants at 30 digits, expressions with
  variables at several fixed sample points (`x^2-1` = `(x-1)(x+1)`);
- compound answers match element by element: tuples `( )` and intervals `[ )` in order with the
  same bracket kinds, `\cup` unions in order, matrices entry by entry; bare comma lists ("1, -2")
  and sets `\{ \}` in any order; `a \pm b` stands for the two values a+b, a-b.

Precision rule: exact answers must agree exactly (1450001 != 1450000, \sqrt{1450001} !=
\sqrt{1450000}). When a side is written as a decimal it may be a rounding of the other: it must
agree within a relative tolerance of 1e-6 (`REL_TOL`) AND within one unit of its last written
digit. So 0.3333333 = 1/3 and 3.14159 = \pi, while wrong-but-close answers stay WRONG: 3.14 != \pi,
0.333 != 1/3, 1450000.4 != 1450000.

Percent convention: the percent sign is dropped like a unit, so "50\%" equals "50" and "50%" does
NOT equal "0.5"; a reference written as 0.5 is matched by 0.5 only.

Safety: model output is untrusted, so nothing is passed to `eval`/`sympify`. The parser accepts a
fixed grammar and builds sympy expressions UNEVALUATED (sympy's eager evaluation can run forever,
e.g. on |e^e^e^e^100 - 5|). Values are then computed under bounds: exact rational arithmetic up to
`_MAX_EXACT_BITS`, and a double-precision pass that refuses intermediates beyond 1e100 before any
arbitrary-precision evaluation. Inputs over `MAX_PARSE_CHARS` are compared as strings, over
`MAX_ANSWER_CHARS` only by identity, lists over `_MAX_ITEMS` in order; extraction is linear time.
A pathological string is answered in milliseconds, with no timer or signal involved (so it is
safe in any thread).

Multiple choice (`extract_choice`)
----------------------------------
Convention: the LAST explicit statement wins (reasoning often mentions other options first):
a boxed letter, then the last "Answer: C" / "the answer is (C)" / "the correct option is C",
then an output that is only a letter ("C", "(C)", "C."), then a leading "C." / "C)" before an
explanation, then the last "(C)", then the last stand-alone capital letter. Letters inside words never count, a
capital "A" followed by a lower-case word is read as the article, lower-case letters count only
in explicit statements, and a letter outside the first `n_choices` is ignored.
"""

from __future__ import annotations

import cmath
import math
import re
from fractions import Fraction

import sympy

__all__ = ["extract_answer", "normalize_answer", "math_equal", "parse_math", "extract_choice",
           "last_boxed", "numeric_value", "REL_TOL"]

REL_TOL = 1e-6
MAX_PARSE_CHARS = 300  # longer answers are compared as strings only, not parsed
MAX_ANSWER_CHARS = 2000  # longer answers only match an identical reference
_MAX_ITEMS = 32  # longer lists are compared item by item in order, as strings
_MAX_DEPTH = 60
_SAMPLE_POINTS = ((0.731, 1.347, 2.113), (1.913, 0.577, 1.279), (2.417, 1.723, 0.389), (1.171, 2.593, 1.637))

# ----------------------------------------------------------------------------------------------
# extraction


def _brace_pairs(s: str) -> dict[int, int]:
    """Index of each '{' -> index of its closing '}' (one pass; unclosed braces are left out)."""
    pairs, stack = {}, []
    for i, ch in enumerate(s):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def last_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` or `\\fbox{...}` (None when there is none)."""
    starts = list(re.finditer(r"\\(?:boxed|fbox)", text))
    pairs = _brace_pairs(text) if starts else {}
    for m in reversed(starts):  # a truncated last box falls back to the previous one
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            if i in pairs:
                return text[i + 1:pairs[i]]
        elif i > m.end():  # "\\boxed 5": the token up to whitespace or a math delimiter
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
    return None


def _cut_sentence(s: str) -> str:
    """The answer part of "the answer is X. More text": stop at a sentence end or a new line."""
    s = s.strip().split("\n", 1)[0]
    if s.startswith("$"):  # "$\frac{1}{2}$, so ..." -> the math span
        end = s.find("$", 1)
        if end > 0:
            return s[1:end]
    depth = 0
    for i, ch in enumerate(s):
        depth += ch in "([{"
        depth -= ch in ")]}"
        nxt = s[i + 1] if i + 1 < len(s) else ""
        if ch == "." and not nxt.isdigit() and (nxt == "" or nxt.isspace()):
            return s[:i]
        if ch in ",;" and depth <= 0 and nxt.isspace():
            return s[:i]
    return s


_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_PHRASE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s*(?:is\b|:|=)\s*:?", re.IGNORECASE)
_GSM8K_MARK = re.compile(r"####[ \t]*(\$?[ \t]*[-\d.\\][^\n]*)")  # "#### 18", not a "#### Step 1" heading


def _last_number(text: str) -> str | None:
    last = None
    for m in _NUMBER_RE.finditer(text):
        s = m.group(0)
        before = text[m.start() - 1] if m.start() > 0 else " "
        if s.startswith("-") and (before.isalnum() or before in ")}]"):  # "5-3": a minus sign, not a sign
            s = s[1:]
        last = s
    return last


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model output (see the module docstring for the rule order)."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    marks = _GSM8K_MARK.findall(text)
    if marks:
        return marks[-1].strip()
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        ans = _cut_sentence(text[phrases[-1].end():]).strip()
        # "Answer: Let's think step by step" is prose, not an answer: fall through to the number
        if ans and (re.search(r"[\d\\^=+*/()]", ans) or len(ans.split()) <= 2):
            return ans
    return _last_number(text)


# ----------------------------------------------------------------------------------------------
# normalisation

_UNICODE = {"\u2212": "-", "\u2013": "-", "\u00d7": r"\times ", "\u00f7": r"\div ", "\u03c0": r"\pi ",
            "\u221e": r"\infty ", "\u00b0": r"^\circ", "\u221a": r"\sqrt", "\u00b7": r"\cdot ", "\u00a0": " "}
# LaTeX spacing commands; a backslash preceded by another one is a line break (\\), not spacing
_SPACING = re.compile(r"(?<!\\)\\(?:[!,;: ]|quad\b|qquad\b|displaystyle\b)|~")
_UNIT_WORD = r"[A-Za-z][A-Za-z.]*(?:\s+[A-Za-z][A-Za-z.]*)*(?:\^\{?\d\}?)?"
_NUMBERISH = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?|-?\\frac\{\d+\}\{\d+\}"


def _strip_text_blocks(s: str) -> str:
    r"""Drop trailing `\text{unit}` blocks (with an optional ^2); unwrap the rest: \text{Evelyn}."""
    s = re.sub(r"\\(?:mbox|textrm|textbf|mathrm|mathbf|textit|operatorname)\s*\{", r"\\text{", s)
    m = re.search(r"(?:\\text\{[^{}]*\}(?:\^\{?\d\}?)?\s*)+$", s)
    if m and s[:m.start()].strip():
        s = s[:m.start()].rstrip()
    return re.sub(r"\\text\{([^{}]*)\}", r"\1", s)


def _strip_prefix(s: str) -> str:
    r"""'x = 5' -> '5', 'x \in [1,2]' -> '[1,2]' (only a bare name on the left, one '=')."""
    m = re.match(r"^\s*\\?[A-Za-z]+(?:_\{?\w+\}?)?\s*(?:=|\\in\b)(.*)$", s, re.DOTALL)
    if m and "=" not in m.group(1) and m.group(1).strip():
        return m.group(1)
    return s


def _fix_shorthand(s: str) -> str:
    r"""\frac12 -> \frac{1}{2}, \frac{270}7 -> \frac{270}{7}, \sqrt2 -> \sqrt{2}."""
    s = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\d)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*\{([^{}]*)\}\s*(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([A-Za-z])\s*([A-Za-z])", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\sqrt\s*(\d+|[A-Za-z])", r"\\sqrt{\1}", s)


def _remove_spaces(s: str) -> str:
    """Drop whitespace, except one space between two word characters, which keeps a command
    apart from a letter (\\cot x) and a subscript from its argument (\\log_2 8)."""
    s = re.sub(r"(?<=\w)\s+(?=\w)", "\x00", s)
    return re.sub(r"\s+", "", s).replace("\x00", " ")


def normalize_answer(ans: str | None) -> str:
    """A canonical string for an answer (see the module docstring); '' for no answer."""
    if ans is None:
        return ""
    s = str(ans).strip()
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    inner = last_boxed(s)
    if inner is not None and re.fullmatch(r"\$?\s*\\(?:boxed|fbox)\s*\{.*\}\s*\$?\.?", s, re.DOTALL):
        s = inner
    s = re.sub(r"^\\[(\[]|\\[)\]]$", "", s).strip().strip("$").strip()
    s = re.sub(r",\\!\s*", ",", s).replace("{,}", ",")  # 10,\!080 -> 10,080
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])\.?", "", s)
    s = _SPACING.sub(" ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\bdegrees?\b", "", s)
    s = s.replace(r"\%", "").replace("%", "").replace(r"\$", "").replace("$", "")
    s = _strip_text_blocks(s).strip()
    m = re.fullmatch(rf"({_NUMBERISH})\s*{_UNIT_WORD}", s)  # "5 cm", "5 dollars", "12 sq units"
    if m and not re.fullmatch(r"-?\d+(?:\.\d*)?\s*[a-z]", s):  # but "2x" or "5i" are math
        s = m.group(1)
    s = _strip_prefix(s).strip()
    s = _fix_shorthand(s)
    s = _remove_spaces(s).rstrip(".,;:?").strip()  # not "!": 10!
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    mixed = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # 1\frac{4}{5} = 9/5
    if mixed and int(mixed.group(4)) != 0:
        sign, whole, num, den = mixed.group(1), *map(int, mixed.group(2, 3, 4))
        s = f"{sign}\\frac{{{whole * den + num}}}{{{den}}}"
    choice = re.fullmatch(r"\(([A-Ea-e])\)", s)
    return choice.group(1).upper() if choice else s


# ----------------------------------------------------------------------------------------------
# numbers


def numeric_value(ans: str | None) -> Fraction | None:
    """Exact value of an answer that is a plain number after normalisation ("1,000", "\\frac{3}{4}",
    "50\\%" -> 50), else None."""
    return _to_number(normalize_answer(ans))


def _to_number(s: str) -> Fraction | None:
    """Exact value of a plain number: 12, -0.5, .5, 3/4, \\frac{3}{4}, -\\frac{3}{4}, 1e-3."""
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    try:
        if m:
            value = Fraction(m.group(2)) / Fraction(m.group(3))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+/\d+", s):
            return Fraction(s)
        if re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _close(a: complex | float | Fraction, b: complex | float | Fraction, tol: float = REL_TOL) -> bool:
    """|a - b| <= tol * max(|a|, |b|); exact for fractions (which may exceed the float range)."""
    if a == b:
        return True
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return abs(a - b) <= Fraction(tol) * max(abs(a), abs(b))
    return abs(a - b) <= tol * max(abs(a), abs(b))


_EXACT_FLOAT_TOL = 1e-12  # exact expressions evaluated in double precision


def _decimal_places(s: str) -> int | None:
    """Fewest fractional digits among the decimal literals of an answer (None: no decimals, the
    answer is exact)."""
    found = re.findall(r"\d*\.(\d+)", s)
    return min(len(f) for f in found) if found else None


def _values_match(a, b, places: int | None, exact_tol: float = _EXACT_FLOAT_TOL) -> bool:
    """Exact answers must agree exactly (up to float evaluation noise): 1450001 != 1450000 even
    though they are within 1e-6. When a decimal is involved, the values must agree within
    REL_TOL relative AND within one unit of its last written digit (0.3333333 = 1/3, 0.333 != 1/3)."""
    if places is None:
        return a == b if isinstance(a, Fraction) and isinstance(b, Fraction) else _close(a, b, exact_tol)
    return _close(a, b, REL_TOL) and abs(a - b) <= (Fraction(1, 10**places) if places < 400 else 0)


# ----------------------------------------------------------------------------------------------
# a small LaTeX-ish expression parser producing sympy objects (no eval anywhere)


class _ParseError(ValueError):
    pass


_TOKEN_RE = re.compile(r"\s*(?:(\d+\.?\d*|\.\d+)|(\\[A-Za-z]+|\\[{}|])|([A-Za-z])|(\*\*|[-+*/^_(){}\[\]!|,=<>]))")
_FUNCS = {"sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "cot": sympy.cot, "sec": sympy.sec,
          "csc": sympy.csc, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
          "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh, "ln": sympy.log, "log": sympy.log,
          "exp": sympy.exp}
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "phi", "omega", "rho",
          "sigma", "tau", "psi", "chi", "eta", "zeta", "kappa", "nu", "xi"}
_MUL_CMDS = {r"\cdot", r"\times", r"\ast"}


def _tokenize(s: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    s = s.strip()
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if not m or m.end() == pos:
            raise _ParseError(f"unexpected character {s[pos]!r}")
        kind = ("num", "cmd", "var", "op")[[g is not None for g in m.groups()].index(True)]
        tokens.append((kind, m.group(m.lastindex)))
        pos = m.end()
    return tokens


class _Parser:
    """expr := term (+|- term)*; term := unary ((*|/|implicit) unary)*; unary := -unary | power;
    power := postfix (^ unary)?; postfix := primary !*; primary := number | letter | (expr) |
    {expr} | |expr| | \\frac{}{} | \\sqrt[n]{} | \\pi | \\infty | \\func arg."""

    def __init__(self, text: str):
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise _ParseError(f"expected {value!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> sympy.Expr:
        e = self.expr()
        if self.peek() is not None:
            raise _ParseError(f"trailing {self.peek()!r}")
        return e

    def expr(self) -> sympy.Expr:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise _ParseError("nested too deeply")
        e = self.term()
        while self.peek() and self.peek()[1] in "+-":
            op = self.take()[1]
            rhs = self.term()
            e = _add(e, rhs if op == "+" else _neg(rhs))
        self.depth -= 1
        return e

    def starts_primary(self) -> bool:
        tok = self.peek()
        if tok is None:
            return False
        kind, val = tok
        return kind in ("num", "var") or val in ("(", "{") or (kind == "cmd" and val not in _MUL_CMDS
                                                                and val not in (r"\div", r"\}", r"\|"))

    def term(self) -> sympy.Expr:
        e = self.unary()
        while True:
            tok = self.peek()
            if tok and (tok[1] in ("*", "/", r"\div") or tok[1] in _MUL_CMDS):
                op = self.take()[1]
                rhs = self.unary()
                e = _mul(e, _inv(rhs) if op in ("/", r"\div") else rhs)
            elif self.starts_primary():  # implicit multiplication: 2x, 3\sqrt{2}, (x+1)(x-1)
                e = _mul(e, self.power())
            else:
                return e

    def unary(self) -> sympy.Expr:
        if self.peek() and self.peek()[1] in "+-":
            sign = self.take()[1]
            e = self.unary()
            return _neg(e) if sign == "-" else e
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.peek() and self.peek()[1] in ("^", "**"):
            self.take()
            exp = self.group() if self.peek() and self.peek()[1] == "{" else self.unary()
            return _safe_pow(base, exp)
        return base

    def postfix(self) -> sympy.Expr:
        e = self.primary()
        while self.peek() and self.peek()[1] == "!":
            self.take()
            n = _exact(e)
            if n is None or n.denominator != 1 or not 0 <= n <= 1000:
                raise _ParseError("factorial of a non-integer or huge number")
            e = sympy.Integer(math.factorial(int(n)))
        return e

    def group(self) -> sympy.Expr:
        """A braced argument, or a single token (\\frac ab)."""
        if self.peek() and self.peek()[1] == "{":
            self.take("{")
            e = self.expr()
            self.take("}")
            return e
        return self.primary()

    def primary(self) -> sympy.Expr:
        tok = self.peek()
        if tok is None:
            raise _ParseError("unexpected end")
        kind, val = tok
        if kind == "num":
            self.take()
            if self.peek() and self.peek()[1] == "_":
                raise _ParseError("number with a base subscript")  # 52_8: compared as a string
            return sympy.Rational(val) if "." in val else sympy.Integer(val)
        if kind == "var":
            self.take()
            return self.variable(val)
        if val in ("(", "{", "["):
            close = {"(": ")", "{": "}", "[": "]"}[self.take()[1]]
            e = self.expr()
            self.take(close)
            return e
        if val == "|":
            self.take()
            e = self.expr()
            self.take("|")
            return sympy.Abs(e, evaluate=False)
        if kind == "cmd":
            return self.command()
        raise _ParseError(f"unexpected {val!r}")

    def variable(self, name: str) -> sympy.Expr:
        if self.peek() and self.peek()[1] == "_":  # x_1, a_{n}
            self.take()
            if self.peek() and self.peek()[1] == "{":
                self.take("{")
                parts = []
                while self.peek() and self.peek()[1] != "}":
                    parts.append(self.take()[1])
                self.take("}")
                sub = "".join(parts)
            else:
                sub = self.take()[1]
            return sympy.Symbol(f"{name}_{sub}")
        if name == "i":
            return sympy.I
        if name == "e":
            return sympy.E
        return sympy.Symbol(name)

    def command(self) -> sympy.Expr:
        name = self.take()[1][1:]
        if name == "frac":
            num = self.group()
            return _mul(num, _inv(self.group()))
        if name == "sqrt":
            index = None
            if self.peek() and self.peek()[1] == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
            arg = self.group()
            return _safe_pow(arg, sympy.Rational(1, 2) if index is None else _inv(index))
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            return sympy.Symbol(name)
        if name in _FUNCS:
            return self.function(name)
        raise _ParseError(f"unsupported command \\{name}")

    def function(self, name: str) -> sympy.Expr:
        power = None
        base = None
        if name == "log" and self.peek() and self.peek()[1] == "_":  # \log_{2} x
            self.take()
            base = self.group()
        if self.peek() and self.peek()[1] == "^":  # \sin^2 x
            self.take()
            power = self.group()
        arg = self.power()
        value = _FUNCS[name](arg, evaluate=False)
        if base is not None:
            value = _mul(value, _inv(sympy.log(base, evaluate=False)))
        return value if power is None else _safe_pow(value, power)


# Expressions are built unevaluated: sympy's eager evaluation may query signs or evaluate
# numerically (|e^e^e^100 - 5| never returns); the comparison below evaluates under guards.
def _add(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    return sympy.Add(a, b, evaluate=False)


def _mul(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    return sympy.Mul(a, b, evaluate=False)


def _neg(a: sympy.Expr) -> sympy.Expr:
    return sympy.Mul(sympy.S.NegativeOne, a, evaluate=False)


def _inv(a: sympy.Expr) -> sympy.Expr:
    return sympy.Pow(a, sympy.S.NegativeOne, evaluate=False)


_MAX_EXACT_BITS = 60_000


def _exact(e: sympy.Expr) -> Fraction | None:
    """Exact value of a purely rational expression (numbers, + * and integer powers), None for
    anything else or when the result would exceed _MAX_EXACT_BITS."""
    if e.is_Rational:
        return Fraction(int(e.p), int(e.q))
    if e.is_Add or e.is_Mul:
        parts = [_exact(a) for a in e.args]
        if any(p is None for p in parts):
            return None
        value = sum(parts, Fraction(0)) if e.is_Add else math.prod(parts, start=Fraction(1))
    elif e.is_Pow:
        base, exp = _exact(e.base), _exact(e.exp)
        if base is None or exp is None or exp.denominator != 1 or (base == 0 and exp < 0):
            return None
        size = max(base.numerator.bit_length(), base.denominator.bit_length())
        if size * abs(exp.numerator) > _MAX_EXACT_BITS:
            return None
        value = base ** int(exp)
    else:
        return None
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_EXACT_BITS:
        return None
    return value


def _safe_pow(base: sympy.Expr, exp: sympy.Expr) -> sympy.Expr:
    """An unevaluated power; numeric exponents beyond 10^4 are refused outright."""
    if exp.is_Number and abs(exp) > 10_000:
        raise _ParseError("exponent too large")
    return sympy.Pow(base, exp, evaluate=False)


def parse_math(s: str) -> sympy.Expr | None:
    """Parse a normalised LaTeX-ish answer into a sympy expression (None when it is not one)."""
    if not s or len(s) > MAX_PARSE_CHARS:
        return None
    try:
        return _Parser(s).parse()
    except (_ParseError, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError):
        return None


class _NotNumeric(ValueError):
    pass


_MAX_MAGNITUDE = 1e100  # beyond this, arbitrary-precision evaluation can take forever (e^e^e^100)
_CMATH = {sympy.sin: cmath.sin, sympy.cos: cmath.cos, sympy.tan: cmath.tan, sympy.asin: cmath.asin,
          sympy.acos: cmath.acos, sympy.atan: cmath.atan, sympy.sinh: cmath.sinh, sympy.cosh: cmath.cosh,
          sympy.tanh: cmath.tanh, sympy.exp: cmath.exp, sympy.log: cmath.log,
          sympy.cot: lambda z: 1 / cmath.tan(z), sympy.sec: lambda z: 1 / cmath.cos(z),
          sympy.csc: lambda z: 1 / cmath.sin(z), sympy.Abs: abs}


def _float_eval(e: sympy.Expr, env: dict | None = None) -> complex:
    """Double-precision value of an expression (variables from `env`), refusing huge
    intermediates. Used directly at sample points, and as a cheap bounded pre-check before
    sympy's arbitrary-precision evaluation of constants (which never sees a float argument: sympy
    evaluates functions of floats eagerly, which can take forever for sin(e^e^e^x))."""
    env = env or {}
    try:
        if e.is_Symbol:
            v = env[e]
        elif e.is_Number:
            v = complex(e)
        elif e is sympy.I:
            v = 1j
        elif e.is_NumberSymbol:  # pi, E
            v = complex(e.evalf(20))
        elif e.is_Add:
            v = sum((_float_eval(a, env) for a in e.args), 0j)
        elif e.is_Mul:
            v = math.prod((_float_eval(a, env) for a in e.args), start=1 + 0j)
        elif e.is_Pow:
            v = _float_eval(e.base, env) ** _float_eval(e.exp, env)
        elif e.func in _CMATH and len(e.args) == 1:
            v = _CMATH[e.func](_float_eval(e.args[0], env))
        else:
            raise _NotNumeric(f"no float evaluation for {e.func}")
    except (OverflowError, ZeroDivisionError, ValueError, TypeError, KeyError) as err:
        raise _NotNumeric(str(err)) from None
    if not (cmath.isfinite(v) and abs(v) <= _MAX_MAGNITUDE):
        raise _NotNumeric("too large or not finite")
    return complex(v)


def _numeric(e: sympy.Expr) -> complex | None:
    """Value of a constant expression at 30 digits (None when it has no safe finite value)."""
    try:
        _float_eval(e)
        v = complex(sympy.N(e, 30))
    except (_NotNumeric, TypeError, ValueError, OverflowError):
        return None
    return v if cmath.isfinite(v) else None


def _sym_equal(a: sympy.Expr, b: sympy.Expr, places: int | None) -> bool:
    """Rational expressions: exact values; constants: 30-digit values; expressions with variables:
    equal values at fixed sample points (at least two points where both sides are finite)."""
    if a == b:
        return True
    ra, rb = _exact(a), _exact(b)
    if ra is not None and rb is not None:
        return _values_match(ra, rb, places)
    if a.has(sympy.oo, sympy.zoo, sympy.nan) or b.has(sympy.oo, sympy.zoo, sympy.nan):
        return False  # infinities only match structurally (a == b above)
    syms = sorted(a.free_symbols | b.free_symbols, key=str)
    if not syms:
        va, vb = _numeric(a), _numeric(b)
        return va is not None and vb is not None and _values_match(va, vb, places)
    agree = 0
    for point in _SAMPLE_POINTS:
        env = {s: complex(point[k % len(point)] + 0.1 * (k // len(point))) for k, s in enumerate(syms)}
        try:
            va, vb = _float_eval(a, env), _float_eval(b, env)
        except _NotNumeric:
            continue  # a pole or overflow at this point: try the others
        if not (_close(va, vb, 1e-8) if places is None else _close(va, vb, REL_TOL)):
            return False
        agree += 1
    return agree >= 2


# ----------------------------------------------------------------------------------------------
# compound answers


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets/braces."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith(("\\{", "\\}"), i):
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _bracketed(s: str) -> tuple[str, list[str], str] | None:
    """('(', items, ']') when s is one bracketed, comma-separated sequence."""
    for opener, closers in (("\\{", ("\\}",)), ("(", (")", "]")), ("[", ("]", ")"))):
        if not s.startswith(opener):
            continue
        closer = next((c for c in closers if s.endswith(c)), None)
        if closer is None or len(s) < len(opener) + len(closer):
            continue
        inner = s[len(opener):len(s) - len(closer)]
        if not _balanced(inner):  # "(1,2)(3,4)" is not one sequence
            continue
        items = _split_top(inner)
        if len(items) >= 2 or opener == "\\{":
            return opener, items, closer
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s.replace("\\{", "(").replace("\\}", ")"):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _expand_pm(items: list[str]) -> list[str]:
    out = []
    for it in items:
        if it.count("\\pm") == 1:
            out += [it.replace("\\pm", "+"), it.replace("\\pm", "-")]
        else:
            out.append(it)
    return out


def _same_unordered(p: list[str], r: list[str]) -> bool:
    if len(p) != len(r):
        return False
    if len(p) > _MAX_ITEMS:  # bound the quadratic matching
        return p == r
    left = list(r)
    for item in p:
        match = next((j for j, ref in enumerate(left) if _equal(item, ref)), None)
        if match is None:
            return False
        left.pop(match)
    return True


def _matrix(s: str) -> list[list[str]] | None:
    m = re.fullmatch(r"\\begin\{([pbv]?matrix)\}(.*)\\end\{\1\}", s, re.DOTALL)
    if not m:
        return None
    return [row.split("&") for row in m.group(2).split("\\\\") if row.strip()]


def _equal_compound(p: str, r: str) -> bool | None:
    """True/False for compound answers; None when neither side is compound."""
    mp, mr = _matrix(p), _matrix(r)
    if mp is not None or mr is not None:
        return (mp is not None and mr is not None and [len(x) for x in mp] == [len(x) for x in mr]
                and all(_equal(a, b) for x, y in zip(mp, mr) for a, b in zip(x, y)))
    up, ur = _split_top(p, "\\cup"), _split_top(r, "\\cup")
    if len(up) > 1 or len(ur) > 1:
        return len(up) == len(ur) and all(_equal(a, b) for a, b in zip(up, ur))
    bp, br = _bracketed(p), _bracketed(r)
    if bp or br:
        if not (bp and br) or (bp[0], bp[2]) != (br[0], br[2]):
            return False
        if bp[0] == "\\{":
            return _same_unordered(_expand_pm(bp[1]), _expand_pm(br[1]))
        return len(bp[1]) == len(br[1]) and all(_equal(a, b) for a, b in zip(bp[1], br[1]))
    lp, lr = _expand_pm(_split_top(p)), _expand_pm(_split_top(r))
    if len(lp) > 1 or len(lr) > 1:
        return _same_unordered(lp, lr)
    return None


def _equal(p: str, r: str) -> bool:
    """Equality of two normalised answers."""
    if p == r:
        return True
    if not p or not r:
        return False
    if re.fullmatch(r"[A-Za-z ]+", p) and re.fullmatch(r"[A-Za-z ]+", r) and len(p) > 1:
        return p.lower() == r.lower()
    compound = _equal_compound(p, r)
    if compound is not None:
        return compound
    places = [k for k in (_decimal_places(p), _decimal_places(r)) if k is not None]
    places = min(places) if places else None
    np_, nr = _to_number(p), _to_number(r)
    if np_ is not None and nr is not None:
        return _values_match(np_, nr, places)
    ep, er = parse_math(p), parse_math(r)
    return ep is not None and er is not None and _sym_equal(ep, er, places)


def math_equal(pred: str | None, ref: str | None) -> bool:
    """Whether a predicted answer equals the reference (see the module docstring)."""
    if pred is None or ref is None:
        return False
    if max(len(str(pred)), len(str(ref))) > MAX_ANSWER_CHARS:
        return str(pred).strip() == str(ref).strip()
    return _equal(normalize_answer(pred), normalize_answer(ref))


# ----------------------------------------------------------------------------------------------
# multiple choice


def extract_choice(text: str | None, n_choices: int = 4) -> str | None:
    """The chosen option letter ("A".."J") in a model output, or None (see the module docstring)."""
    if not text or not 1 <= n_choices <= 10:
        return None
    letters = "ABCDEFGHIJ"[:n_choices]
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.fullmatch(rf"\s*(?:\\text\{{)?\(?([{letters}])\)?\}}?\s*", boxed)
        if m:
            return m.group(1)
    # keyword case-insensitive, letters case-sensitive: "the answer is a prime" names no option
    explicit = re.compile(rf"(?i:\b(?:final\s+answer|answer|correct\s+(?:option|choice)))(?:\s+(?:is|would\s+be|should\s+be))?"
                          rf"\s*\**\s*[:：]?\s*\**\s*(?:\\boxed\{{|\\text\{{)?"
                          rf"(\(([{letters}{letters.lower()}])\)|([{letters}])(?![\w'’-])|"
                          rf"([{letters.lower()}])(?=\s*[.,;:!?)*]|\s*$))")
    found = [m for m in explicit.finditer(text) if _explicit_letter(m, letters)]
    if found:
        return _explicit_letter(found[-1], letters)
    bare = re.fullmatch(rf"[\s*]*\(?([{letters}])\)?[.:]?[\s*]*", text)
    if bare:
        return bare.group(1)
    lead = re.match(rf"\s*\(?([{letters}])[.):]\s", text)
    if lead:
        return lead.group(1)
    paren = re.findall(rf"\(([{letters}])\)", text)
    if paren:
        return paren[-1]
    for m in reversed(list(re.finditer(rf"(?<![\w'’-])([{letters}])(?![\w'’-])", text))):
        if m.group(1) == "A" and re.match(r"\s+[a-z]", text[m.end():]):
            continue  # "A train leaves ...": the article
        return m.group(1)
    return None


def _explicit_letter(m: re.Match, letters: str) -> str | None:
    """The letter of an explicit-answer match; a bare lower-case letter must end the clause."""
    letter = m.group(2) or m.group(3) or m.group(4)
    if letter is None:
        return None
    letter = letter.upper()
    return letter if letter in letters else None

"""Safe arithmetic expressions for virtual meters and virtual points.

A MyEMS virtual meter is stored as `{"equation": "x1+x2-x3", "variables": [{"name": "x1", ...}, ...]}`: the
equation is text typed by a user, so it must never reach `eval`. This module parses it into a small
postfix program and runs that program itself.

Why a hand-written parser rather than walking `ast.parse(text, mode="eval")`: CPython's parser fails on
deep input with `MemoryError` / `RecursionError` (e.g. `"-" * 100_000 + "1"`), its errors speak Python
rather than arithmetic, and its grammar is far wider than the one allowed here. The tokenizer, the
shunting-yard parser and the evaluator below are all loops, so no input can exhaust the Python stack,
and their cost is linear in the length of the text (which `max_length` bounds).

Grammar: numbers (`12`, `1.5`, `.5`, `2e3`), variable names `[A-Za-z_][A-Za-z0-9_]{0,63}`, binary
`+ - * /`, unary `+ -`, parentheses and the calls `min(a, ...)`, `max(a, ...)`, `abs(x)`. Power is
rejected on purpose: `9**9**9` costs unbounded time and memory.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Expression", "ExpressionError", "dependency_cycle", "parse"]

MAX_NAME_LENGTH = 64
FUNCTIONS = frozenset({"min", "max", "abs"})


class ExpressionError(ValueError):
    """An expression that cannot be parsed or evaluated, told so the user can fix it.

    `position` is the character offset in the expression text (the column, for the usual one-line
    equation) where the problem was found, or None when it concerns the whole expression.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


# --- tokens ------------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
    | (?P<num>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<bad>\*\*|//|==|!=|<=|>=|<<|>>|:=|->|[-+*/%@&|^]=)
    | (?P<op>[-+*/(),])
    """,
    re.VERBOSE | re.ASCII,
)
# What a number may not run into: `1j`, `0x1F`, `1_000`, `1.2.3` are one malformed literal, not two tokens.
_NUMBER_TAIL = re.compile(r"[A-Za-z0-9_.]*", re.ASCII)


class _Token(NamedTuple):
    kind: str  # "num", "name", "op", "bad" or "end"
    text: str
    pos: int
    number: float = 0.0
    error: str = ""


def _tokenize(text: str) -> list[_Token]:
    """All tokens of `text`, ending with an "end" token.

    Malformed input becomes a "bad" token instead of an immediate error, so the parser reports whichever
    problem comes first in the text.
    """
    tokens: list[_Token] = []
    pos, length = 0, len(text)
    while pos < length:
        match = _TOKEN.match(text, pos)
        if match is None:
            char = text[pos]
            tokens.append(_Token("bad", char, pos, error=f"unexpected {char!r}"))
            pos += 1
            continue
        kind, lexeme, end = match.lastgroup or "", match.group(), match.end()
        if kind == "num":
            tail = _NUMBER_TAIL.match(text, end)
            if tail is not None and tail.end() > end:
                lexeme = text[pos : tail.end()]
                tokens.append(_Token("bad", lexeme, pos, error=f"invalid number {lexeme!r}"))
                end = tail.end()
            else:
                value = float(lexeme)
                if math.isfinite(value):
                    tokens.append(_Token("num", lexeme, pos, number=value))
                else:
                    tokens.append(_Token("bad", lexeme, pos, error=f"number too large {lexeme!r}"))
        elif kind == "bad":
            tokens.append(_Token("bad", lexeme, pos, error=f"unexpected {lexeme!r}"))
        elif kind != "space":
            tokens.append(_Token(kind, lexeme, pos))
        pos = end
    tokens.append(_Token("end", "", length))
    return tokens


# --- program -----------------------------------------------------------------------------------------------

# Instruction codes of the postfix program.
_NUM, _VAR, _NEG, _ADD, _SUB, _MUL, _DIV, _MIN, _MAX, _ABS = range(10)
_BINARY = {"+": (_ADD, 1), "-": (_SUB, 1), "*": (_MUL, 2), "/": (_DIV, 2)}  # code, precedence
_UNARY_PRECEDENCE = 3  # binds tighter than * and /, as in Python: -x*y == (-x)*y
_CALLS = {"min": _MIN, "max": _MAX, "abs": _ABS}


class _Instr(NamedTuple):
    code: int
    pos: int  # where in the text, for errors found while evaluating
    number: float = 0.0
    name: str = ""
    argc: int = 0


class _Pending(NamedTuple):
    """An entry of the parser's operator stack."""

    kind: str  # "operator", "group" (a bare parenthesis) or "call"
    pos: int
    code: int = 0
    precedence: int = 0
    name: str = ""
    argc: int = 0


def _unexpected(token: _Token) -> ExpressionError:
    if token.kind == "end":
        return ExpressionError(f"unexpected end of expression at {token.pos}", token.pos)
    return ExpressionError(f"unexpected {token.text!r} at {token.pos}", token.pos)


def _compile(text: str, max_depth: int) -> tuple[tuple[_Instr, ...], dict[str, int]]:
    """Postfix program for `text` and each variable's first position, by shunting-yard.

    The parser is a loop over tokens with an explicit stack, so nesting costs heap, not Python stack;
    `max_depth` still bounds it because nobody writes 50 nested parentheses on purpose.
    """
    tokens = _tokenize(text)
    if tokens[0].kind == "end":
        raise ExpressionError("empty expression")
    output: list[_Instr] = []
    pending: list[_Pending] = []
    first_seen: dict[str, int] = {}
    expect_operand = True
    depth = 0
    index = 0
    while True:
        token = tokens[index]
        index += 1
        if token.kind == "bad":
            raise ExpressionError(f"{token.error} at {token.pos}", token.pos)
        if expect_operand:
            if token.kind == "num":
                output.append(_Instr(_NUM, token.pos, number=token.number))
                expect_operand = False
            elif token.kind == "name":
                name = token.text
                if tokens[index].text == "(" and tokens[index].kind == "op":
                    if name not in _CALLS:
                        raise ExpressionError(f"unknown function {name} at {token.pos}", token.pos)
                    depth += 1
                    if depth > max_depth:
                        raise _too_deep(max_depth, tokens[index].pos)
                    pending.append(_Pending("call", token.pos, _CALLS[name], name=name, argc=1))
                    index += 1
                    continue
                if name in _CALLS:
                    after = token.pos + len(name)
                    raise ExpressionError(f"expected '(' after {name} at {after}", after)
                if keyword.iskeyword(name):
                    raise _unexpected(token)
                if len(name) > MAX_NAME_LENGTH:
                    raise ExpressionError(
                        f"name too long (at most {MAX_NAME_LENGTH} characters) at {token.pos}", token.pos
                    )
                output.append(_Instr(_VAR, token.pos, name=name))
                first_seen.setdefault(name, token.pos)
                expect_operand = False
            elif token.kind == "op" and token.text == "-":
                pending.append(_Pending("operator", token.pos, _NEG, _UNARY_PRECEDENCE))
            elif token.kind == "op" and token.text == "+":
                pass  # unary plus changes nothing
            elif token.kind == "op" and token.text == "(":
                depth += 1
                if depth > max_depth:
                    raise _too_deep(max_depth, token.pos)
                pending.append(_Pending("group", token.pos))
            elif (
                token.text == ")" and pending and pending[-1].kind == "call" and tokens[index - 2].text == "("
            ):
                call = pending[-1]
                raise ExpressionError(f"{call.name} needs an argument at {token.pos}", token.pos)
            else:
                raise _unexpected(token)
            continue

        # An operand was just completed: what follows must be an operator, a closing bracket or the end.
        if token.kind == "op" and token.text in _BINARY:
            code, precedence = _BINARY[token.text]
            while pending and pending[-1].kind == "operator" and pending[-1].precedence >= precedence:
                top = pending.pop()
                output.append(_Instr(top.code, top.pos))
            pending.append(_Pending("operator", token.pos, code, precedence))
            expect_operand = True
        elif token.kind == "op" and token.text in "),":
            while pending and pending[-1].kind == "operator":
                top = pending.pop()
                output.append(_Instr(top.code, top.pos))
            if not pending or (token.text == "," and pending[-1].kind != "call"):
                raise _unexpected(token)
            opener = pending.pop()
            if token.text == ",":
                pending.append(opener._replace(argc=opener.argc + 1))
                expect_operand = True
                continue
            depth -= 1
            if opener.kind == "call":
                if opener.code == _ABS and opener.argc != 1:
                    raise ExpressionError(f"abs takes exactly one argument at {opener.pos}", opener.pos)
                output.append(_Instr(opener.code, opener.pos, argc=opener.argc))
        elif token.kind == "end":
            while pending:
                top = pending.pop()
                if top.kind != "operator":
                    raise ExpressionError(f"unclosed '(' at {top.pos}", top.pos)
                output.append(_Instr(top.code, top.pos))
            return tuple(output), first_seen
        else:
            raise _unexpected(token)


def _too_deep(max_depth: int, pos: int) -> ExpressionError:
    return ExpressionError(f"expression nested too deeply (more than {max_depth} levels) at {pos}", pos)


# --- public API --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A parsed expression: the text as written and the variable names it uses.

    Values are compared and hashed by `text` and `variables` only. Built by `parse`; constructing one
    directly re-parses `text` with default limits so an `Expression` is never inconsistent.
    """

    text: str
    variables: frozenset[str]
    _program: tuple[_Instr, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._program:
            parsed = parse(self.text)
            if parsed.variables != self.variables:
                raise ValueError(f"variables {sorted(self.variables)} do not match {self.text!r}")
            object.__setattr__(self, "_program", parsed._program)

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The value of the expression for `values` (extra names are ignored).

        Raises ExpressionError when a variable has no value or a non-numeric / non-finite one, on division
        by zero, and when any intermediate result overflows to a non-finite float: a meter reading of
        `inf` or `nan` is never a useful answer, and `min`/`max` would otherwise hide a `nan` silently.
        """
        stack: list[float] = []
        for instr in self._program:
            code = instr.code
            if code == _NUM:
                stack.append(instr.number)
                continue
            if code == _VAR:
                stack.append(_value(values, instr))
                continue
            if code == _NEG:
                result = -stack[-1]
            elif code == _ABS:
                result = abs(stack[-1])
            elif code in (_MIN, _MAX):
                args = stack[-instr.argc :]
                del stack[-instr.argc :]
                stack.append(min(args) if code == _MIN else max(args))
                continue
            else:
                right = stack.pop()
                left = stack[-1]
                if code == _ADD:
                    result = left + right
                elif code == _SUB:
                    result = left - right
                elif code == _MUL:
                    result = left * right
                else:
                    if right == 0:
                        raise ExpressionError(f"division by zero at {instr.pos}", instr.pos)
                    result = left / right
                if not math.isfinite(result):
                    raise ExpressionError(f"result is not finite at {instr.pos}", instr.pos)
            stack[-1] = result
        return stack[0]


def _value(values: Mapping[str, float], instr: _Instr) -> float:
    name = instr.name
    try:
        raw = values[name]
    except KeyError:
        raise ExpressionError(f"no value for variable {name}", instr.pos) from None
    if isinstance(raw, str | bytes):
        raise ExpressionError(f"value of {name} is not a number", instr.pos)
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise ExpressionError(f"value of {name} is not a number", instr.pos) from None
    if not math.isfinite(value):
        raise ExpressionError(f"value of {name} is not finite", instr.pos)
    return value


def parse(
    text: str, *, allowed: Iterable[str] | None = None, max_length: int = 1000, max_depth: int = 50
) -> Expression:
    """Parse an equation such as `"x1+x2-x3"` once, so it can be checked when saved and evaluated often.

    `allowed`, when given, lists the variable names the equation may use (a virtual meter's declared
    variables); the first unknown name in the text is reported. `max_length` (characters) and `max_depth`
    (nested parentheses and calls) bound the work any input can cause.
    """
    if max_length < 0 or max_depth < 0:
        raise ValueError("max_length and max_depth must not be negative")
    if len(text) > max_length:
        raise ExpressionError(f"expression too long ({len(text)} characters, at most {max_length})")
    program, first_seen = _compile(text, max_depth)
    if allowed is not None:
        known = frozenset(allowed)
        for name, pos in first_seen.items():  # dicts keep insertion order: first use in the text first
            if name not in known:
                raise ExpressionError(f"unknown variable {name}", pos)
    return Expression(text, frozenset(first_seen), program)


def dependency_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle in `graph` (node -> the nodes it references), or None when there is none.

    Virtual meters may reference other virtual meters; a cycle would make their values undefined, so it
    is refused when saved. The cycle is returned with its first node repeated at the end (`["a", "b",
    "a"]`, or `["a", "a"]` for a self-reference). Referenced nodes that are not keys have no references.
    Depth-first search with an explicit stack: long chains of meters cannot hit the recursion limit.
    """
    edges = {node: tuple(targets) for node, targets in graph.items()}
    done: set[str] = set()
    for root in edges:
        if root in done:
            continue
        path: list[str] = [root]
        on_path: dict[str, int] = {root: 0}
        iterators = [iter(edges[root])]
        while iterators:
            target = next(iterators[-1], None)
            if target is None:
                iterators.pop()
                finished = path.pop()
                del on_path[finished]
                done.add(finished)
            elif target in on_path:
                return [*path[on_path[target] :], target]
            elif target not in done:
                on_path[target] = len(path)
                path.append(target)
                iterators.append(iter(edges.get(target, ())))
    return None

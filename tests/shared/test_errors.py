"""`describe`: an exception as a log line reads it."""

import ast
from pathlib import Path

from shared.errors import describe

ROOT = Path(__file__).resolve().parents[2]


def test_an_exception_with_a_message_reads_as_its_message():
    assert describe(ValueError("engine e1 not found")) == "engine e1 not found"


def test_an_exception_without_a_message_reads_as_its_type():
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(RuntimeError("")) == "RuntimeError"


def _never_falls_back(node: ast.AST) -> bool:
    """`x or type(x).__name__`: `x` is an exception, always truthy, so the type is never used."""
    if not (isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) >= 2):
        return False
    first, second = node.values[0], node.values[1]
    return (
        isinstance(first, ast.Name)
        and isinstance(second, ast.Attribute)
        and second.attr == "__name__"
        and isinstance(second.value, ast.Call)
        and isinstance(second.value.func, ast.Name)
        and second.value.func.id == "type"
        and [ast.dump(arg) for arg in second.value.args] == [ast.dump(first)]
    )


def test_no_code_falls_back_on_an_exceptions_truth():
    """The 14 places of issue 20 item 9 use `describe`; a new `exc or type(exc).__name__` fails here."""
    assert _never_falls_back(ast.parse("exc or type(exc).__name__", mode="eval").body)
    assert not _never_falls_back(ast.parse("str(exc) or type(exc).__name__", mode="eval").body)
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted([*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")])
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if _never_falls_back(node)
    ]
    assert found == [], f"use shared.errors.describe: {found}"

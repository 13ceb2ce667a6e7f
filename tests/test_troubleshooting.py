"""README's Troubleshooting lists every one-line message the tap can end with.

The messages are read from the code (its syntax tree), not from a list kept by
hand: every construction of an error the command line reports on one line
(``TapAnalyticsError``, the SDK's API errors), and what the functions that compose
messages return. A construction whose message cannot be read that way fails the
test, so a new way of building one cannot slip past it. Each message must then
match an entry of the table's first column (``…`` or an example stands for a
value), and each entry a message: the two stay in step.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from singer_sdk.exceptions import FatalAPIError, RetriableAPIError

from tap_analytics.errors import TapAnalyticsError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tap_analytics"
ONE_LINE_ERRORS = (TapAnalyticsError, FatalAPIError, RetriableAPIError)
# Functions whose string results are whole messages (or lists of them); the
# messages of errors built from their results are read here instead.
MESSAGE_FUNCTIONS = {
    "failure_message",  # cli.py: the last line of a failed run
    "config_problems",
    "setting_problem",
    "_env_var_problem",
    "describe_failure",  # `GET … answered 503 …`, in several errors
    "unknown_settings",  # a WARNING, listed too
    "message",  # RunInterrupted: the last line of an interrupted run
    "_invalid",  # loaded_results.py: a job_results state entry it cannot read
    "_cannot_write",  # batches.py: a batch file that cannot be made or written
    "request_failure",  # errors.py: `cannot reach GET …: timed out`, and the like
}
# Error arguments that carry messages read elsewhere: another error's parts
# (StateError.in_file), or the joined results of a message function.
PASS_THROUGH = {
    "'; '.join(problems)",
    "f'the state {problem}: {fix(None)}'",
    "f'--state {path} {self.problem}: {self.fix(path)}'",
}
# Messages the tap does not write itself (click's usage errors).
EXTERNAL = ("Error: Invalid value for '--state'",)
# Literal characters of a message's start that an entry must show (after that an
# entry may stop, with or without `…`).
HEAD = 24


@dataclass(frozen=True)
class Message:
    where: str
    parts: tuple[str | None, ...]  # literal text, or None for a placeholder

    @property
    def literal_length(self) -> int:
        return sum(len(part) for part in self.parts if part)

    def head(self) -> re.Pattern[str]:
        """The start of the message, placeholders matching any value or `…`."""
        pattern, seen = "", 0
        parts = list(self.parts)
        while parts and parts[0] is None:  # a leading value: `GET …`, `{exc} …`
            parts.pop(0)
        for part in parts:
            if seen >= HEAD:
                break
            if part is None:
                pattern += ".+?"
            else:
                pattern += re.escape(part[: HEAD - seen])
                seen += len(part)
        return re.compile(pattern)


def literal_parts(node: ast.expr) -> tuple[str | None, ...] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, ast.JoinedStr):
        return tuple(
            str(v.value) if isinstance(v, ast.Constant) else None for v in node.values
        )
    return None


def functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]


def assigned(function: ast.FunctionDef, name: str) -> list[ast.expr]:
    return [
        node.value
        for node in ast.walk(function)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    ]


def called_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Name):
            return node.func.id
        if isinstance(node.func, ast.Attribute):
            return node.func.attr
    return None


def messages_in(path: Path) -> tuple[list[Message], list[str]]:
    """The messages ``path`` builds, and the constructions it cannot read."""
    module = importlib.import_module(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
    )
    tree = ast.parse(path.read_text())
    found: list[Message] = []
    unreadable: list[str] = []

    def add(node: ast.expr, function: ast.FunctionDef, depth: int = 0) -> None:
        where = f"{path.name}:{node.lineno}"
        if ast.unparse(node) in PASS_THROUGH:
            return
        if (parts := literal_parts(node)) is not None:
            found.append(Message(where, parts))
        elif isinstance(node, ast.Name) and depth == 0:
            values = assigned(function, node.id)
            for value in values:
                add(value, function, depth + 1)
            if not values:
                unreadable.append(f"{where}: {ast.unparse(node)}")
        elif called_name(node) not in MESSAGE_FUNCTIONS:
            unreadable.append(f"{where}: {ast.unparse(node)}")

    for function in functions(tree):
        if function.name in MESSAGE_FUNCTIONS:
            for node in ast.walk(function):
                # What it returns or assigns (a message, or the start of one).
                if isinstance(node, (ast.Return, ast.Assign)) and node.value:
                    if literal_parts(node.value) is not None:
                        add(node.value, function)
                elif called_name(node) == "append":  # problems.append(…)
                    for arg in as_call(node).args:
                        if literal_parts(arg) is not None:
                            add(arg, function)
        for node in ast.walk(function):
            name = called_name(node)
            error = getattr(module, name, None) if name else None
            is_error = isinstance(error, type) and issubclass(error, ONE_LINE_ERRORS)
            if is_error and as_call(node).args:
                add(as_call(node).args[0], function)
            elif name == "__init__" and function.name == "__init__":
                owner = class_of(tree, function)
                if owner and issubclass(getattr(module, owner), ONE_LINE_ERRORS):
                    for arg in as_call(node).args:  # super().__init__("…")
                        add(arg, function)
    return list(dict.fromkeys(found)), unreadable  # a `msg` raised twice: once


def as_call(node: ast.AST) -> ast.Call:
    assert isinstance(node, ast.Call)
    return node


def class_of(tree: ast.Module, function: ast.FunctionDef) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and function in node.body:
            return node.name
    return None


def code_messages() -> list[Message]:
    messages: list[Message] = []
    unreadable: list[str] = []
    for path in sorted(PACKAGE.glob("*.py")):  # the sandbox is another program
        found, cannot = messages_in(path)
        messages += found
        unreadable += cannot
    assert unreadable == [], (
        "cannot read these messages: build them from a literal, or list their "
        "function in MESSAGE_FUNCTIONS"
    )
    # Wrappers of another message (`{exc}`, `--state {path} {problem}`) say little.
    return [m for m in messages if m.literal_length >= 10]


def troubleshooting_entries(*, warnings: bool = True) -> list[str]:
    """The messages in the first column of the table (WARNING rows: if asked)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]
    entries = []
    for line in section.splitlines():
        first_column = line.split(" | ", 1)[0]
        if line.startswith("| `") and (warnings or "(WARNING)" not in first_column):
            entries += re.findall(r"`([^`]+)`", first_column)
    return entries


def test_the_code_builds_the_messages_this_test_reads():
    # Guards the reader above: were it to find nothing, everything would pass.
    where = {m.where.split(":")[0] for m in code_messages()}
    assert {"auth.py", "cli.py", "inputs.py", "settings.py", "pagination.py"} <= where
    assert len(code_messages()) >= 30


def test_troubleshooting_lists_every_message_of_the_code():
    entries = troubleshooting_entries()
    missing = [
        f"{m.where}: {m.head().pattern}"
        for m in code_messages()
        if not any(m.head().search(entry) for entry in entries)
    ]
    assert missing == [], "add these messages to README's Troubleshooting"


def test_every_troubleshooting_entry_is_a_message_of_the_code():
    messages = code_messages()
    # A WARNING row may be a log line (`%s` formatting), which is not read here.
    stale = [
        entry
        for entry in troubleshooting_entries(warnings=False)
        if not entry.startswith(EXTERNAL)
        and not any(m.head().search(entry) for m in messages)
    ]
    assert stale == [], "README's Troubleshooting lists messages the code lacks"

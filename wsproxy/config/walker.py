"""The YAML walker that keeps positions: the context that collects issues,
the YAML front end (compose, never load), mappings read key by key, lists,
and the generic value parsers (string, integer, boolean, duration, size,
choice).  See the package docstring for the theory of operation."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from wsproxy.config.issues import ConfigIssue
from wsproxy.config.settings import _NAME_RE
from wsproxy.units import format_size, parse_duration, parse_size

_T = TypeVar("_T")

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"
_KINDS = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number",
    _BOOL: "a boolean",
    "tag:yaml.org,2002:timestamp": "a date",
}
# Only used for its int/bool resolution (0x10, 1_000, yes/no); stateless for those.
_CONSTRUCTOR = SafeConstructor()


@dataclass(slots=True)
class _Ctx:
    filename: str
    issues: list[ConfigIssue] = field(default_factory=list)

    def add(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        self.issues.append(ConfigIssue(self.filename, line, column, path, message))

    def add_at(self, line: int, column: int, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.filename, line, column, path, message))


# A parser reads one node at a path: the typed value, or None after recording
# at least one issue.
_Parser = Callable[[_Ctx, Node, str], _T | None]


def _compose(ctx: _Ctx, text: str) -> Node | None:
    """The node tree of *text*, or None (empty file, or an issue recorded)."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        ctx.add_at(line, column, "", f"yaml: {_yaml_message(exc)}")
    except ReaderError as exc:  # a character YAML does not allow, e.g. NUL
        position = int(exc.position)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        ctx.add_at(
            line, column, "", f"yaml: unacceptable character #x{exc.character:04x}: {exc.reason}"
        )
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above has a position
        ctx.add_at(1, 1, "", f"yaml: {exc}")
    except RecursionError:
        ctx.add_at(1, 1, "", "yaml: the document is nested too deeply")
    return None


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context is None or problem == exc.context:
        return problem
    if problem.startswith("but "):  # "expected a single document ... but found another document"
        return f"{exc.context} {problem}"
    where = ""
    if exc.context_mark is not None and exc.context_mark is not exc.problem_mark:
        where = f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
    return f"{problem} ({exc.context}{where})"


def _describe(node: Node) -> str:
    """'a list', 'an integer '8080'', 'an empty value' ... for messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "an empty value" if node.value == "" else f"null {node.value!r}"
    kind = _KINDS.get(node.tag, f"a value tagged {node.tag!r}")
    return f"{kind} {node.value!r}"


def _key_path(path: str, key: str) -> str:
    segment = key if _NAME_RE.fullmatch(key) else f"[{key!r}]"
    if not path:
        return segment
    return f"{path}{segment}" if segment.startswith("[") else f"{path}.{segment}"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _one_of(choices: Sequence[str]) -> str:
    quoted = [repr(choice) for choice in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


class _Map:
    """Reads one mapping node by key.

    Every key the schema asks for (``get``/``require``) becomes known;
    :meth:`finish` reports the rest as unknown.  Duplicate keys are reported
    at the second occurrence and the first one wins.  ``ok`` says whether
    anything under this mapping recorded an issue since it was opened.
    """

    def __init__(self, ctx: _Ctx, node: Node, path: str) -> None:
        self._ctx = ctx
        self._node = node
        self._path = path
        self._start = len(ctx.issues)
        self._known: list[str] = []
        self._entries: dict[str, tuple[Node, Node]] = {}
        self.valid = True
        if _is_null(node):
            return
        if not isinstance(node, MappingNode):
            ctx.add(node, path or "(top level)", f"expected a mapping, got {_describe(node)}")
            self.valid = False
            return
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                ctx.add(
                    key_node,
                    path or "(top level)",
                    "merge keys ('<<') are not supported; repeat the keys, "
                    "or reuse a whole mapping with an alias (*name)",
                )
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag == _NULL:
                ctx.add(
                    key_node, path or "(top level)", f"expected a key, got {_describe(key_node)}"
                )
                continue
            key = str(key_node.value)
            first = self._entries.get(key)
            if first is not None:
                mark = first[0].start_mark
                line = f" (first defined at line {mark.line + 1})" if mark is not None else ""
                ctx.add(key_node, _key_path(path, key), f"duplicate key{line}")
                continue
            self._entries[key] = (key_node, value_node)

    @property
    def ok(self) -> bool:
        return self.valid and len(self._ctx.issues) == self._start

    def node(self, key: str) -> Node | None:
        """The value node of *key*, when present."""
        entry = self._entries.get(key)
        return entry[1] if entry is not None else None

    def get(self, key: str, parse: _Parser[_T], default: _T | None) -> _T | None:
        """Parse *key* when present, else return *default*."""
        self._known.append(key)
        entry = self._entries.get(key)
        if not self.valid:
            return None
        if entry is None:
            return default
        return parse(self._ctx, entry[1], _key_path(self._path, key))

    def require(self, key: str, parse: _Parser[_T]) -> _T | None:
        """Parse *key*; its absence is an issue at this mapping."""
        self._known.append(key)
        entry = self._entries.get(key)
        if not self.valid:
            return None
        if entry is None:
            self._ctx.add(self._node, _key_path(self._path, key), "required key missing")
            return None
        return parse(self._ctx, entry[1], _key_path(self._path, key))

    def items(self) -> list[tuple[str, Node, Node]]:
        """All entries as (key, key node, value node), for mappings whose
        keys are names rather than settings; marks them all known."""
        self._known.extend(self._entries)
        return [(key, knode, vnode) for key, (knode, vnode) in self._entries.items()]

    def finish(self) -> None:
        for key, (key_node, _) in self._entries.items():
            if key in self._known:
                continue
            hint = _did_you_mean(key, self._known)
            if not hint and self._known:
                hint = f" (expected one of: {', '.join(self._known)})"
            self._ctx.add(key_node, _key_path(self._path, key), f"unknown key{hint}")


@dataclass(frozen=True, slots=True)
class _Item(Generic[_T]):
    """One list entry: where it is, and its value (None when invalid)."""

    node: Node | None
    path: str
    value: _T | None


def _items(
    ctx: _Ctx, node: Node, path: str, parse: _Parser[_T], *, min_items: int, what: str
) -> list[_Item[_T]] | None:
    """Parse every entry of a list node; None when *node* is not a list."""
    if _is_null(node):
        children: list[Node] = []
    elif isinstance(node, SequenceNode):
        children = list(node.value)
    else:
        ctx.add(node, path, f"expected a list, got {_describe(node)}")
        return None
    if len(children) < min_items:
        count = "one" if min_items == 1 else str(min_items)
        ctx.add(node, path, f"expected at least {count} {what}, got an empty list")
    items = []
    for index, child in enumerate(children):
        child_path = f"{path}[{index}]"
        items.append(_Item(child, child_path, parse(ctx, child, child_path)))
    return items


def _all(items: Iterable[_Item[_T]]) -> tuple[_T, ...] | None:
    values = []
    for item in items:
        if item.value is None:
            return None
        values.append(item.value)
    return tuple(values)


def _list(parse: _Parser[_T], *, what: str, min_items: int = 0) -> _Parser[tuple[_T, ...]]:
    def parse_list(ctx: _Ctx, node: Node, path: str) -> tuple[_T, ...] | None:
        items = _items(ctx, node, path, parse, min_items=min_items, what=what)
        return None if items is None else _all(items)

    return parse_list


def _string(ctx: _Ctx, node: Node, path: str) -> str | None:
    if isinstance(node, ScalarNode) and node.tag == _STR:
        return str(node.value)
    quote = (
        " (quote it to make it a string)"
        if isinstance(node, ScalarNode) and not _is_null(node)
        else ""
    )
    ctx.add(node, path, f"expected a string, got {_describe(node)}{quote}")
    return None


def _text(convert: Callable[[str], _T]) -> _Parser[_T]:
    """A string parser whose *convert* validates/normalizes, raising
    ``ValueError`` with the full message."""

    def parse(ctx: _Ctx, node: Node, path: str) -> _T | None:
        text = _string(ctx, node, path)
        if text is None:
            return None
        try:
            return convert(text)
        except ValueError as exc:
            ctx.add(node, path, str(exc))
            return None

    return parse


def _integer(minimum: int, maximum: int | None = None, *, what: str = "value") -> _Parser[int]:
    expected = (
        f"an integer from {minimum} to {maximum}"
        if maximum is not None
        else f"an integer of at least {minimum}"
    )

    def parse(ctx: _Ctx, node: Node, path: str) -> int | None:
        if not (isinstance(node, ScalarNode) and node.tag == _INT):
            ctx.add(node, path, f"expected {expected}, got {_describe(node)}")
            return None
        value = _CONSTRUCTOR.construct_yaml_int(node)
        if value < minimum or (maximum is not None and value > maximum):
            ctx.add(node, path, f"invalid {what} {node.value!r} (expected {expected})")
            return None
        return value

    return parse


def _boolean(ctx: _Ctx, node: Node, path: str) -> bool | None:
    """A real YAML boolean (true/false, yes/no, on/off); not 0/1, not a string."""
    if isinstance(node, ScalarNode) and node.tag == _BOOL:
        return _CONSTRUCTOR.construct_yaml_bool(node)
    ctx.add(node, path, f"expected true or false, got {_describe(node)}")
    return None


def _number_text(ctx: _Ctx, node: Node, path: str, what: str, example: str) -> str | None:
    """The source text of a scalar meant as a duration or size."""
    if isinstance(node, ScalarNode) and node.tag in (_STR, _INT, _FLOAT):
        return str(node.value)
    ctx.add(node, path, f"expected {what}, e.g. {example}, got {_describe(node)}")
    return None


def _duration(*, positive: bool) -> _Parser[float]:
    """Seconds, from ``10``, ``'250ms'``, ``'1.5s'``, ``'5m'``, ``'1h'``; never
    negative, and not zero when *positive*."""

    def parse(ctx: _Ctx, node: Node, path: str) -> float | None:
        text = _number_text(ctx, node, path, "a duration", "'10s'")
        if text is None:
            return None
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            ctx.add(node, path, str(exc))
            return None
        if positive and seconds == 0:
            ctx.add(node, path, f"invalid duration {text!r} (must be greater than 0)")
            return None
        return seconds

    return parse


def _size(*, minimum: int) -> _Parser[int]:
    """Bytes, from ``4096``, ``'64KiB'``, ``'1MB'``; at least *minimum*."""

    def parse(ctx: _Ctx, node: Node, path: str) -> int | None:
        text = _number_text(ctx, node, path, "a size", "'64KiB'")
        if text is None:
            return None
        try:
            size = parse_size(text)
        except ValueError as exc:
            ctx.add(node, path, str(exc))
            return None
        if size < minimum:
            ctx.add(node, path, f"invalid size {text!r} (must be at least {format_size(minimum)})")
            return None
        return size

    return parse


def _choice(choices: Mapping[str, _T]) -> _Parser[_T]:
    def parse(ctx: _Ctx, node: Node, path: str) -> _T | None:
        text = _string(ctx, node, path)
        if text is None:
            return None
        if text in choices:
            return choices[text]
        hint = _did_you_mean(text, choices)
        ctx.add(node, path, f"invalid value {text!r} (expected {_one_of(list(choices))}){hint}")
        return None

    return parse

"""Validating a report read from disk before ``gate``, ``show`` or ``compare`` trust it.

A report file is input like any other: it may be truncated, hand-edited, from a newer
robaudit, or hostile (deep nesting, a list where a number belongs, ANSI escapes in a
path). :func:`validate_report` checks it against ``report/schema.json`` (the subset of
JSON Schema that file uses, interpreted here so that jsonschema stays a test-only
dependency) and raises ``UsageError`` (exit 2) with "not a robaudit report: …".
:func:`sanitize` then replaces control characters in every string, so no field of a
report can reach a terminal as an escape sequence.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any, Iterator

from robaudit.errors import UsageError

#: Deepest nesting a report may have (robaudit writes at most ~8 levels).
MAX_DEPTH = 32

# C0 controls except \t and \n, DEL, C1 controls, and bidi overrides/isolates ("Trojan Source").
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def show_controls(text: str) -> str:
    """``text`` with each control character replaced by visible ``\\xNN`` / ``\\uNNNN`` text."""
    def visible(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return CONTROL.sub(visible, text)


def sanitize(value: Any) -> Any:
    """A copy of a JSON value with control characters in every string (keys too) made visible."""
    if isinstance(value, str):
        return show_controls(value)
    if isinstance(value, dict):
        return {show_controls(str(k)): sanitize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitize(v) for v in value]
    return value


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The report schema shipped with robaudit (``report/schema.json``)."""
    import importlib.resources

    return json.loads(importlib.resources.files("robaudit.report").joinpath("schema.json").read_text())


def validate_report(report: Any, source: str) -> None:
    """Raise UsageError("not a robaudit report: …") unless ``report`` fits the report schema.

    Args:
        report: the parsed JSON.
        source: the file name, for the message.
    """
    from robaudit.report import SCHEMA_VERSION

    def fail(detail: str) -> UsageError:
        return UsageError(f"not a robaudit report: {source}: {detail}")

    if not isinstance(report, dict):
        raise fail(f"expected a JSON object at the top level, found {_kind(report)}")
    depth = _depth(report)
    if depth > MAX_DEPTH:
        raise fail(f"nested {depth} levels deep (a report has at most {MAX_DEPTH})")
    if "schema_version" not in report:
        raise fail("no 'schema_version' key")
    version = report["schema_version"]
    if not _is_int(version):
        raise fail(f"schema_version: expected an integer, found {_kind(version)} {_clip(version)}")
    if version > SCHEMA_VERSION:
        raise UsageError(f"{source}: schema_version {version} is newer than this robaudit supports "
                         f"({SCHEMA_VERSION}); upgrade robaudit")
    for sch in (schema(), STRUCTURE):
        for where, problem in _errors(report, sch, "", sch):
            raise fail(f"{where or 'top level'}: {problem}")
    _check_metrics(report, fail)


#: Checks on top of schema.json for the fields gate/show/compare read directly (the
#: generated schema may leave them loose); applied only where a field is present.
_NUM = {"type": ["number", "null"]}
STRUCTURE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "complete": {"type": "boolean"},
        "command": {"type": "string"},
        "created": {"type": "string"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "tool": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        "model": {"type": "object", "properties": {
            "path": {"type": ["string", "null"]}, "format": {"type": ["string", "null"]},
            "num_classes": {"type": "integer", "minimum": 1},
            "input_shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "class_names": {"type": ["array", "null"], "items": {"type": "string"}}}},
        "data": {"type": ["object", "null"], "properties": {
            "name": {"type": "string"}, "split": {"type": "string"}, "n": {"type": "integer", "minimum": 0}}},
        "analyses": {"type": "object", "additionalProperties": {"type": "object"}},
        "timings": {"type": "object", "properties": {
            "total": _NUM, "analyses": {"type": "object", "additionalProperties": _NUM}}},
        "gate": {"type": "object", "properties": {
            "passed": {"type": "boolean"}, "checks": {"type": "array", "items": {"type": "object"}}}},
    },
}


def _check_metrics(report: dict[str, Any], fail: Any) -> None:
    """Every declared metric of every known analysis section must read as a number or null.

    This runs the same extraction gate/compare use, so a list where a number belongs (or
    a section missing what its metrics need) is refused here, not met as a TypeError later.
    """
    from robaudit import analyses
    from robaudit.errors import RobauditError

    for name, section in (report.get("analyses") or {}).items():
        try:
            analysis = analyses.get(name)
        except RobauditError:
            continue  # a section this version does not know: shown as is, never gated on
        metrics = getattr(analysis, "metrics", None)
        if metrics is None:
            continue
        try:
            declared = metrics(section)
        except Exception as exc:  # KeyError/TypeError/ValueError… from a malformed section
            raise fail(f"analyses.{name}: cannot read its metrics ({type(exc).__name__}: "
                       f"{_clip(str(exc), 120).strip(chr(39))})") from None
        for metric, value in declared.items():
            value = getattr(value, "value", value)
            if value is not None and not _is_number(value):
                raise fail(f"analyses.{name}: metric {metric}: expected a number, found {_kind(value)}")


# ------------------------------------------------------------------------- a JSON Schema subset

def _errors(value: Any, sch: dict[str, Any], where: str, root: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(location, problem) for each way ``value`` breaks ``sch``; stops at the first problem per node.

    Supports what schema.json uses: $ref (local), type, const, enum, required, properties,
    additionalProperties (schema), items, minItems, minimum, maximum, pattern.
    """
    if "$ref" in sch:
        ref = sch["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"schema.json: only local $ref is supported, found {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        yield from _errors(value, target, where, root)
        return
    if "type" in sch:
        types = sch["type"] if isinstance(sch["type"], list) else [sch["type"]]
        if not any(_has_type(value, t) for t in types):
            yield where, f"expected {' or '.join(types)}, found {_kind(value)} {_clip(value)}"
            return
    if "const" in sch and not _same(value, sch["const"]):
        yield where, f"expected {sch['const']!r}, found {_clip(value)}"
        return
    if "enum" in sch and not any(_same(value, e) for e in sch["enum"]):
        yield where, f"expected one of {', '.join(map(repr, sch['enum']))}, found {_clip(value)}"
        return
    if _is_number(value):
        if "minimum" in sch and not (value >= sch["minimum"]) and not _nan(value):
            yield where, f"expected >= {sch['minimum']}, found {value!r}"
        if "maximum" in sch and not (value <= sch["maximum"]) and not _nan(value):
            yield where, f"expected <= {sch['maximum']}, found {value!r}"
    if isinstance(value, str) and "pattern" in sch and re.search(sch["pattern"], value) is None:
        yield where, f"expected text matching {sch['pattern']}, found {_clip(value)}"
    if isinstance(value, dict):
        for key in sch.get("required", []):
            if key not in value:
                yield _join(where, key), "missing"
                return
        props = sch.get("properties", {})
        extra = sch.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                yield from _errors(item, sub, _join(where, key), root)
    if isinstance(value, list):
        if "minItems" in sch and len(value) < sch["minItems"]:
            yield where, f"expected at least {sch['minItems']} item(s), found {len(value)}"
        if "items" in sch:
            for i, item in enumerate(value):
                yield from _errors(item, sch["items"], f"{where}[{i}]", root)


def _has_type(value: Any, name: str) -> bool:
    return {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "number": _is_number,
        "integer": _is_int,
    }[name](value)


def _is_number(value: Any) -> bool:
    # NaN/Infinity literals are accepted by Python's json; they are numbers here so that
    # gate/compare can treat them as failures instead of refusing the whole file.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _depth(value: Any) -> int:
    """Nesting depth, computed without recursion (a hostile file may nest thousands of levels)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((v, d + 1) for v in item if isinstance(v, (dict, list)))
    return deepest


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _clip(value: Any, limit: int = 80) -> str:
    if isinstance(value, (dict, list)):
        return ""
    text = show_controls(repr(value))
    return text if len(text) <= limit else text[:limit] + "…"


__all__ = ["validate_report", "sanitize", "show_controls", "schema", "MAX_DEPTH"]

"""The JSON Schema of a report, generated from the code that writes it.

The top level is declared here once; each analysis section is derived from the
analysis' declaration: its ``required`` keys and, for per-sample analyses, the
fields of its ``Row`` dataclass. ``report/schema.json`` is this module's output,
committed so that other tools can read it; a test fails when the two differ.
Regenerate with ``python -m robaudit.report.schema --write``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from robaudit.report import SCHEMA_VERSION

NUMBER_OR_NULL = {"type": ["number", "null"]}
STATS = {"type": "object", "properties": {k: NUMBER_OR_NULL for k in ("mean", "median", "p95", "max")}}


def _type_of(annotation: Any) -> dict[str, Any]:
    """JSON Schema of a Row field annotation (int, float | None, list, ...)."""
    if isinstance(annotation, str):
        text = annotation.replace(" ", "")
        names = text.split("|")
    else:
        args = typing.get_args(annotation) or (annotation,)
        names = [getattr(a, "__name__", str(a)) for a in args]
    mapping = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "list": "array",
               "dict": "object", "None": "null", "NoneType": "null"}
    types = []
    for name in names:
        base = name.split("[")[0]
        if base in mapping and mapping[base] not in types:
            types.append(mapping[base])
    if "number" in types and "integer" in types:
        types.remove("integer")
    if not types:
        return {}
    return {"type": types[0] if len(types) == 1 else types}


def row_schema(row: type) -> dict[str, Any]:
    """Object schema of one per-sample row: every field typed; non-optional fields required."""
    props, required = {}, []
    for f in dataclasses.fields(row):
        schema = _type_of(f.type)
        props[f.name] = schema
        if "null" not in str(schema.get("type")):
            required.append(f.name)
    return {"type": "object", "required": required, "properties": props}


def section_schema(analysis: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object"}
    if analysis.required:
        out["required"] = list(analysis.required)
    props: dict[str, Any] = {"complete": {"type": "boolean"}}
    if analysis.row is not None:
        props["per_sample"] = {"type": "array", "items": row_schema(analysis.row)}
    out["properties"] = props
    return out


def build() -> dict[str, Any]:
    """The whole report schema (draft 2020-12 subset: type, required, properties, items, enum, const)."""
    from robaudit import analyses

    sections = {name: section_schema(analyses.get(name)) for name in analyses.available()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"robaudit-report-v{SCHEMA_VERSION}",
        "title": f"robaudit report, schema_version {SCHEMA_VERSION}",
        "type": "object",
        "required": ["schema_version", "tool", "environment", "model", "data", "analyses"],
        "properties": {
            "schema_version": {"const": SCHEMA_VERSION},
            "tool": {"type": "object", "required": ["name", "version"],
                     "properties": {"name": {"const": "robaudit"}, "version": {"type": "string"}}},
            "command": {"type": "string"},
            "profile": {"enum": ["quick", "standard", "full"]},
            "created": {"type": "string"},
            "complete": {"type": "boolean"},
            "environment": {"type": "object", "required": ["torch", "device", "seed", "dtype"],
                            "properties": {"torch": {"type": "string"}, "device": {"type": "string"},
                                           "seed": {"type": "integer"}, "dtype": {"enum": ["float32", "float64"]}}},
            "model": {"type": "object", "required": ["path", "sha256", "format", "num_classes", "input_shape"],
                      "properties": {"path": {"type": ["string", "null"]},
                                     "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
                                     "format": {"type": "string"},
                                     "num_classes": {"type": "integer", "minimum": 1},
                                     "input_shape": {"type": "array", "items": {"type": "integer", "minimum": 1},
                                                     "minItems": 1}}},
            "data": {"type": ["object", "null"], "required": ["name", "split", "n"],
                     "properties": {"name": {"type": "string"}, "split": {"type": "string"},
                                    "n": {"type": "integer", "minimum": 0}}},
            "analyses": {"type": "object", "properties": sections},
            "timings": {"type": "object"},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "gate": {"type": "object", "required": ["passed", "checks"],
                     "properties": {"passed": {"type": "boolean"},
                                    "checks": {"type": "array", "items": {
                                        "type": "object", "required": ["metric", "op", "threshold", "value", "passed"],
                                        "properties": {"metric": {"type": "string"}, "op": {"type": "string"},
                                                       "threshold": {"type": "number"}, "value": NUMBER_OR_NULL,
                                                       "passed": {"type": "boolean"}}}}}},
        },
        "$defs": {"stats": STATS},
    }


def dumps() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


SCHEMA_FILE = Path(__file__).with_name("schema.json")

if __name__ == "__main__":  # pragma: no cover
    if "--write" in sys.argv:
        SCHEMA_FILE.write_text(dumps())
    else:
        sys.stdout.write(dumps())

"""The committed report schema is generated from the code, and real reports satisfy it."""

from __future__ import annotations

import json

import pytest

from robaudit.cli.app import run as cli
from robaudit.report import schema


def test_committed_schema_is_the_generated_one():
    assert schema.SCHEMA_FILE.read_text() == schema.dumps(), \
        "regenerate with: python -m robaudit.report.schema --write"


@pytest.mark.parametrize("args", [
    ("norms", "--no-per-sample"),          # drifted in the hand-kept schema
    ("norms", "--method", "power", "--frobenius", "hutchinson"),
    ("spectrum", "--max-samples", "4", "--steps", "2"),
])
def test_reports_validate(args, tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    out = tmp_path / "r.json"
    assert cli([*args, "--limit", "8", "--quiet", "-o", str(out)]) == 0
    report = json.loads(out.read_text())
    jsonschema.validate(report, schema.build())


def test_row_fields_become_typed_properties():
    from robaudit.analyses.norms import Row

    s = schema.row_schema(Row)
    assert s["properties"]["index"] == {"type": "integer"}
    assert s["properties"]["spectral"] == {"type": ["number", "null"]}
    assert "index" in s["required"] and "spectral" not in s["required"]
    jsonschema = pytest.importorskip("jsonschema")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"index": "0", "label": 1, "pred": 1, "top_k": [], "iterations": 1, "converged": True}, s)

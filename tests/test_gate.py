"""The gate is a pure function; its boundaries are pinned by a table (as coverage.py does)."""

from __future__ import annotations

import math

import pytest

from robaudit.errors import UsageError
from robaudit.gate import (ABOVE, BELOW, MetricError, Threshold, evaluate, parse_threshold, passes,
                           thresholds_from)


@pytest.mark.parametrize(
    "value, kind, threshold, expected",
    [
        (1.0, ABOVE, 1.0, True),             # equal passes
        (1.0 + 1e-12, ABOVE, 1.0, False),    # just above fails
        (1.0 - 1e-12, ABOVE, 1.0, True),
        (0.0, ABOVE, 0.0, True),
        (-1.0, ABOVE, 0.0, True),
        (math.inf, ABOVE, 1e300, False),
        (0.5, BELOW, 0.5, True),             # equal passes
        (0.5 - 1e-12, BELOW, 0.5, False),
        (0.5 + 1e-12, BELOW, 0.5, True),
        (0.0, BELOW, 0.0, True),
        (-math.inf, BELOW, -1e300, False),
        (math.nan, ABOVE, 1.0, False),       # NaN never passes
        (math.nan, BELOW, 0.0, False),
        (None, ABOVE, 1.0, False),           # null (NaN in JSON) never passes
        (None, BELOW, 0.0, False),
        (3, ABOVE, 2.5, False),              # ints compare as numbers
        (2, BELOW, 2.0, True),
    ],
)
def test_passes_boundary_table(value, kind, threshold, expected):
    assert passes(value, kind, threshold) is expected


def _report(**analyses):
    return {"schema_version": 1, "analyses": analyses}


def test_evaluate_dotted_paths_and_missing_metric():
    report = _report(custom={"summary": {"x": 2.0, "nan": None}})
    result = evaluate(report, [Threshold("analyses.custom.summary.x", ABOVE, 2.0),
                               Threshold("analyses.custom.summary.x", BELOW, 2.5)])
    assert result["passed"] is False
    assert [c["passed"] for c in result["checks"]] == [True, False]
    assert result["checks"][1]["op"] == ">="
    nan = evaluate(report, [Threshold("analyses.custom.summary.nan", ABOVE, 1e9)])
    assert nan["passed"] is False and nan["checks"][0]["value"] is None
    with pytest.raises(MetricError, match="custom.summary.y.*did you mean 'analyses.custom.summary.x'"):
        evaluate(report, [Threshold("analyses.custom.summary.y", ABOVE, 1.0)])
    assert MetricError.exit_code == 2


def test_missing_metric_fails_before_any_check_is_judged():
    report = _report(custom={"x": 1.0})
    with pytest.raises(MetricError):
        evaluate(report, [Threshold("analyses.custom.x", ABOVE, 0.0), Threshold("nope", ABOVE, 0.0)])


def test_check_known_rejects_unknown_aliases_before_running(probe_analysis):
    from dataclasses import replace

    from robaudit.gate import check_known

    strict = replace(probe_analysis, metric_patterns=(r"probe\.(accuracy|top_logit)",))
    check_known([Threshold("probe.accuracy", BELOW, 0.5), Threshold("analyses.probe.anything", ABOVE, 1)], [strict])
    with pytest.raises(MetricError, match="probe.acuracy.*selected analyses \\(probe\\)"):
        check_known([Threshold("probe.acuracy", BELOW, 0.5)], [strict])
    check_known([Threshold("probe.whatever", BELOW, 0.5)], [probe_analysis])   # no patterns: lenient
    with pytest.raises(MetricError):
        check_known([Threshold("norms.spectral.max", ABOVE, 1)], [probe_analysis])


def test_empty_threshold_list_passes():
    assert evaluate(_report(), []) == {"passed": True, "checks": []}


@pytest.mark.parametrize("text, metric, value", [
    ("lipschitz_upper=500", "lipschitz_upper", 500.0),
    ("attacks.pgd@8/255.robust_accuracy=0.25", "attacks.pgd@8/255.robust_accuracy", 0.25),
    ("attacks.worst_case@8/255=1/4", "attacks.worst_case@8/255", 0.25),
    (" norms.spectral.p95 = 3e2", "norms.spectral.p95", 300.0),
])
def test_parse_threshold(text, metric, value):
    t = parse_threshold(text, ABOVE)
    assert (t.metric, t.value, t.op) == (metric, value, "<=")


@pytest.mark.parametrize("text", ["lipschitz_upper", "=3", "x=abc", "x=1/0", "x=nan"])
def test_parse_threshold_rejects(text):
    with pytest.raises(UsageError, match="--fail-above"):
        parse_threshold(text, ABOVE)


def test_thresholds_from_config_mapping():
    ts = thresholds_from({"fail_above": {"a": 1}, "fail_below": {"b": 0.5}})
    assert ts == [Threshold("a", ABOVE, 1.0), Threshold("b", BELOW, 0.5)]

"""The HTML report: one valid, self-contained file with every metric, table and plot (issue 11 §5)."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import pytest

from conftest import cli

VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source", "area", "base", "embed", "track"}


class _Checker(HTMLParser):
    """Collects text, images and links, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = self.doctype or decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.doctype, "no <!DOCTYPE html>"
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, f"unclosed: {checker.stack}"
    return checker


@pytest.fixture(scope="module")
def run_html(tmp_path_factory):
    """One quick audit written with -o and --html (norms, layers, attacks; the gate included)."""
    d = tmp_path_factory.mktemp("html")
    code = cli("audit", "--profile", "quick", "-a", "norms,layers,attacks", "-n", "16", "-q",
               "-o", str(d / "r.json"), "--html", str(d / "r.html"), "--fail-above", "lipschitz_upper=1e9")
    assert code == 0
    return d


def test_html_is_valid_and_holds_every_metric_table_and_plot(run_html):
    from robaudit import analyses
    from robaudit.numfmt import fmt
    from robaudit.report import metrics

    page = (run_html / "r.html").read_text(encoding="utf-8")
    report = json.loads((run_html / "r.json").read_text())
    checker = parse(page)
    text = " ".join(checker.text)
    for name, metric in metrics.declared(report).items():
        assert name in text, name
        assert fmt(metric.value) in text
    # every analysis: a section, its tables' headers, and an embedded PNG of its plot
    for name, section in report["analyses"].items():
        assert f'<h2 id="{name}">' in page
        assert any(img.get("alt") == f"{name} plot" for img in checker.images), name
    assert "operator norm" in text and "Singla" in text  # the layers table, all columns
    for img in checker.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert "gate" in text and "PASS" in text and "lipschitz_upper" in text
    # self-contained: nothing to fetch
    assert all(u.startswith(("data:", "#")) for u in checker.urls), checker.urls
    assert not re.search(r"https?://", page.replace("http://www.w3.org", ""))
    assert "<script" not in page


def test_show_html_writes_the_same_page(run_html, capsys):
    out = run_html / "shown.html"
    assert cli("show", str(run_html / "r.json"), "--html", str(out)) == 0
    from robaudit.report.html import to_html

    report = json.loads((run_html / "r.json").read_text())
    assert out.read_text(encoding="utf-8") == to_html(report)
    assert "HTML report written" in capsys.readouterr().err


def test_html_escapes_user_text_and_marks_incomplete(run_html):
    from robaudit.report.html import to_html

    report = json.loads((run_html / "r.json").read_text())
    report["model"]["path"] = "<script>alert(1)</script>.pt"
    report["warnings"] = ["a <b>bold</b> warning & more"]
    report["complete"] = False
    page = to_html(report, plots=False)
    parse(page)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; warning &amp; more" in page
    assert "INCOMPLETE" in page


def test_bad_html_path_fails_before_any_work(tmp_path, capsys, monkeypatch):
    from robaudit import engine

    monkeypatch.setattr(engine, "build_context", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert cli("norms", "--html", str(tmp_path / "missing" / "r.html")) == 2
    assert "--html" in capsys.readouterr().err

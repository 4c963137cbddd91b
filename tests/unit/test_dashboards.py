"""Static checks of the Grafana dashboards in deploy/grafana/dashboards.

Every PromQL query is parsed by a small PromQL parser below (functions, aggregations with
``by``/``without``, binary operators with ``on``/``ignoring``/``group_left``, range vectors,
subqueries, ``offset``/``@``) and checked against the metrics the code really exports: the
sample names and label names of ``genre.core.telemetry.create_metrics`` collected from a
fresh ``CollectorRegistry``. A renamed metric, a typo in a dashboard, or a ``by (label)`` the
metric does not carry fails here instead of showing "No data" in Grafana.

When the optional ``promql-parser`` package (the Rust PromQL parser) is installed, every
query is also parsed by it and the metric names both parsers find are compared.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from genre.core.telemetry import create_metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO / "deploy" / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
EXPECTED_DASHBOARDS = {"genre-pipeline", "genre-models", "genre-recommendations", "genre-llm"}
#: Metric families of the generative step, charted on the LLM enrichment dashboard.
LLM_FAMILIES = re.compile(r"genre_(llm_\w+|items_enriched|profiles_generated|enrichment_pending)")

#: Labels Prometheus attaches to every scraped series.
SCRAPE_LABELS = frozenset({"instance", "job"})
#: Series Prometheus itself creates per scrape target (not exported by GENRE).
SCRAPE_SERIES = {"up": SCRAPE_LABELS}
#: Every scraped worker, from its first scrape: a role that has not consumed a record
#: yet (an idle encoder) exports no genre_events_in_total sample to list it by.
INSTANCE_QUERY = 'label_values(up{job=~"genre-stream|genre-item-encoder|genre-scorer"}, instance)'
#: Grafana unit ids the dashboards may use.
UNITS = {"ms", "s", "ops", "short", "percentunit"}
PANEL_TYPES = {"timeseries", "stat", "table", "heatmap"}
DATASOURCE_REF = "${datasource}"

# --------------------------------------------------------------------------- exported metrics


def exported_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, for every series ``create_metrics`` can export.

    Labelled metrics emit no samples until a child exists, so one child per metric is
    created with placeholder label values before collecting.
    """
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    for f in dataclasses.fields(metrics):
        metric = getattr(metrics, f.name)
        if metric._labelnames:
            metric.labels(*("x" for _ in metric._labelnames))
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in series.items()}


EXPORTED = exported_series()


def series_labels(name: str) -> frozenset[str] | None:
    """Label names a query can see on ``name`` after scraping; None when not a known series."""
    if name in SCRAPE_SERIES:
        return SCRAPE_SERIES[name]
    if name in EXPORTED:
        return EXPORTED[name] | SCRAPE_LABELS
    return None


# --------------------------------------------------------------------------- PromQL parser

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year",
}  # fmt: skip
#: Functions whose result is a scalar or carries no labels.
LABELLESS_FUNCTIONS = {"scalar", "time", "vector", "pi"}
SET_OPERATORS = {"and", "or", "unless"}
ARITH_OPERATORS = {"+", "-", "*", "/", "%", "^", "==", "!=", ">", "<", ">=", "<=", "atan2"}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
} | SET_OPERATORS  # fmt: skip
MATCH_OPS = {"=", "!=", "=~", "!~"}

#: Grafana's built-in interval variables, replaced by a duration before parsing.
GRAFANA_INTERVAL = re.compile(r"\$\{?(?:__rate_interval|__interval|__range)\b\}?")
TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<dur>(?:\d+(?:ms|[smhdwy]))+)(?![A-Za-z0-9_])
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[=<>+\-*/%^@])
  | (?P<punct>[(){}\[\],:])
    """,
    re.VERBOSE,
)
CLOSERS = {"(": ")", "[": "]", "{": "}"}


class PromQLError(ValueError):
    """The query is not valid PromQL (as far as this parser knows)."""


@dataclass(frozen=True)
class Tok:
    kind: str  # str, dur, num, ident, op, punct, eof
    text: str
    pos: int


def tokenize(expr: str) -> list[Tok]:
    expr = GRAFANA_INTERVAL.sub("1m", expr)
    if not expr.strip():
        raise PromQLError("empty expression")
    toks: list[Tok] = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        if m.lastgroup != "ws":
            toks.append(Tok(m.lastgroup or "", m.group(), pos))
        pos = m.end()
    # Balanced (), [], {} outside string literals, properly nested.
    stack: list[Tok] = []
    for t in toks:
        if t.kind != "punct":
            continue
        if t.text in CLOSERS:
            stack.append(t)
        elif t.text in CLOSERS.values() and (not stack or CLOSERS[stack.pop().text] != t.text):
            raise PromQLError(f"unbalanced {t.text!r} at {t.pos} in {expr!r}")
    if stack:
        raise PromQLError(f"unclosed {stack[-1].text!r} at {stack[-1].pos} in {expr!r}")
    toks.append(Tok("eof", "", len(expr)))
    return toks


@dataclass
class Node:
    def children(self) -> list[Node]:
        return []

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children():
            yield from child.walk()


@dataclass
class Literal(Node):
    value: str


@dataclass
class Selector(Node):
    name: str | None
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class Wrapped(Node):
    """Parentheses, unary minus/plus, range vectors, subqueries, offset and @ modifiers."""

    kind: str
    expr: Node

    def children(self) -> list[Node]:
        return [self.expr]


@dataclass
class Call(Node):
    func: str
    args: list[Node]

    def children(self) -> list[Node]:
        return list(self.args)


@dataclass
class Aggregate(Node):
    op: str
    grouping: tuple[str, tuple[str, ...]] | None
    args: list[Node]

    def children(self) -> list[Node]:
        return list(self.args)


@dataclass
class Binary(Node):
    op: str
    lhs: Node
    rhs: Node
    matching: tuple[str, tuple[str, ...]] | None = None
    group: tuple[str, tuple[str, ...]] | None = None

    def children(self) -> list[Node]:
        return [self.lhs, self.rhs]


class Parser:
    """Recursive descent over the PromQL grammar; operator precedence is not modelled
    (binary chains are read left to right), which is enough to validate and inspect."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.toks = tokenize(expr)
        self.i = 0

    def peek(self, offset: int = 0) -> Tok:
        return self.toks[min(self.i + offset, len(self.toks) - 1)]

    def next(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, text: str, kind: str | None = None) -> bool:
        tok = self.peek()
        return tok.text == text and (kind is None or tok.kind == kind)

    def expect(self, text: str) -> Tok:
        tok = self.next()
        if tok.text != text:
            raise self.error(tok, f"expected {text!r}")
        return tok

    def error(self, tok: Tok, msg: str) -> PromQLError:
        found = tok.text or "end of query"
        return PromQLError(f"{msg}, found {found!r} at {tok.pos} in {self.expr!r}")

    def parse(self) -> Node:
        node = self.expression()
        if self.peek().kind != "eof":
            raise self.error(self.peek(), "expected end of query")
        return node

    def is_binop(self) -> bool:
        tok = self.peek()
        if tok.kind == "op":
            return tok.text in ARITH_OPERATORS
        return tok.kind == "ident" and tok.text in SET_OPERATORS | {"atan2"}

    def expression(self) -> Node:
        node = self.unary()
        while self.is_binop():
            op = self.next().text
            if self.at("bool", "ident"):
                self.next()
            matching = group = None
            if self.peek().kind == "ident" and self.peek().text in {"on", "ignoring"}:
                matching = (self.next().text, self.label_list())
                if self.peek().kind == "ident" and self.peek().text in {
                    "group_left",
                    "group_right",
                }:
                    kind = self.next().text
                    group = (kind, self.label_list() if self.at("(") else ())
            node = Binary(op, node, self.unary(), matching, group)
        return node

    def unary(self) -> Node:
        if self.peek().kind == "op" and self.peek().text in {"+", "-"}:
            return Wrapped("unary" + self.next().text, self.unary())
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while True:
            if self.at("["):
                self.next()
                self.duration()
                if self.at(":"):
                    self.next()
                    if not self.at("]"):
                        self.duration()
                    node = Wrapped("subquery", node)
                else:
                    if not isinstance(node, Selector):
                        raise self.error(self.peek(), "range only allowed on a vector selector")
                    node = Wrapped("range", node)
                self.expect("]")
            elif self.at("offset", "ident"):
                self.next()
                if self.at("-"):
                    self.next()
                self.duration()
                node = Wrapped("offset", node)
            elif self.at("@"):
                self.next()
                tok = self.next()
                if tok.kind == "ident" and tok.text in {"start", "end"}:
                    self.expect("(")
                    self.expect(")")
                elif tok.kind != "num":
                    raise self.error(tok, "expected a timestamp after @")
                node = Wrapped("at", node)
            else:
                return node

    def duration(self) -> None:
        tok = self.next()
        if tok.kind != "dur":
            raise self.error(tok, "expected a duration")

    def primary(self) -> Node:
        tok = self.next()
        if tok.kind in {"num", "str"}:
            return Literal(tok.text)
        if tok.text == "(":
            node = self.expression()
            self.expect(")")
            return Wrapped("paren", node)
        if tok.text == "{":
            return Selector(None, self.matchers())
        if tok.kind != "ident":
            raise self.error(tok, "expected an expression")
        name = tok.text
        if name in AGGREGATIONS and (self.at("(") or self.peek().text in {"by", "without"}):
            grouping = None
            if self.peek().text in {"by", "without"}:
                grouping = (self.next().text, self.label_list())
            args = self.arguments()
            if self.peek().text in {"by", "without"}:
                if grouping is not None:
                    raise self.error(self.peek(), "grouping given twice")
                grouping = (self.next().text, self.label_list())
            return Aggregate(name, grouping, args)
        if self.at("("):
            if name not in FUNCTIONS:
                raise self.error(tok, f"unknown function {name!r}")
            return Call(name, self.arguments())
        if name.lower() in {"inf", "nan"}:
            return Literal(name)
        if name in KEYWORDS:
            raise self.error(tok, "keyword where an expression belongs")
        return Selector(name, self.matchers() if self.at("{") and self.next() else [])

    def arguments(self) -> list[Node]:
        self.expect("(")
        args: list[Node] = []
        if self.at(")"):
            self.next()
            return args
        args.append(self.expression())
        while self.at(","):
            self.next()
            args.append(self.expression())
        self.expect(")")
        return args

    def label_list(self) -> tuple[str, ...]:
        self.expect("(")
        labels: list[str] = []
        while not self.at(")"):
            tok = self.next()
            if tok.kind != "ident":
                raise self.error(tok, "expected a label name")
            labels.append(tok.text)
            if not self.at(")"):
                self.expect(",")
        self.expect(")")
        return tuple(labels)

    def matchers(self) -> list[tuple[str, str, str]]:
        """After ``{``: ``label op "value"`` pairs up to ``}``."""
        out: list[tuple[str, str, str]] = []
        while not self.at("}"):
            label, op, value = self.next(), self.next(), self.next()
            if label.kind != "ident":
                raise self.error(label, "expected a label name")
            if op.text not in MATCH_OPS:
                raise self.error(op, "expected a label matcher operator")
            if value.kind != "str":
                raise self.error(value, "expected a quoted label value")
            out.append((label.text, op.text, value.text[1:-1]))
            if not self.at("}"):
                self.expect(",")
        self.expect("}")
        return out


def parse_promql(expr: str) -> Node:
    return Parser(expr).parse()


# --------------------------------------------------------------------------- semantic checks


def output_labels(node: Node) -> frozenset[str] | None:
    """Labels the result of ``node`` can carry; None for scalars/strings or unknown series."""
    if isinstance(node, Literal):
        return None
    if isinstance(node, Selector):
        return series_labels(node.name) if node.name else None
    if isinstance(node, Wrapped):
        return output_labels(node.expr)
    if isinstance(node, Aggregate):
        inner = output_labels(node.args[-1]) if node.args else None
        extra = frozenset()
        if node.op == "count_values" and node.args and isinstance(node.args[0], Literal):
            extra = frozenset({node.args[0].value.strip("\"'`")})
        if node.grouping is None:
            return extra
        kind, labels = node.grouping
        if kind == "by":
            return frozenset(labels) | extra
        return None if inner is None else (inner - set(labels)) | extra
    if isinstance(node, Call):
        if node.func in LABELLESS_FUNCTIONS:
            return None if node.func != "vector" else frozenset()
        vectors = [a for a in node.args if not isinstance(a, Literal)]
        inner = output_labels(vectors[-1] if node.func == "histogram_quantile" else vectors[0])
        if inner is None:
            return None
        if node.func.startswith("histogram_"):
            return inner - {"le"}
        if node.func in {"label_replace", "label_join"} and isinstance(node.args[1], Literal):
            return inner | {node.args[1].value.strip("\"'`")}
        return inner
    if isinstance(node, Binary):
        lhs, rhs = output_labels(node.lhs), output_labels(node.rhs)
        if node.group and node.group[0] == "group_right":
            lhs, rhs = rhs, lhs
        if lhs is None:
            return rhs
        if node.group:
            return lhs | set(node.group[1])
        if node.op == "or" and rhs is not None:
            return lhs | rhs
        return lhs
    raise TypeError(node)


def selectors(node: Node) -> list[Selector]:
    return [n for n in node.walk() if isinstance(n, Selector)]


def promql_problems(expr: str) -> list[str]:
    """Everything wrong with one dashboard query; empty when it is fine."""
    try:
        tree = parse_promql(expr)
    except PromQLError as err:
        return [f"syntax: {err}"]
    problems: list[str] = []
    for sel in selectors(tree):
        if sel.name is None:
            problems.append(f"selector without a metric name in {expr!r}")
            continue
        labels = series_labels(sel.name)
        if labels is None:
            problems.append(f"unknown metric {sel.name!r} in {expr!r}")
            continue
        for label, _, _ in sel.matchers:
            if label not in labels:
                problems.append(f"{sel.name} has no label {label!r} (matcher) in {expr!r}")
    for node in tree.walk():
        if isinstance(node, Aggregate) and node.grouping and node.args:
            available = output_labels(node.args[-1])
            for label in node.grouping[1]:
                if available is not None and label not in available:
                    problems.append(
                        f"{node.op} {node.grouping[0]} ({label}): label not on the aggregated "
                        f"series (has {sorted(available)}) in {expr!r}"
                    )
        if isinstance(node, Binary):
            sides = [output_labels(node.lhs), output_labels(node.rhs)]
            both = frozenset().union(*(s for s in sides if s is not None))
            used = [*(node.matching[1] if node.matching else ())]
            used += node.group[1] if node.group else ()
            for label in used:
                if label not in both:
                    problems.append(f"vector matching on unknown label {label!r} in {expr!r}")
    # Belt and braces, independent of the parser: every genre_ token outside string literals.
    bare = TOKEN.sub(lambda m: '""' if m.lastgroup == "str" else m.group(), expr)
    for name in re.findall(r"(?<![A-Za-z0-9_:])(genre_[A-Za-z0-9_:]*)", bare):
        if name not in EXPORTED:
            problems.append(f"unknown metric token {name!r} in {expr!r}")
    return sorted(set(problems))


# --------------------------------------------------------------------------- dashboards


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves excluded."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_problems(dashboard: dict[str, Any]) -> list[str]:
    """Structural problems of one dashboard (queries are checked by ``promql_problems``)."""
    problems: list[str] = []
    for key, want in (("schemaVersion", 39), ("refresh", "10s"), ("tags", ["genre"])):
        if dashboard.get(key) != want:
            problems.append(f"{key} is {dashboard.get(key)!r}, want {want!r}")
    if dashboard.get("time") != {"from": "now-30m", "to": "now"}:
        problems.append(f"time range is {dashboard.get('time')!r}")
    if not dashboard.get("uid") or not dashboard.get("title", "").startswith("GENRE / "):
        problems.append("uid and a 'GENRE / …' title are required")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("missing $datasource variable of type datasource (prometheus)")
    inst = variables.get("instance", {})
    query = inst.get("query", {})
    query = query.get("query") if isinstance(query, dict) else query
    if inst.get("type") != "query" or query != INSTANCE_QUERY:
        problems.append(f"missing $instance variable from {INSTANCE_QUERY}")
    if (inst.get("datasource") or {}).get("uid") != DATASOURCE_REF:
        problems.append("$instance variable must query ${datasource}")
    ids: set[int] = set()
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        title = panel.get("title") or f"panel id {panel.get('id')}"
        if not panel.get("title"):
            problems.append(f"{title}: no title")
        if len(panel.get("description") or "") < 40:
            problems.append(f"{title}: needs a description of what it shows and what healthy is")
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{title}: panel type {panel.get('type')!r}")
        if panel.get("id") in ids:
            problems.append(f"{title}: duplicate panel id {panel.get('id')}")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos") or {}
        if not all(isinstance(grid.get(k), int) for k in "xywh"):
            problems.append(f"{title}: gridPos needs integer x, y, w, h")
        elif grid["x"] < 0 or grid["w"] < 1 or grid["h"] < 1 or grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: gridPos {grid} outside the 24-column grid")
        else:
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    other = cells.setdefault((x, y), title)
                    if other != title and f"{title}: overlaps {other!r}" not in problems:
                        problems.append(f"{title}: overlaps {other!r}")
        if (panel.get("datasource") or {}).get("uid") != DATASOURCE_REF:
            problems.append(f"{title}: panel datasource must be {DATASOURCE_REF}")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in UNITS:
            problems.append(f"{title}: unit {unit!r} not one of {sorted(UNITS)}")
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{title}: no targets")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            problems.append(f"{title}: duplicate refIds {ref_ids}")
        for target in targets:
            if (target.get("datasource") or {}).get("uid") != DATASOURCE_REF:
                problems.append(f"{title}: target datasource must be {DATASOURCE_REF}")
            if not (target.get("expr") or "").strip():
                problems.append(f"{title}: empty expr")
            if not target.get("legendFormat"):
                problems.append(f"{title}: target {target.get('refId')} has no legendFormat")
    return problems


def all_targets() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every query of every dashboard."""
    out = []
    for path in DASHBOARD_FILES:
        for panel in panels(load(path)):
            for target in panel.get("targets", []):
                out.append((path.name, panel.get("title", ""), target.get("expr", "")))
    return out


TARGETS = all_targets()


# --------------------------------------------------------------------------- tests


def test_expected_dashboards_exist() -> None:
    assert {p.stem for p in DASHBOARD_FILES} == EXPECTED_DASHBOARDS
    readme = (DASHBOARDS_DIR / "README.md").read_text()
    for path in DASHBOARD_FILES:
        assert path.name in readme, f"{path.name} not listed in the dashboards README"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dashboard = load(path)
    assert dashboard_problems(dashboard) == []
    assert dashboard["uid"] == path.stem


def test_dashboard_uids_and_titles_unique() -> None:
    dashboards = [load(p) for p in DASHBOARD_FILES]
    uids = [d["uid"] for d in dashboards]
    titles = [d["title"] for d in dashboards]
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles


@pytest.mark.parametrize(
    ("dashboard", "panel", "expr"),
    TARGETS,
    ids=[f"{d}:{p}:{i}" for i, (d, p, _) in enumerate(TARGETS)],
)
def test_query_uses_exported_metrics_and_labels(dashboard: str, panel: str, expr: str) -> None:
    assert promql_problems(expr) == []


#: Ratios whose two halves come from different roles (hits from the scorers, clicks
#: from the stream workers): a subset of instances would divide unrelated counts.
FLEET_WIDE_PANELS = {("genre-recommendations.json", "Online hit rate")}


@pytest.mark.parametrize(
    ("dashboard", "panel", "expr"),
    TARGETS,
    ids=[f"{d}:{p}:{i}" for i, (d, p, _) in enumerate(TARGETS)],
)
def test_query_filters_on_instance_variable(dashboard: str, panel: str, expr: str) -> None:
    if (dashboard, panel) in FLEET_WIDE_PANELS:
        assert "$instance" not in expr, f"{panel!r} is fleet-wide; it must not filter"
        return
    for sel in selectors(parse_promql(expr)):
        assert ("instance", "=~", "$instance") in sel.matchers, (
            f"{sel.name} in {panel!r} does not honour the $instance variable"
        )


def test_every_exported_metric_family_is_on_a_dashboard() -> None:
    """Not required for correctness, but a metric nobody charts is usually an oversight."""
    used = {sel.name for _, _, expr in TARGETS for sel in selectors(parse_promql(expr))}
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in EXPORTED}
    charted = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used if n}
    assert families - charted == set()


#: Where the code names the agents it times (``genre_agent_batch_seconds{agent}``) and
#: the stages of ``genre_batch_size{stage}``: literal label values in these calls.
AGENT_LABEL = re.compile(
    r"(?:agent_batch_seconds\.labels|batch_size\.labels|measured_batch)\(\s*\"([\w-]+)\""
)


def agents_in_code() -> set[str]:
    found: set[str] = set()
    for folder in ("streams", "workers"):
        for path in (REPO / folder).glob("*.py"):
            found.update(AGENT_LABEL.findall(path.read_text()))
    return found


def test_batch_panels_name_the_agents_the_code_reports() -> None:
    """Panels that list the agents or stages by name list the ones the code reports now
    (the rebuild merged ingest and user-state into one fold agent)."""
    agents = agents_in_code()
    assert {"fold", "graph", "scorer", "item-encoder"} <= agents
    listed = 0
    for path in DASHBOARD_FILES:
        for panel in panels(load(path)):
            exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
            if "genre_agent_batch_seconds" not in exprs and "genre_batch_size" not in exprs:
                continue
            named = re.search(r"\((?:[\w-]+, )+[\w-]+\)", panel.get("description", ""))
            if named is None:
                continue
            listed += 1
            names = set(named.group(0).strip("()").split(", "))
            assert names == agents, f"{path.name}: {panel['title']}: {sorted(names)}"
    assert listed >= 2


def test_hop_panel_names_every_hop() -> None:
    """The hop panel explains every hop a list's latency is split into."""
    from genre.streams.score_context import ScoreContext
    from genre.workers.scorer import hops

    ctx = ScoreContext("u", "e", 0.0, 0.0, (), (), 0, None)
    reported = {*hops(ctx, 0.0, 0.0), "publish"}  # publish: timed when the list is sent
    pipeline = load(DASHBOARDS_DIR / "genre-pipeline.json")
    (panel,) = [
        p
        for p in panels(pipeline)
        if any("genre_hop_ms" in t.get("expr", "") for t in p.get("targets", []))
    ]
    for hop in reported:
        assert re.search(rf"\b{hop}\b", panel["description"]), hop
    assert "by (le, hop)" in panel["targets"][0]["expr"]


def test_readme_lists_every_panel() -> None:
    readme = (DASHBOARDS_DIR / "README.md").read_text()
    for path in DASHBOARD_FILES:
        section = readme.split(f"`{path.name}`", 1)[1].split("\n## ", 1)[0]
        for panel in panels(load(path)):
            assert f"| {panel['title']} |" in section, f"{path.name}: {panel['title']}"


def test_operations_metrics_table_lists_every_exported_metric() -> None:
    """The "Metrics" table in docs/operations.md names every metric family the code exports,
    and none it no longer does."""
    text = (REPO / "docs" / "operations.md").read_text().split("\n## Metrics\n", 1)[1]
    text = text.split("\n## ", 1)[0]
    listed = {
        re.sub(r"_total$", "", m.group(1))
        for m in re.finditer(r"^\| `(genre_\w+)(?:\{[^}]*\})?` \|", text, re.MULTILINE)
    }
    families = {
        re.sub(r"_(total|bucket|sum|count|created)$", "", n)
        for n in EXPORTED
        if n.startswith("genre_")
    }
    assert families - listed == set(), "exported, not in docs/operations.md"
    assert listed - families == set(), "in docs/operations.md, not exported"


def test_llm_dashboard_charts_every_llm_metric() -> None:
    """Every exported LLM / enrichment / profile family is on GENRE / LLM enrichment."""
    llm = load(DASHBOARDS_DIR / "genre-llm.json")
    used = {
        sel.name
        for panel in panels(llm)
        for target in panel.get("targets", [])
        for sel in selectors(parse_promql(target["expr"]))
    }
    charted = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used if n}
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in EXPORTED}
    wanted = {f for f in families if LLM_FAMILIES.fullmatch(f)}
    assert {"genre_llm_calls", "genre_llm_seconds", "genre_llm_circuit_open"} <= wanted
    assert wanted - charted == set()
    assert llm["title"] == "GENRE / LLM enrichment"


def test_exported_series_shape() -> None:
    """The exported set is built the way the checks assume (guards the helper itself)."""
    assert {"genre_events_in_total", "genre_events_in_created"} <= EXPORTED.keys()
    assert "genre_events_in" not in EXPORTED
    assert {
        "genre_click_to_recommendation_ms_bucket",
        "genre_click_to_recommendation_ms_sum",
        "genre_click_to_recommendation_ms_count",
    } <= EXPORTED.keys()
    assert "genre_click_to_recommendation_ms" not in EXPORTED
    assert EXPORTED["genre_consumer_lag"] == {"topic", "partition"}
    assert EXPORTED["genre_inference_seconds_bucket"] == {"model", "provider", "le"}


# --------------------------------------------------------------------------- the checker rejects


@pytest.mark.parametrize(
    "expr",
    [
        'histogram_quantile(0.95, sum by (le, model, provider) (rate(genre_inference_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',  # noqa: E501
        "sum by (source) (rate(genre_candidates_total[5m])) / scalar(sum(rate(genre_candidates_total[5m])))",  # noqa: E501
        'up{job=~"genre-stream|genre-item-encoder|genre-scorer"} == 0',
        "max by (topic, partition) (genre_consumer_lag) > bool 1000",
        "sum without (instance) (genre_users_tracked)",
        "rate(genre_events_in_total[5m]) / ignoring(topic) group_left sum(rate(genre_events_in_total[5m]))",  # noqa: E501
        "max_over_time(genre_consumer_lag[10m:30s]) offset 1m",
        'label_replace(genre_model_info, "m", "$1", "model", "(.*)")',
        "-sum(genre_users_tracked) + 1e3 * 2",
    ],
)
def test_checker_accepts_valid_queries(expr: str) -> None:
    assert promql_problems(expr) == []


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ("rate(genre_evnts_in_total[1m])", "unknown metric 'genre_evnts_in_total'"),
        ("genre_click_to_recommendation_ms", "unknown metric"),  # a histogram has no bare series
        ("rate(genre_events_in[1m])", "unknown metric"),  # a counter is exported as _total
        ("up_genre", "unknown metric"),
        ("sum by (source) (rate(genre_events_in_total[1m]))", "label not on the aggregated"),
        ("sum by (topic) (sum by (reason) (rate(genre_dlq_records_total[1m])))", "label not on"),
        ('genre_events_in_total{reason="schema"}', "has no label 'reason'"),
        ('genre_users_tracked{topic="x"}', "has no label 'topic'"),
        ("sum by (le) (rate(genre_events_in_total[1m]))", "label not on the aggregated"),
        ("sum(rate(genre_events_in_total[1m])", "syntax: unclosed"),
        ("sum(rate(genre_events_in_total[1m))", "syntax: unbalanced"),
        ('rate(genre_events_in_total{topic="a"[1m]})', "syntax"),
        ("", "syntax: empty"),
        ("   ", "syntax: empty"),
        ("rat(genre_events_in_total[1m])", "unknown function 'rat'"),
        ("sum(genre_events_in_total) by", "syntax"),
        ("rate(sum(genre_events_in_total)[1m])", "range only allowed"),
        ("genre_events_in_total{topic=}", "syntax"),
        ("genre_events_in_total $instance", "syntax"),
        ('{topic="clicks"}', "without a metric name"),
        ("a / on(topic) genre_users_tracked", "unknown metric 'a'"),
    ],
)
def test_checker_rejects(expr: str, complaint: str) -> None:
    problems = promql_problems(expr)
    assert any(complaint in p for p in problems), problems


def test_checker_rejects_broken_dashboard() -> None:
    dashboard = load(DASHBOARD_FILES[0])
    panel = next(panels(dashboard))
    panel["description"] = ""
    panel["datasource"] = {"type": "prometheus", "uid": "prometheus"}
    del panel["gridPos"]
    panel["targets"][0]["legendFormat"] = ""
    dashboard["templating"]["list"] = []
    dashboard["panels"].append({**dashboard["panels"][1], "id": 999, "title": "copy"})
    problems = "\n".join(dashboard_problems(dashboard))
    complaints = (
        "description",
        "panel datasource",
        "gridPos",
        "legendFormat",
        "$datasource",
        "$instance",
        "copy: overlaps",
    )
    for complaint in complaints:
        assert complaint in problems, problems


# --------------------------------------------------------------------------- optional real parser


def test_promql_parser_agrees() -> None:
    """Cross-check with the Rust PromQL parser (``pip install promql-parser``) when present."""
    promql_parser = pytest.importorskip("promql_parser")

    def names(node: Any) -> Iterator[str]:
        if isinstance(node, promql_parser.VectorSelector):
            yield node.name
        elif isinstance(node, promql_parser.MatrixSelector):
            yield node.vector_selector.name
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if child is not None:
                yield from names(child)
        for arg in getattr(node, "args", None) or []:
            yield from names(arg)

    for dashboard, panel, expr in TARGETS:
        promql = GRAFANA_INTERVAL.sub("1m", expr)
        tree = promql_parser.parse(promql)  # raises on a syntax error
        ours = {sel.name for sel in selectors(parse_promql(expr))}
        assert set(names(tree)) == ours, f"{dashboard}: {panel}: {expr}"

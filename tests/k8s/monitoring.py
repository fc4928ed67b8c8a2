"""The monitoring component's queries (k8s/components/monitoring), and the metric and label names in them.

Read from the component's files, not from a render, so the end-to-end test that
checks the names against a live scrape needs no kustomize.

The names come out of PromQL through a small tokenizer rather than a parser;
it is enough for the expressions written here and fails towards reporting
too much, never too little:

1. Grafana variables (`$namespace`, `${datasource}`, `$__rate_interval`) are
   dropped, and string literals emptied (label values and regexes hold no names).
2. Each `{...}` label matcher list gives the label names before its operators,
   and goes. So do `[...]` ranges and subquery steps.
3. Each `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` `(...)` list
   gives label names, and goes.
4. What is left is function names (an identifier followed by `(`), keywords,
   numbers and durations, and metric names: every other identifier.

Not handled (none is used here): selectors by `{__name__=...}` alone, and
`@` modifiers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "k8s" / "components" / "monitoring"
DASHBOARD = COMPONENT / "dashboards" / "rag-platform.json"
RULES = COMPONENT / "prometheus-rules.yaml"
POD_MONITORS = COMPONENT / "pod-monitors.yaml"

# Labels Prometheus gives every series of a PodMonitor's target, besides the
# pod labels listed in its podTargetLabels.
TARGET_LABELS = frozenset({"namespace", "pod", "container", "job", "instance", "endpoint"})
# Series Prometheus writes itself for every target it scrapes, not the services.
SCRAPE_SERIES = frozenset({"up"})

_GRAFANA_VARIABLE = re.compile(r"\$\{?\w+\}?")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
# Not preceded by a word character, a dot or a digit: "d" in "1d" and "e3" in "1e3" are no names.
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right"}
)
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")


@dataclass(frozen=True)
class Names:
    metrics: frozenset[str]
    labels: frozenset[str]


def names_in(expr: str) -> Names:
    """The metric names and label names a PromQL expression uses (see the module docstring)."""
    text = _STRING.sub('""', _GRAFANA_VARIABLE.sub("", expr))
    labels: set[str] = set()

    def matchers(match: re.Match[str]) -> str:
        labels.update(_MATCHER_LABEL.findall(match[1]))
        return " "

    def grouping(match: re.Match[str]) -> str:
        labels.update(name.strip() for name in match[1].split(",") if name.strip())
        return " "

    text = _MATCHERS.sub(matchers, text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(grouping, text)
    metrics = {
        match[1] for match in _IDENTIFIER.finditer(text) if not match[2] and match[1].lower() not in _KEYWORDS
    }
    return Names(frozenset(metrics), frozenset(labels))


@dataclass(frozen=True)
class Query:
    """One expression of the dashboard or the rules, with the labels its text refers to besides."""

    where: str
    expr: str
    # Labels named outside the expression: a legend's {{label}}, an alert's $labels.x.
    template_labels: frozenset[str] = field(default_factory=frozenset)

    @property
    def names(self) -> Names:
        names = names_in(self.expr)
        return Names(names.metrics, names.labels | self.template_labels)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(board: dict[str, Any]) -> list[Query]:
    queries: list[Query] = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            legend = frozenset(_LEGEND_LABEL.findall(target.get("legendFormat", "")))
            queries.append(Query(f"panel {panel['title']!r} {target['refId']}", target["expr"], legend))
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        assert match, f"variable {variable['name']}: only label_values(...) queries are read, not {text!r}"
        queries.append(Query(f"variable {variable['name']}", match[1] or "", frozenset({match[2]})))
    return queries


def rule_groups(prometheus_rule: dict[str, Any]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = prometheus_rule["spec"]["groups"]
    return groups


def rules_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return loaded


def rule_queries(prometheus_rule: dict[str, Any]) -> list[Query]:
    queries: list[Query] = []
    for group in rule_groups(prometheus_rule):
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            texts = [*rule.get("labels", {}).values(), *rule.get("annotations", {}).values()]
            labels = frozenset(label for text in texts for label in _TEMPLATE_LABEL.findall(str(text)))
            queries.append(Query(f"rule {name} in {group['name']}", str(rule["expr"]), labels))
    return queries


def component_queries() -> list[Query]:
    """Every expression of the component: the dashboard's panels and variables, and the alerts."""
    return dashboard_queries(dashboard()) + rule_queries(rules_file())


def sanitized(label: str) -> str:
    """A pod label as a Prometheus label name: app.kubernetes.io/part-of -> app_kubernetes_io_part_of."""
    return re.sub(r"[^A-Za-z0-9_]", "_", label)


def pod_target_labels() -> frozenset[str]:
    """The pod labels every PodMonitor of the component copies onto its series, as label names."""
    monitors = [m for m in yaml.safe_load_all(POD_MONITORS.read_text()) if m]
    return frozenset(sanitized(label) for m in monitors for label in m["spec"].get("podTargetLabels", []))


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by values, so Prometheus can parse the expression."""
    for variable in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(variable, "5m")
    return _GRAFANA_VARIABLE.sub("value", expr)

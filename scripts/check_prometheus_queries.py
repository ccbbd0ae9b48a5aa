#!/usr/bin/env python3
"""Asks a running Prometheus, which scrapes a running usermeta and has loaded deploy/prometheus/*.yaml, about
every expression the rules and the dashboard use. Fails (exit 1, one line per problem) on:
  - a rule Prometheus reports unhealthy (its last evaluation failed), or a rule file that is not loaded;
  - an expression of a rule or a dashboard panel that Prometheus refuses or fails to evaluate;
  - a recording rule that has no data;
  - a series a selector names that usermeta does not emit: the metric, each label a matcher names, and each
    value an equality matcher asks for (except the few listed in RARE with the reason the load cannot take
    that path); and a label a by/on/without/ignoring clause names that none of the expression's metrics has.

    check_prometheus_queries.py PROMETHEUS_URL DASHBOARD.json RULE_FILE_NAME...

The rules are read from Prometheus (/api/v1/rules), the dashboard's queries from its JSON, so nothing is copied
by hand. Dashboard variables are substituted: $job with `.+`, $__rate_interval with `1m`."""
import json
import re
import sys
import urllib.parse
import urllib.request

# Values of equality matchers the short load cannot produce, with the reason; every other value must be seen.
RARE = {
    ("usermeta_upstream_requests_total", "status", "429"):
        "the stand-in answers 429 only to faults set in-process; the alert's unit tests cover it",
}
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "${job}": ".+", "$job": ".+"}
# A selector: a metric name with or without braces. Function names and keywords are followed by `(` or are
# in the grammar words below, and label names inside by/on/without (...) are skipped with the group.
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
GRAMMAR = {"by", "on", "without", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
           "bool", "inf", "nan"}


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as error:
        body = json.load(error)
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def selectors(expr):
    """The vector selectors of a PromQL expression: (metric, [(label, op, value)])."""
    # Drop grouping clauses (label lists, not selectors), string literals outside braces, and durations.
    text = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    text = re.sub(r"\[[^\]]*\]", "", text)
    found = []
    for match in SELECTOR.finditer(text):
        name, braces = match.group(1), match.group(2)
        rest = text[match.end():].lstrip()
        if name in GRAMMAR or (not braces and rest.startswith("(")):
            continue
        if re.fullmatch(r"[0-9.e]+", name) or not re.search(r"[a-z]", name):
            continue
        start = match.start()
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "._\""):
            continue
        found.append((name, MATCHER.findall(braces or "")))
    return found


def main():
    base, dashboard_path, *rule_files = sys.argv[1:]
    problems = []
    groups = query_rules(base)
    loaded = {group["file"].rsplit("/", 1)[-1] for group in groups}
    for name in rule_files:
        if name not in loaded:
            problems.append(f"rule file {name} is not loaded by Prometheus (loaded: {sorted(loaded)})")
    expressions = []  # (where, expression, must have data)
    records = set()
    for group in groups:
        for rule in group["rules"]:
            name = rule["name"]
            if rule.get("health") != "ok":
                problems.append(f"rule {name}: health {rule.get('health')}: {rule.get('lastError')}")
            if rule["type"] == "recording":
                records.add(name)
                expressions.append((f"recording rule {name}", rule["query"], False))
                expressions.append((f"recording rule {name} (its series)", name, True))
            else:
                expressions.append((f"alert {name}", rule["query"], False))
    with open(dashboard_path, encoding="utf-8") as f:
        dashboard = json.load(f)
    panels = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in DASHBOARD_VARIABLES.items():
                expr = expr.replace(variable, value)
            expressions.append((f"panel {panel['title']!r} {target['refId']}", expr, False))
            panels += 1
    seen = set()
    checked = 0
    for where, expr, needs_data in expressions:
        try:
            result = query(base, expr)
        except ValueError as error:
            problems.append(f"{where}: {error}\n    {expr}")
            continue
        checked += 1
        if needs_data and not result:
            problems.append(f"{where}: no data")
        metrics = sorted({metric for metric, _ in selectors(expr) if metric not in records})
        checks = [c for metric, matchers in selectors(expr) if metric not in records for c in emitted(metric, matchers)]
        if metrics:
            names = "|".join(metrics)
            for clause in GROUPING.findall(expr):
                for label in filter(None, (label.strip() for label in clause.split(","))):
                    checks.append((f'count({{__name__=~"{names}",{label}!=""}})', f"label {label} on {names}"))
        for check, why in checks:
            if check in seen:
                continue
            seen.add(check)
            if not query(base, check):
                problems.append(f"{where}: usermeta emits no {why}: {check}")
    print(f"checked {checked} expressions ({len(records)} recording rules, "
          f"{sum(1 for e in expressions if e[0].startswith('alert'))} alerts, {panels} dashboard queries) "
          f"and {len(seen)} selectors")
    if problems:
        print("\n".join(f"FAIL: {p}" for p in problems))
        sys.exit(1)


def emitted(metric, matchers):
    """Queries that must return data if usermeta emits what a selector names, each with what it shows."""
    yield f"count({metric})", f"series {metric}"
    for label, op, value in matchers:
        yield f'count({metric}{{{label}!=""}})', f"label {label} on {metric}"
        if op == "=" and value:
            if (metric, label, value) in RARE:
                continue
            yield f'count({metric}{{{label}="{value}"}})', f'{label}="{value}" on {metric}'


def query_rules(base):
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as answer:
        return json.load(answer)["data"]["groups"]


if __name__ == "__main__":
    main()

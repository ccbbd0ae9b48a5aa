#!/usr/bin/env python3
"""The Kubernetes monitoring overlay's PrometheusRules are deploy/prometheus/'s rule files, wrapped.

    prometheus_rules_overlay.py write            writes overlays/monitoring/prometheusrule-*.yaml from the rule files
    prometheus_rules_overlay.py check RENDERED   checks `kubectl kustomize overlays/monitoring` output: each
                                                 PrometheusRule holds exactly its rule file's groups, and the
                                                 PodMonitor selects the Deployment's pods and a named port of it

Needs PyYAML (check-kubernetes.sh runs it with kubernetes-validate's environment, which has it)."""
import sys

import yaml

OVERLAY = "deploy/kubernetes/overlays/monitoring"
RULES = {  # PrometheusRule name: the rule file it wraps
    "usermeta-slo": "deploy/prometheus/recording-rules.yaml",
    "usermeta-alerts": "deploy/prometheus/alerts.yaml",
}


def write():
    for name, source in RULES.items():
        with open(source, encoding="utf-8") as f:
            lines = f.read().splitlines()
        body = [line for line in lines if not line.startswith("#")]
        target = f"{OVERLAY}/prometheusrule-{name.removeprefix('usermeta-')}.yaml"
        with open(target, "w", encoding="utf-8") as f:
            f.write(f"# {source} as a PrometheusRule. Generated: edit {source}, then run\n"
                    f"# `python3 scripts/prometheus_rules_overlay.py write`.\n")
            f.write(f"apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: {name}\n"
                    f"  labels:\n    app.kubernetes.io/name: usermeta\nspec:\n")
            f.write("".join(f"  {line}\n" if line else "\n" for line in body))
        print(f"wrote {target}")


def check(rendered):
    with open(rendered, encoding="utf-8") as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    problems = []
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    found = {o["metadata"]["name"]: o for o in by_kind.get("PrometheusRule", [])}
    for name, source in RULES.items():
        with open(source, encoding="utf-8") as f:
            groups = yaml.safe_load(f)["groups"]
        if name not in found:
            problems.append(f"no PrometheusRule {name}")
        elif found[name]["spec"]["groups"] != groups:
            problems.append(f"PrometheusRule {name} differs from {source}: "
                            "run `python3 scripts/prometheus_rules_overlay.py write`")
    monitors = by_kind.get("PodMonitor", [])
    deployments = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "usermeta"]
    if len(monitors) != 1 or len(deployments) != 1:
        problems.append(f"expected one PodMonitor and the usermeta Deployment, found {len(monitors)} and {len(deployments)}")
    else:
        monitor, pod = monitors[0]["spec"], deployments[0]["spec"]["template"]
        labels = pod["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in monitor["selector"]["matchLabels"].items()):
            problems.append(f"the PodMonitor selects {monitor['selector']['matchLabels']}, the pods are {labels}")
        ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        env = {e["name"]: e.get("value") for c in pod["spec"]["containers"] for e in c.get("env", [])}
        for endpoint in monitor["podMetricsEndpoints"]:
            if endpoint["port"] not in ports:
                problems.append(f"the PodMonitor scrapes port {endpoint['port']!r}, the pods name {sorted(ports)}")
        if not env.get("USERMETA_METRICS_LISTEN"):
            problems.append("metrics are off in the overlay (USERMETA_METRICS_LISTEN unset)")
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        sys.exit(1)
    print(f"   ok   {len(found)} PrometheusRules hold the rule files; the PodMonitor scrapes the pods' metrics port")


if __name__ == "__main__":
    if sys.argv[1:] == ["write"]:
        write()
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)

#!/usr/bin/env bash
# Checks deploy/kubernetes/ without a cluster:
#   1. `kubectl kustomize` renders the base, the Redis overlay and the monitoring overlay;
#   2. kubernetes-validate (PyPI, pinned) validates every object offline against the bundled OpenAPI schemas of
#      a pinned Kubernetes version, strictly (unknown fields fail);
#   3. this project's own rules (scripts/check_kubernetes_rules.py): 3 replicas, gRPC probes on the right health
#      services, the security context, PodDisruptionBudget and HPA, the NetworkPolicy keeping the ext_authz,
#      webhook and metrics ports to listed sources, credentials and the policy as mounted files, no secret
#      values inline, a request budget toward ZITADEL that keeps the most pods inside ZITADEL Cloud's rate
#      limit, and the overlay's Redis wiring; the monitoring overlay's PrometheusRules hold exactly
#      deploy/prometheus/'s rule files and its PodMonitor scrapes the pods' metrics port
#      (scripts/prometheus_rules_overlay.py);
#   4. that checks 2 and 3 do fail on broken copies, so a green run means something.
# Needs kubectl and python3; installs kubernetes-validate into .tools/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.32.0   # the oldest Kubernetes the manifests are meant for (preStop sleep needs 1.30)
venv=.tools/kubernetes-validate-venv
source scripts/lib/python-tool.sh
python_tool "$venv" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" kubernetes-validate
py="$venv/bin/python"
validate=("$venv/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION")

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
declare -A dirs=([base]=deploy/kubernetes/base [redis]=deploy/kubernetes/overlays/redis)

for name in base redis; do
  echo "-- 1. kubectl kustomize ${dirs[$name]}"
  kubectl kustomize "${dirs[$name]}" >"$scratch/$name.yaml"
  echo "   ok   $(grep -c '^kind:' "$scratch/$name.yaml") objects"
  echo "-- 2. kubernetes-validate --strict -k $KUBERNETES_VERSION (offline, bundled schemas)"
  "${validate[@]}" "$scratch/$name.yaml"
  echo "   ok   every object is valid Kubernetes $KUBERNETES_VERSION"
  echo "-- 3. project rules ($name)"
  "$py" scripts/check_kubernetes_rules.py "$name" "$scratch/$name.yaml"
done

echo "-- 1-3. kubectl kustomize deploy/kubernetes/overlays/monitoring (prometheus-operator's CRDs: no bundled schema)"
kubectl kustomize deploy/kubernetes/overlays/monitoring >"$scratch/monitoring.yaml"
"$py" scripts/prometheus_rules_overlay.py check "$scratch/monitoring.yaml"

echo "-- 4. the checks reject broken manifests"
must_fail() { # must_fail WHAT EXPECTED-OUTPUT-REGEX COMMAND...: the command fails, saying why
  local what=$1 expected=$2; shift 2
  if "$@" >"$scratch/out" 2>&1; then
    echo "FAIL: the check accepted $what"; cat "$scratch/out"; exit 1
  fi
  grep -Eq "$expected" "$scratch/out" || { echo "FAIL: $what was rejected for another reason:"; cat "$scratch/out"; exit 1; }
  echo "   rejected: $what"
}
mutate() { # mutate SOURCE PYTHON-EXPRESSION-ON-s > copy
  "$py" -c "import sys; s = open(sys.argv[1]).read(); t = $2; assert t != s, 'mutation did not apply'; sys.stdout.write(t)" "$1"
}
rules() { "$py" scripts/check_kubernetes_rules.py "$@"; }
mutate "$scratch/base.yaml" "s.replace('readOnlyRootFilesystem: true', 'readOnlyRootFilesystm: true', 1)" >"$scratch/typo.yaml"
must_fail "a misspelt field (schema)" "readOnlyRootFilesystm" "${validate[@]}" "$scratch/typo.yaml"
mutate "$scratch/base.yaml" "s.replace('maxUnavailable: 1', 'maxUnavailable: [1]', 1)" >"$scratch/type.yaml"
must_fail "a list where a number belongs (schema)" "maxUnavailable" "${validate[@]}" "$scratch/type.yaml"
mutate "$scratch/base.yaml" "s.replace('replicas: 3', 'replicas: 1', 1)" >"$scratch/one.yaml"
must_fail "one replica (rules)" "FAIL 3 replicas" rules base "$scratch/one.yaml"
mutate "$scratch/base.yaml" "s.replace('service: usermeta.v1.UserMetadataService', 'service: usermeta.zitadel.caller', 1)" >"$scratch/probe.yaml"
must_fail "a readiness probe on ZITADEL's breaker (rules)" "FAIL readiness asks" rules base "$scratch/probe.yaml"
mutate "$scratch/base.yaml" "s.replace('runAsNonRoot: true', 'runAsNonRoot: false')" >"$scratch/root.yaml"
must_fail "a pod allowed to run as root (rules)" "FAIL usermeta: pod runAsNonRoot" rules base "$scratch/root.yaml"
mutate "$scratch/base.yaml" "s.replace('- name: USERMETA_SERVICE_PAT_FILE\n          value: /run/secrets/usermeta/service.pat', '- name: USERMETA_SERVICE_PAT\n          value: pat-in-git', 1)" >"$scratch/inline.yaml"
must_fail "a PAT inline in the environment (rules)" "FAIL .*USERMETA_SERVICE_PAT holds a secret inline" rules base "$scratch/inline.yaml"
mutate "$scratch/base.yaml" "s.replace('  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: istio-system\n      podSelector:\n        matchLabels:\n          istio: ingressgateway\n    ports:', '  - ports:', 1)" >"$scratch/open.yaml"
must_fail "ext_authz open to every pod (rules)" "FAIL ext_authz port 50052" rules base "$scratch/open.yaml"
mutate "$scratch/base.yaml" "s.replace('value: \"3.6\"', 'value: \"40\"', 1)" >"$scratch/budget.yaml"
must_fail "a request budget that 11 pods would take past ZITADEL Cloud's limit (rules)" "FAIL the request budget" rules base "$scratch/budget.yaml"
mutate "$scratch/redis.yaml" "s.replace('redis://redis:6379', 'redis://localhost:6379', 1)" >"$scratch/redis-url.yaml"
must_fail "usermeta pointed at a Redis that is not the overlay's (rules)" "FAIL USERMETA_REDIS_URL" rules redis "$scratch/redis-url.yaml"
mutate "$scratch/monitoring.yaml" "s.replace('severity: critical', 'severity: page', 1)" >"$scratch/monitoring-rules.yaml"
must_fail "a PrometheusRule that is not alerts.yaml (monitoring)" "FAIL PrometheusRule usermeta-alerts differs" "$py" scripts/prometheus_rules_overlay.py check "$scratch/monitoring-rules.yaml"
echo "check-kubernetes: ok"

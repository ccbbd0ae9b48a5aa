#!/usr/bin/env bash
# Checks docker-compose.yml and the Dockerfile it builds, without a Docker engine:
#   1. `docker compose config -q` when the compose plugin is installed (it is not on CI's machine: skipped there);
#   2. the Compose Specification's JSON schema, as vendored by check-jsonschema (PyPI, pinned; no download of
#      schemas from the web);
#   3. this project's own rules, which a schema cannot express: health-gated start order, the PAT path shared
#      through one volume, usermeta's ZITADEL URL matching ZITADEL_EXTERNALDOMAIN, published ports, and the
#      Dockerfile's non-root user, health check and entry point;
#   4. that checks 2 and 3 do fail on broken copies, so a green run means something.
# Installs what it needs into .tools/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_JSONSCHEMA_VERSION=0.39.0
venv=.tools/check-compose-venv
if [[ ! -x "$venv/bin/check-jsonschema" ]] || ! "$venv/bin/check-jsonschema" --version | grep -q "$CHECK_JSONSCHEMA_VERSION"; then
  echo "-- installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" </dev/null
fi
py="$venv/bin/python"

echo "-- 1. docker compose config -q"
if docker compose version >/dev/null 2>&1; then
  docker compose -f docker-compose.yml config -q
  echo "   ok ($(docker compose version --short))"
else
  echo "   skipped: the docker compose plugin is not installed here"
fi

echo "-- 2. compose-spec JSON schema (check-jsonschema --builtin-schema vendor.compose-spec)"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

echo "-- 3. project rules"
"$py" scripts/check_compose_rules.py docker-compose.yml Dockerfile .dockerignore

echo "-- 4. the checks reject broken files"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
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
mutate docker-compose.yml "s.replace('condition: service_healthy', 'condition: when_ready', 1)" >"$scratch/bad-condition.yml"
must_fail "an unknown depends_on condition (schema)" "when_ready" \
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$scratch/bad-condition.yml"
mutate docker-compose.yml "s.replace('    network_mode: service:zitadel\n', '    network_mod: service:zitadel\n', 1)" >"$scratch/bad-key.yml"
must_fail "a misspelt service key (schema)" "network_mod" \
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$scratch/bad-key.yml"
mutate docker-compose.yml "s.replace('USERMETA_ZITADEL_URL: http://localhost:8080', 'USERMETA_ZITADEL_URL: http://zitadel:8080', 1)" >"$scratch/bad-host.yml"
must_fail "usermeta calling ZITADEL under a name that is not ZITADEL_EXTERNALDOMAIN (rules)" "FAIL +usermeta calls ZITADEL as zitadel:8080" \
  "$py" scripts/check_compose_rules.py "$scratch/bad-host.yml" Dockerfile .dockerignore
mutate docker-compose.yml "s.replace('USERMETA_SERVICE_PAT_FILE: /zitadel/bootstrap/admin.pat', 'USERMETA_SERVICE_PAT_FILE: /run/admin.pat', 1)" >"$scratch/bad-pat.yml"
must_fail "a PAT path usermeta cannot see (rules)" "FAIL +the PAT ZITADEL writes" \
  "$py" scripts/check_compose_rules.py "$scratch/bad-pat.yml" Dockerfile .dockerignore
mutate Dockerfile "s.replace('USER 65532:65532', 'USER root', 1)" >"$scratch/Dockerfile.root"
must_fail "an image running as root (rules)" "FAIL +the image runs as a non-root user" \
  "$py" scripts/check_compose_rules.py docker-compose.yml "$scratch/Dockerfile.root" .dockerignore
echo "check-compose: ok"

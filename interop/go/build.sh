#!/usr/bin/env bash
# Builds the Go client (client.go) with Debian 12's Go toolchain and Go libraries, offline: installs the packages
# when missing (../install-debian.sh go), generates the stubs of proto/usermeta/v1/usermeta.proto with protoc and
# the Debian protoc-gen-go / protoc-gen-go-grpc, and compiles in GOPATH mode against the library sources Debian
# keeps in /usr/share/gocode (no go.mod, no module proxy). Everything it writes is in interop/go/.build/
# (git-ignored): the stubs in gopath/, the build cache in cache/, the binary at client.
#
#   bash interop/go/build.sh
#   interop/go/.build/client          (with USERMETA_ADDR etc. set; see run.sh)
#
# With your own Go toolchain and modules, see README.md instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto_root=$(cd "$here/../../proto" && pwd)
build=$here/.build
gopath=$build/gopath
# The stubs' import path: what buf.gen.yaml's go_package_prefix gives them.
stubs=example.com/usermeta-client/gen/usermeta/v1

bash "$here/../install-debian.sh" go

# Debian's toolchain, whatever else is on PATH: the library sources in /usr/share/gocode are the ones it ships.
go=/usr/bin/go
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOPROXY=off GOFLAGS='' GOCACHE="$build/cache"

echo "-- generating stubs into $gopath/src/$stubs"
echo "   ($(protoc --version), $(protoc-gen-go --version), $(protoc-gen-go-grpc --version))"
rm -rf "$gopath"
mkdir -p "$gopath/src"
# The contract sets no go_package; M gives the file its Go import path and package name. The google/rpc/status.proto
# it imports comes from Debian's gogo googleapis; M points its Go code at genproto's status package (what grpc-go
# uses), not at gogo's.
googleapis=/usr/share/gocode/src/github.com/gogo/googleapis
status_go=google.golang.org/genproto/googleapis/rpc/status
protoc --proto_path="$proto_root" --proto_path="$googleapis" --proto_path=/usr/include \
  --go_out="$gopath/src" --go_opt="Musermeta/v1/usermeta.proto=$stubs;usermetav1" \
  --go_opt="Mgoogle/rpc/status.proto=$status_go;status" \
  --go-grpc_out="$gopath/src" --go-grpc_opt="Musermeta/v1/usermeta.proto=$stubs;usermetav1" \
  --go-grpc_opt="Mgoogle/rpc/status.proto=$status_go;status" \
  usermeta/v1/usermeta.proto
find "$gopath/src" -name '*.go' | sort | sed 's/^/   /'

echo "-- gofmt, go vet and go build ($("$go" version | awk '{print $3}'), GOPATH mode)"
unformatted=$(/usr/bin/gofmt -l "$here/client.go")
[[ -z "$unformatted" ]] || { echo "FAIL: gofmt would change $unformatted (run gofmt -w on it)"; exit 1; }
(cd "$here" && "$go" vet client.go && "$go" build -o "$build/client" client.go)
echo "   $build/client"

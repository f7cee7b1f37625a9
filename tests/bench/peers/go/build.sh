#!/usr/bin/env bash
# Build the Go peer gateway to build/bench/go-gateway without network access.
# The imports golang.org/x/net/http2 and golang.org/x/sync/errgroup come from
# Debian's golang-golang-x-net-dev and golang-golang-x-sync-dev, which put
# their sources under /usr/share/gocode. GOPATH mode (GO111MODULE=off) finds
# them there, and GOPROXY=off makes any attempt to download fail at once.
#
# Usage: bash tests/bench/peers/go/build.sh   (from any directory)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../../.." && pwd)
out_dir="$root/build/bench"
gocode=/usr/share/gocode

for pkg in golang.org/x/net/http2 golang.org/x/sync/errgroup; do
    if [[ ! -d $gocode/src/$pkg ]]; then
        echo "go-gateway: $gocode/src/$pkg not found; install it with" \
            "'bash tests/deps.sh golang-golang-x-net-dev" \
            "golang-golang-x-sync-dev'" >&2
        exit 1
    fi
done

mkdir -p "$out_dir"
gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT

# main.go is built as a file list, so it needs no place inside GOPATH. The
# temporary first GOPATH entry takes anything go would write there.
cd "$here"
GO111MODULE=off GOPROXY=off GOFLAGS= \
    GOPATH="$gopath:$gocode" GOCACHE="$out_dir/gocache" \
    go build -trimpath -o "$out_dir/go-gateway" main.go
echo "go-gateway: built $out_dir/go-gateway"

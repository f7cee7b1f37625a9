#!/usr/bin/env bash
# Install the Debian packages that building, testing and the demo need.
# Runs apt-get only when dpkg-query reports a package as not installed, so a
# second run is quick and needs no network. Written for Debian 12 as root.
#
# Usage: bash tests/deps.sh [PACKAGE...]
# Extra arguments are installed too (the benchmark names its peers' packages).
set -euo pipefail

packages=(
    build-essential pkg-config
    libmicrohttpd-dev libnghttp2-dev libhttp-parser-dev libc-ares-dev
    libjansson-dev libuv1-dev libssl-dev libcmocka-dev
    nginx nghttp2-server nghttp2-client nghttp2-proxy dnsmasq-base
    curl python3 python3-pytest procps iproute2 clang-format
    # `make tools` extracts helm with unzip; the chart test reads the
    # rendered manifests with python3-yaml.
    unzip python3-yaml
    # promtool, which checks the admin listener's /metrics output.
    prometheus
    # The benchmark's smoke run in `make test`: load, plots, callgrind.
    # valgrind also runs the integration-memcheck stage.
    wrk gnuplot-nox valgrind
    # `make lint`, the lint stage of `make test`.
    clang-tidy cppcheck
    # Sanitizer runtimes for gcc 12. gcc-12 already depends on them on amd64,
    # but naming them catches an image where they were removed.
    libasan8 libubsan1 libtsan2
    # The libFuzzer targets (make fuzz-bins): clang 14 and its runtimes,
    # which hold libFuzzer and the sanitizers for clang.
    clang libclang-rt-14-dev
    "$@"
)

is_installed()
{
    local status
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) \
        || return 1
    [[ $status == ii* ]]
}

missing=()
for pkg in "${packages[@]}"; do
    if ! is_installed "$pkg"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if ((EUID != 0)); then
        echo "deps: missing packages: ${missing[*]}" >&2
        echo "deps: run 'make deps' as root to install them" >&2
        exit 1
    fi
    echo "deps: installing: ${missing[*]}"

    # Debian's nginx package starts a server on port 80 from its postinst.
    # invoke-rc.d skips service starts while policy-rc.d exits with 101.
    # Only a file created here is removed afterwards.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    remove_policy()
    {
        if ((created_policy)); then
            rm -f "$policy"
        fi
    }
    trap remove_policy EXIT
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi

    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"

    remove_policy
    created_policy=0
    trap - EXIT
else
    echo "deps: all ${#packages[@]} packages are installed"
fi

# Check that sanitizer programs link and run, because a missing runtime
# would otherwise show up only as a link error deep inside 'make test'.
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
cat >"$workdir/hello.c" <<'EOF'
#include <pthread.h>
#include <stdio.h>

static void *run(void *arg)
{
    return arg;
}

int main(void)
{
    pthread_t thread;

    if (pthread_create(&thread, NULL, run, NULL) != 0) {
        return 1;
    }
    pthread_join(thread, NULL);
    puts("ok");
    return 0;
}
EOF
for sanitizer in thread address,undefined; do
    if ! cc -fsanitize="$sanitizer" -pthread -o "$workdir/hello" \
        "$workdir/hello.c"; then
        echo "deps: cc -fsanitize=$sanitizer failed to link;" \
            "check libtsan2/libasan8/libubsan1" >&2
        exit 1
    fi
    if ! "$workdir/hello" >/dev/null; then
        echo "deps: a -fsanitize=$sanitizer program failed to run" >&2
        exit 1
    fi
done
echo "deps: -fsanitize=thread and -fsanitize=address,undefined link and run"

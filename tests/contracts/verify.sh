#!/usr/bin/env bash
# Verify the gateway against consumer pacts:
#   bash tests/contracts/verify.sh PACT_FILE...
# Two `pact stub` processes play the demo's downstream services from
# contracts/providers/, tutti runs with demo/tutti.json in front of them,
# and `pact verifier` sends each consumer pact's requests to tutti. The
# exit status is the verifier's.
#
# pact stub listens on all interfaces and has no option to change that, so
# the script re-runs itself in a private network namespace (unshare -n, as
# root) where only loopback exists. Every process it starts lives there,
# and the script stops each one by its PID before it exits.
#
# Environment:
#   TUTTI_BIN   gateway binary (default build/tutti)
#   PACT_BIN    pact binary (default tools/bin/pact, from `make tools`)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=tests/lib/process.sh
source "$root/tests/lib/process.sh"
message_prefix=verify

if [[ ${TUTTI_CONTRACTS_NETNS:-} != 1 ]]; then
    if (($# == 0)); then
        echo "usage: $0 PACT_FILE..." >&2
        exit 2
    fi
    exec unshare -n env TUTTI_CONTRACTS_NETNS=1 bash "$0" "$@"
fi

ip link set lo up

tutti_bin=${TUTTI_BIN:-build/tutti}
pact_bin=${PACT_BIN:-tools/bin/pact}
if [[ $tutti_bin != /* ]]; then
    tutti_bin="$root/$tutti_bin"
fi
if [[ $pact_bin != /* ]]; then
    pact_bin="$root/$pact_bin"
fi
for bin in "$tutti_bin" "$pact_bin"; do
    if [[ ! -x $bin ]]; then
        echo "verify: $bin not found; run 'make' and 'make tools'" >&2
        exit 1
    fi
done
export PACT_DO_NOT_TRACK=true

# The namespace is new, so the demo's fixed ports are free: tutti on 8080,
# shop on 9101, users on 9201. pact stub 0.7.1 also serves HTTP/2 with
# prior knowledge, so users stays h2c as in the demo.
host=127.0.0.1
tutti_port=8080
config="$root/demo/tutti.json"
workdir=$(mktemp -d "${TMPDIR:-/tmp}/tutti-contracts.XXXXXX")
declare -A pids=()
started=()

cleanup()
{
    # A tutti still running here drains for up to shutdown_grace_ms (5000
    # in demo/tutti.json) before it exits, so allow 10 s before SIGKILL.
    stop_started 10
    rm -rf "$workdir"
}
trap cleanup EXIT

start()
{
    local name=$1
    shift
    "$@" >"$workdir/$name.log" 2>&1 &
    pids[$name]=$!
    started+=("$name")
}

start shop "$pact_bin" stub --loglevel warn --port 9101 \
    --file "$root/contracts/providers/tutti-shop.json"
start users "$pact_bin" stub --loglevel warn --port 9201 \
    --file "$root/contracts/providers/tutti-users.json"
wait_for_port 9101 shop 5
wait_for_port 9201 users 5

start tutti "$tutti_bin" --config "$config" --log-level warn
wait_for_port "$tutti_port" tutti 5

files=()
for pact in "$@"; do
    files+=(--file "$pact")
done
status=0
"$pact_bin" verifier --no-colour --hostname "$host" --port "$tutti_port" \
    --provider-name tutti "${files[@]}" || status=$?

# Stop tutti first, so that a sanitizer build writes its exit-time report
# (leaks) into the log before the log is checked.
kill -TERM "${pids[tutti]}"
tutti_status=0
wait "${pids[tutti]}" || tutti_status=$?
unset 'started[-1]'
sanitizer='ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer'
sanitizer+='|runtime error:'
if ((tutti_status != 0)); then
    echo "verify: tutti exited with status $tutti_status" >&2
    status=1
fi
if grep -qE "$sanitizer" "$workdir/tutti.log"; then
    echo "verify: tutti reported a sanitizer error" >&2
    status=1
fi
if ((status != 0)); then
    show_log tutti
    show_log shop
    show_log users
fi
exit "$status"

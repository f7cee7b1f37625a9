#!/usr/bin/env bash
# Run the tutti demo on loopback: nginx (HTTP/1.1 "shop" service), nghttpd
# (HTTP/2 h2c "users" service) and tutti in front of both. Ctrl-C stops
# every process this script started and removes its temporary directory.
#
# Environment:
#   TUTTI_BIN         gateway binary (default build/tutti)
#   TUTTI_PORT        gateway port (default 8080)
#   DEMO_NGINX_PORT   nginx port (default 9101)
#   DEMO_H2_PORT      nghttpd port (default 9201)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/lib/process.sh
source "$root/tests/lib/process.sh"
message_prefix=demo
demo="$root/demo"
tutti_bin=${TUTTI_BIN:-build/tutti}
if [[ $tutti_bin != /* ]]; then
    tutti_bin="$root/$tutti_bin"
fi
tutti_port=${TUTTI_PORT:-8080}
nginx_port=${DEMO_NGINX_PORT:-9101}
h2_port=${DEMO_H2_PORT:-9201}
host=127.0.0.1

for tool in nginx nghttpd curl; do
    if ! command -v "$tool" >/dev/null; then
        echo "demo: $tool not found; run 'make deps' first" >&2
        exit 1
    fi
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/tutti-demo.XXXXXX")
declare -A pids=()
# Names in start order. cleanup stops them in reverse, so tutti goes first.
started=()

cleanup()
{
    trap - INT TERM HUP EXIT
    # tutti lets requests in flight finish first (shutdown_grace_ms is
    # 5000 in demo/tutti.json), so allow 10 s before SIGKILL.
    stop_started 10
    rm -rf "$workdir"
}
trap cleanup EXIT
trap 'echo; echo "demo: stopping"; exit 0' INT TERM HUP

# Each server runs in its own session, so Ctrl-C in the terminal reaches
# only this script, which then sends one SIGTERM. tutti treats a second
# signal as "exit at once" and would skip draining otherwise. setsid does
# not fork here, because a background job of a non-interactive shell is no
# process group leader, so $! stays the server's PID.

# A port that already accepts connections belongs to someone else, and
# waiting for it would report that process as ours.
require_free_port()
{
    if (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; then
        echo "demo: $host:$1 is already in use; stop that process or set" \
            "$2 to another port" >&2
        exit 1
    fi
}


# Wait for any started process to exit and report which one did.
wait_for_exit()
{
    local exited= status=0 name
    wait -n -p exited "${pids[@]}" || status=$?
    for name in "${!pids[@]}"; do
        if [[ ${pids[$name]} == "$exited" ]]; then
            echo "demo: $name exited (status $status); stopping" >&2
            show_log "$name"
        fi
    done
}

require_free_port "$nginx_port" DEMO_NGINX_PORT
require_free_port "$h2_port" DEMO_H2_PORT
require_free_port "$tutti_port" TUTTI_PORT

# nginx: pid file and temp paths go under the prefix, $workdir/nginx.
mkdir -p "$workdir/nginx/tmp"
sed "s/@PORT@/$nginx_port/" "$demo/nginx.conf" >"$workdir/nginx/nginx.conf"
setsid nginx -p "$workdir/nginx" -c "$workdir/nginx/nginx.conf" -e stderr \
    >"$workdir/nginx.log" 2>&1 &
pids[nginx]=$!
started+=(nginx)
wait_for_port "$nginx_port" nginx 10

setsid nghttpd --no-tls --address="$host" --htdocs="$demo/h2root" \
    --mime-types-file="$demo/mime.types" "$h2_port" \
    >"$workdir/nghttpd.log" 2>&1 &
pids[nghttpd]=$!
started+=(nghttpd)
wait_for_port "$h2_port" nghttpd 10

if [[ ! -x $tutti_bin ]]; then
    echo "demo: $tutti_bin not found; run 'make' to build it." >&2
    echo "demo: the backends are running; try them directly:"
    echo "  curl -s http://$host:$nginx_port/orders"
    echo "  curl -s --http2-prior-knowledge" \
        "http://$host:$h2_port/users/alice.json"
    echo "Press Ctrl-C to stop."
    wait_for_exit
    exit 1
fi

# The demo configuration names the default ports, so rewrite them when the
# environment overrides one.
sed -e "s/$host:8080/$host:$tutti_port/" \
    -e "s/$host:9101/$host:$nginx_port/" \
    -e "s/$host:9201/$host:$h2_port/" \
    "$demo/tutti.json" >"$workdir/tutti.json"

"$tutti_bin" check "$workdir/tutti.json"

# tutti logs JSON lines on stderr; show them in this terminal.
setsid "$tutti_bin" --config "$workdir/tutti.json" --log-level info &
pids[tutti]=$!
started+=(tutti)
if ! wait_for_port "$tutti_port" tutti 10; then
    exit 1
fi

base="http://$host:$tutti_port"
cat <<EOF

tutti listens on $base (users over h2c on :$h2_port, shop over HTTP/1.1
on :$nginx_port). Try:

  # profile, orders and recommendations in one JSON object
  curl -s $base/dashboard/alice
  curl -s '$base/dashboard/bob?limit=5'

  # the optional "promotions" call fails (404): 200 with "errors" and a
  # Tutti-Partial header
  curl -si $base/overview/alice

  # the required "profile" call fails (no such user): tutti returns 404
  curl -si $base/dashboard/carol

  # a request deadline of 0 ms: tutti returns 504 with kind "deadline"
  curl -si -H 'Request-Timeout-Ms: 0' $base/dashboard/alice

Press Ctrl-C to stop.
EOF

wait_for_exit
exit 1

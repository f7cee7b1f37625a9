# Bash functions for scripts that start servers on loopback and stop each
# one by its PID: demo/run.sh and tests/contracts/verify.sh source this
# file as "$root/tests/lib/process.sh".
#
# The functions read these variables of the sourcing script:
#   message_prefix  first word of every message, such as "demo"
#   workdir         directory that contains NAME.log, the output of process NAME
#   host            address that the servers listen on
#   pids            associative array (declare -A) of PIDs by process name
#   started         process names in start order

# shellcheck shell=bash
# The sourcing script sets those variables.
# shellcheck disable=SC2154

# Print the log of process $1 on stderr, when it wrote one.
show_log()
{
    if [[ -s $workdir/$1.log ]]; then
        echo "$message_prefix: $1 log:" >&2
        cat "$workdir/$1.log" >&2
    fi
}


# Wait until something accepts TCP connections on $host:$1 while the
# process named $2 runs, for $3 seconds at most. Return 1, and print the
# process's log, when the process exits first or time runs out.
wait_for_port()
{
    local port=$1 name=$2 seconds=$3 tries=0
    while ((tries < seconds * 20)); do
        if ! kill -0 "${pids[$name]}" 2>/dev/null; then
            echo "$message_prefix: $name exited during startup" >&2
            show_log "$name"
            return 1
        fi
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
        tries=$((tries + 1))
    done
    echo "$message_prefix: $name is not listening on $host:$port after" \
        "$seconds s" >&2
    show_log "$name"
    return 1
}


# Stop every started process in reverse start order: SIGTERM, then
# SIGKILL when it still runs $1 seconds later. Reap each one with wait.
stop_started()
{
    local grace=$1 i name pid waited
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        name=${started[$i]}
        pid=${pids[$name]}
        kill -TERM "$pid" 2>/dev/null || true
        waited=0
        while kill -0 "$pid" 2>/dev/null && ((waited < grace * 10)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$message_prefix: $name (pid $pid) did not stop in" \
                "$grace s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

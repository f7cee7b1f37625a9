#!/usr/bin/env bash
# Run the libFuzzer targets that `make fuzz-bins` built in build/fuzz.
#
# For each TARGET (config, route, aggregate, h1, h2): replay every file in
# tests/fuzz/regressions/TARGET once, then fuzz for SECONDS starting from a
# copy of tests/fuzz/corpus/TARGET in build/fuzz/work/TARGET, so new
# inputs never land in the committed corpus. A crash, a sanitizer report,
# a leak or a timeout fails the target; libFuzzer writes the input as
# build/fuzz/work/TARGET/crash-* (or leak-*, timeout-*, oom-*).
#
# A dictionary tests/fuzz/TARGET.dict, when present, is passed as -dict.
#
# Usage: tests/fuzz/run.sh [--seconds SECONDS] TARGET...
# Prints "ok   fuzz_TARGET ..." or "FAIL fuzz_TARGET ..." per target and
# exits 1 when a target failed.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 1

seconds=30
if [[ ${1:-} == --seconds ]]; then
    seconds=${2:?--seconds needs a value}
    shift 2
fi
if (($# == 0)); then
    echo "usage: tests/fuzz/run.sh [--seconds SECONDS] TARGET..." >&2
    exit 2
fi

# Maximum input length per target: a configuration or a response fits
# easily, and longer inputs only slow the search down.
max_len_of()
{
    case $1 in
    route) echo 1024 ;;
    config | aggregate) echo 16384 ;;
    *) echo 8192 ;;
    esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
for target in "$@"; do
    bin=build/fuzz/fuzz_$target
    work=build/fuzz/work/$target
    log=build/fuzz/work/$target.log
    if [[ ! -x $bin ]]; then
        echo "FAIL fuzz_$target: $bin is missing (run make fuzz-bins)"
        failed=1
        continue
    fi
    rm -rf "$work"
    mkdir -p "$work/corpus"
    cp -R "tests/fuzz/corpus/$target/." "$work/corpus/"

    regressions=()
    if [[ -d tests/fuzz/regressions/$target ]]; then
        while IFS= read -r -d '' file; do
            regressions+=("$file")
        done < <(find "tests/fuzz/regressions/$target" -type f \
            ! -name '.*' -print0 | sort -z)
    fi
    if ((${#regressions[@]} > 0)); then
        if ! "$bin" "${regressions[@]}" >"$work/regressions.log" 2>&1; then
            echo "FAIL fuzz_$target: a regression input fails;" \
                "see $work/regressions.log"
            tail -n 30 "$work/regressions.log"
            failed=1
            continue
        fi
    fi

    options=()
    if [[ -f tests/fuzz/$target.dict ]]; then
        options+=(-dict="tests/fuzz/$target.dict")
    fi
    start=$SECONDS
    "$bin" -max_total_time="$seconds" -max_len="$(max_len_of "$target")" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${options[@]}" -artifact_prefix="$work/" "$work/corpus" \
        >"$log" 2>&1
    status=$?
    runs=$(awk '/stat::number_of_executed_units:/ { print $2 }' "$log")
    if ((status == 0)); then
        echo "ok   fuzz_$target: ${runs:-?} runs in $((SECONDS - start)) s," \
            "${#regressions[@]} regressions"
    else
        echo "FAIL fuzz_$target: exit status $status after" \
            "$((SECONDS - start)) s; log $log"
        grep -E 'ERROR|SUMMARY|Test unit written' "$log" | head -n 10
        failed=1
    fi
done
exit "$failed"

#!/usr/bin/env bash
# Run every test stage over the builds that `make test` made, print a
# summary per stage and end with the line "N passed, N failed" (and
# ", N skipped" when tests were skipped). Exits 1 when a test failed or no
# test ran.
#
# Stages, in order:
#   unit              build/tests/*_test (cmocka)
#   unit-asan         build/asan/tests/*_test, ASan + UBSan
#   integration       pytest tests/integration against build/tutti
#   integration-asan  the same against build/asan/tutti
#   integration-tsan  the same against build/tsan/tutti. The whole suite
#                     by default, because it is short: 141 tests took 18 s
#                     under TSan on 2 cores (one run of this script).
#                     TUTTI_TSAN_SCOPE=multiworker
#                     runs only the tests marked `multiworker`, the ones
#                     where several worker threads run.
#   integration-memcheck
#                     the tests marked `memcheck` (MEMCHECK_FILES in
#                     conftest.py) against build/tutti under valgrind
#                     memcheck; a memory error or a definite or indirect
#                     leak fails the test that started that tutti
#   lint              `make lint-clang-tidy` and `make lint-cppcheck`, one
#                     test each, which passes when the tool finds nothing
#   bench-smoke       tests/bench/bench.py --smoke against build/tutti and
#                     the peers that can run, counted as one test that
#                     passes when the script exits 0
#   soak-short        tests/soak/soak.py with SOAK_SECONDS=30 against
#                     build/tutti, counted as one test (about 40 s)
#   soak-short-asan   the same against build/asan/tutti
#   fuzz-smoke        tests/fuzz/run.sh on each libFuzzer target of
#                     build/fuzz: its regression inputs, then
#                     TUTTI_FUZZ_SECONDS of fuzzing; one test per target,
#                     which passes when nothing crashed
#
# Environment:
#   TUTTI_TSAN_SCOPE     all (default) or multiworker
#   TUTTI_UNIT_TIMEOUT   seconds per unit test binary (default 120)
#   TUTTI_STAGE_TIMEOUT  seconds per pytest run (default 1200)
#   TUTTI_BENCH_TIMEOUT  seconds for the benchmark smoke run (default 300)
#   TUTTI_SOAK_TIMEOUT   seconds per short soak run (default 300)
#   TUTTI_FUZZ_SECONDS   seconds of fuzzing per fuzz target (default 30)
#   TUTTI_LINT_TIMEOUT   seconds per lint tool (default 300)
#   PYTEST_ADDOPTS       extra pytest options, as pytest reads them
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

python=/usr/bin/python3
unit_timeout=${TUTTI_UNIT_TIMEOUT:-120}
stage_timeout=${TUTTI_STAGE_TIMEOUT:-1200}
tsan_scope=${TUTTI_TSAN_SCOPE:-all}
bench_timeout=${TUTTI_BENCH_TIMEOUT:-300}
soak_timeout=${TUTTI_SOAK_TIMEOUT:-300}
fuzz_seconds=${TUTTI_FUZZ_SECONDS:-30}
lint_timeout=${TUTTI_LINT_TIMEOUT:-300}
fuzz_targets=(config route aggregate h1 h2)
logdir="$root/build/test-logs"
if [[ $tsan_scope != all && $tsan_scope != multiworker ]]; then
    echo "run.sh: invalid TUTTI_TSAN_SCOPE=$tsan_scope:" \
        "expected all or multiworker" >&2
    exit 2
fi

asan_env=(
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
)
tsan_env=(TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1)
# Exit status 99 is the one conftest.py reads as a valgrind report.
memcheck_env=(
    "TUTTI_WRAPPER=valgrind --quiet --leak-check=full
    --errors-for-leak-kinds=definite,indirect --error-exitcode=99
    --suppressions=$root/tests/lint/valgrind.supp"
)

rm -rf "$logdir"
mkdir -p "$logdir"
export PYTHONDONTWRITEBYTECODE=1

# One entry per stage, in the order the stages ran.
stage_names=()
stage_passed=()
stage_failed=()
stage_skipped=()
stage_seconds=()
stage_notes=()
# Names of failed and skipped tests, printed after the table.
failed_list=()
skipped_list=()

record_stage()
{
    stage_names+=("$1")
    stage_passed+=("$2")
    stage_failed+=("$3")
    stage_skipped+=("$4")
    stage_seconds+=("$5")
    stage_notes+=("$6")
}


# describe_status STATUS [TIMEOUT_SECONDS]
describe_status()
{
    local status=$1
    if ((status == 124)); then
        echo "timed out after ${2:-?} s"
    elif ((status > 128)); then
        echo "killed by signal $((status - 128))"
    else
        echo "exit status $status"
    fi
}


# Sum the cmocka summary lines of one binary's output. cmocka prints one
# "[  PASSED  ] N test(s)." per group, plus FAILED and SKIPPED lines with a
# count; the per-test "[  FAILED  ] name" lines carry no count. Prints
# "passed failed skipped".
count_cmocka()
{
    awk '
        /^\[  PASSED  \] [0-9]+ test\(s\)/ { p += $4 }
        /^\[  FAILED  \] [0-9]+ test\(s\)/ { f += $4 }
        /^\[  SKIPPED \] [0-9]+ test\(s\)/ { s += $4 }
        END { printf "%d %d %d\n", p, f, s }
    ' "$1"
}


# Print the test names from the "[  FAILED  ] name" (or SKIPPED, with
# $2 = SKIPPED) lines of one binary's output, each once.
list_cmocka()
{
    awk -v tag="$2" '
        $1 == "[" && $2 == tag && $3 == "]" && $4 !~ /^[0-9]/ \
            && !seen[$4]++ { print $4 }
    ' "$1"
}


# run_unit_stage NAME DIR [VAR=VALUE...]
run_unit_stage()
{
    local name=$1 dir=$2
    shift 2
    local env_vars=("$@") start=$SECONDS
    local passed=0 failed=0 skipped=0 note=""
    local bin base log status p f s test_name

    echo
    echo "== $name: $dir"
    local bins=()
    if [[ -d $dir ]]; then
        for bin in "$dir"/*_test; do
            if [[ -f $bin && -x $bin ]]; then
                bins+=("$bin")
            fi
        done
    fi
    if ((${#bins[@]} == 0)); then
        echo "no unit test binaries in $dir"
        record_stage "$name" 0 0 0 0 "no binaries in $dir"
        return
    fi

    for bin in "${bins[@]}"; do
        base=$(basename "$bin")
        log="$logdir/$name-$base.log"
        env CMOCKA_MESSAGE_OUTPUT=STDOUT "${env_vars[@]}" \
            timeout -k 5 "$unit_timeout" "$bin" >"$log" 2>&1
        status=$?
        read -r p f s <<<"$(count_cmocka "$log")"
        while IFS= read -r test_name; do
            failed_list+=("$name: $base: $test_name")
        done < <(list_cmocka "$log" FAILED)
        while IFS= read -r test_name; do
            skipped_list+=("$name: $base: $test_name")
        done < <(list_cmocka "$log" SKIPPED)
        if ((status != 0 && f == 0)); then
            # A crash, a sanitizer report or a timeout, possibly after the
            # summary, counts the binary itself as one failed test.
            f=1
            failed_list+=("$name: $base: $(describe_status "$status" \
                "$unit_timeout")")
        fi
        passed=$((passed + p))
        failed=$((failed + f))
        skipped=$((skipped + s))
        if ((f > 0)); then
            echo "FAIL $base: $p passed, $f failed," \
                "$(describe_status "$status" "$unit_timeout"); output:"
            cat "$log"
        elif ((s > 0)); then
            echo "ok   $base: $p passed, $s skipped"
        else
            echo "ok   $base: $p passed"
        fi
    done
    record_stage "$name" "$passed" "$failed" "$skipped" \
        $((SECONDS - start)) ""
}


# Print "tests failures errors skipped" from a pytest JUnit XML file, then
# one line per failed test ("F name") and per skipped test ("S name:
# reason").
read_junit()
{
    "$python" - "$1" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
totals = [0, 0, 0, 0]
lines = []
for suite in suites:
    for i, key in enumerate(("tests", "failures", "errors", "skipped")):
        totals[i] += int(suite.get(key, "0"))
    for case in suite.iter("testcase"):
        name = "::".join(filter(None, (case.get("classname"),
                                       case.get("name"))))
        if case.find("failure") is not None or case.find("error") is not None:
            lines.append("F " + name)
        skip = case.find("skipped")
        if skip is not None:
            reason = (skip.get("message") or "").replace("\n", " ")
            lines.append("S %s: %s" % (name, reason))
print(*totals)
for line in lines:
    print(line)
EOF
}


# Count the tests that `pytest -m MARKER` would select.
count_marked()
{
    "$python" -m pytest -p no:cacheprovider --collect-only -q -m "$1" \
        tests/integration 2>/dev/null | grep -c '::' || true
}


# run_pytest_stage NAME BUILD_DIR "PYTEST ARGS" NOTE [VAR=VALUE...]
run_pytest_stage()
{
    local name=$1 build=$2 args=$3 note=$4
    shift 4
    local env_vars=("$@") start=$SECONDS
    local xml="$logdir/$name.xml" log="$logdir/$name.log" status
    local tests=0 failures=0 errors=0 skipped=0 passed failed line

    echo
    echo "== $name: pytest${args:+ $args} tests/integration" \
        "(TUTTI_BIN=$build/tutti)"
    local missing=""
    local bin
    for bin in "$build/tutti" "$build/faultd"; do
        if [[ ! -x $bin ]]; then
            missing+=" $bin"
        fi
    done
    if [[ -n $missing ]]; then
        echo "FAIL $name: missing binaries:$missing (run make test)"
        failed_list+=("$name: missing$missing")
        record_stage "$name" 0 1 0 0 "missing$missing"
        return
    fi

    # $args is a list of plain words chosen in this script.
    # shellcheck disable=SC2086
    env TUTTI_BIN="$root/$build/tutti" FAULTD_BIN="$root/$build/faultd" \
        "${env_vars[@]}" \
        timeout -k 10 "$stage_timeout" \
        "$python" -m pytest -p no:cacheprovider -ra --junitxml="$xml" \
        $args tests/integration 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}

    if [[ -s $xml ]]; then
        local junit
        junit=$(read_junit "$xml")
        read -r tests failures errors skipped <<<"$(head -n 1 <<<"$junit")"
        while IFS= read -r line; do
            case $line in
            F\ *) failed_list+=("$name: ${line#F }") ;;
            S\ *) skipped_list+=("$name: ${line#S }") ;;
            esac
        done < <(tail -n +2 <<<"$junit")
    fi
    failed=$((failures + errors))
    passed=$((tests - failed - skipped))
    if ((status == 5 && tests == 0)); then
        note="${note:+$note; }no tests collected"
    elif ((status != 0 && failed == 0)); then
        # pytest stopped without reporting a failed test, after an
        # internal error, a usage error or the stage timeout.
        failed=1
        local reason
        reason="pytest $(describe_status "$status" "$stage_timeout")"
        failed_list+=("$name: $reason")
        note="${note:+$note; }$reason"
    fi
    record_stage "$name" "$passed" "$failed" "$skipped" \
        $((SECONDS - start)) "$note"
}


# run_bench_stage NAME: the benchmark's smoke run as one test.
run_bench_stage()
{
    local name=$1 start=$SECONDS log="$logdir/$1.log" status
    echo
    echo "== $name: python3 tests/bench/bench.py --smoke"
    timeout -k 10 "$bench_timeout" "$python" tests/bench/bench.py --smoke \
        2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    if ((status == 0)); then
        record_stage "$name" 1 0 0 $((SECONDS - start)) ""
    else
        local reason
        reason="bench.py $(describe_status "$status" "$bench_timeout")"
        failed_list+=("$name: $reason")
        record_stage "$name" 0 1 0 $((SECONDS - start)) "$reason"
    fi
}


# run_fuzz_stage NAME: each fuzz target as one test.
run_fuzz_stage()
{
    local name=$1 start=$SECONDS log="$logdir/$1.log" target
    local passed=0 failed=0
    echo
    echo "== $name: tests/fuzz/run.sh --seconds $fuzz_seconds" \
        "${fuzz_targets[*]}"
    for target in "${fuzz_targets[@]}"; do
        # libFuzzer stops itself after the given time; the timeout only
        # catches a run that hangs before it starts fuzzing.
        if timeout -k 10 $((fuzz_seconds + 120)) bash tests/fuzz/run.sh \
            --seconds "$fuzz_seconds" "$target" 2>&1 | tee -a "$log"; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            failed_list+=("$name: fuzz_$target, see build/fuzz/work/$target.log")
        fi
    done
    record_stage "$name" "$passed" "$failed" 0 $((SECONDS - start)) ""
}


# run_lint_stage NAME: each lint tool as one test.
run_lint_stage()
{
    local name=$1 start=$SECONDS log="$logdir/$1.log" tool
    local passed=0 failed=0
    echo
    echo "== $name: make lint-clang-tidy lint-cppcheck"
    for tool in clang-tidy cppcheck; do
        if timeout -k 10 "$lint_timeout" make --no-print-directory \
            "lint-$tool" 2>&1 | tee -a "$log"; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            failed_list+=("$name: $tool, see ${log#"$root"/}")
        fi
    done
    record_stage "$name" "$passed" "$failed" 0 $((SECONDS - start)) ""
}


# run_soak_stage NAME BUILD_DIR [VAR=VALUE...]: a 30 s soak run as one
# test that passes when the script exits 0.
run_soak_stage()
{
    local name=$1 build=$2
    shift 2
    local start=$SECONDS log="$logdir/$name.log" status
    echo
    echo "== $name: SOAK_SECONDS=30 python3 tests/soak/soak.py" \
        "(TUTTI_BIN=$build/tutti)"
    env TUTTI_BIN="$root/$build/tutti" FAULTD_BIN="$root/$build/faultd" \
        SOAK_SECONDS=30 SOAK_DIR="$root/build/$name" "$@" \
        timeout -k 10 "$soak_timeout" "$python" tests/soak/soak.py \
        2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    if ((status == 0)); then
        record_stage "$name" 1 0 0 $((SECONDS - start)) ""
    else
        local reason
        reason="soak.py $(describe_status "$status" "$soak_timeout")"
        failed_list+=("$name: $reason")
        record_stage "$name" 0 1 0 $((SECONDS - start)) "$reason"
    fi
}


run_unit_stage unit build/tests
run_unit_stage unit-asan build/asan/tests "${asan_env[@]}"

if [[ ! -d tests/integration ]]; then
    echo
    echo "== integration: tests/integration does not exist"
    record_stage integration 0 0 0 0 "no tests/integration"
else
    run_pytest_stage integration build "" ""
    run_pytest_stage integration-asan build/asan "" "" "${asan_env[@]}"

    tsan_args=""
    tsan_note="all tests"
    if [[ $tsan_scope == multiworker ]]; then
        if (($(count_marked multiworker) > 0)); then
            tsan_args="-m multiworker"
            tsan_note="-m multiworker"
        else
            tsan_note="all tests (none marked multiworker)"
        fi
    fi
    run_pytest_stage integration-tsan build/tsan "$tsan_args" "$tsan_note" \
        "${tsan_env[@]}"
    run_pytest_stage integration-memcheck build "-m memcheck" \
        "-m memcheck, valgrind" "${memcheck_env[@]}"
fi

run_lint_stage lint

run_bench_stage bench-smoke
run_soak_stage soak-short build
run_soak_stage soak-short-asan build/asan "${asan_env[@]}"
run_fuzz_stage fuzz-smoke

total_passed=0
total_failed=0
total_skipped=0
echo
echo "== summary (logs in ${logdir#"$root"/})"
printf '%-20s %7s %7s %8s %6s  %s\n' stage passed failed skipped time note
for i in "${!stage_names[@]}"; do
    printf '%-20s %7d %7d %8d %5ds  %s\n' "${stage_names[$i]}" \
        "${stage_passed[$i]}" "${stage_failed[$i]}" "${stage_skipped[$i]}" \
        "${stage_seconds[$i]}" "${stage_notes[$i]}"
    total_passed=$((total_passed + stage_passed[i]))
    total_failed=$((total_failed + stage_failed[i]))
    total_skipped=$((total_skipped + stage_skipped[i]))
done
if ((${#skipped_list[@]} > 0)); then
    echo "skipped:"
    printf '  %s\n' "${skipped_list[@]}"
fi
if ((${#failed_list[@]} > 0)); then
    echo "failed:"
    printf '  %s\n' "${failed_list[@]}"
fi

exit_status=0
if ((total_failed > 0)); then
    exit_status=1
elif ((total_passed == 0)); then
    echo "no test ran"
    exit_status=1
fi

if ((total_skipped > 0)); then
    echo "$total_passed passed, $total_failed failed, $total_skipped skipped"
else
    echo "$total_passed passed, $total_failed failed"
fi
exit "$exit_status"

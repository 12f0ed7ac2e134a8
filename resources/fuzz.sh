#!/usr/bin/env bash
# Fuzzes Kiln with cargo-fuzz (libFuzzer, AddressSanitizer): builds the targets of
# tests/fuzz, runs each for SECONDS (default 60; FUZZ_JOBS targets at a time, default
# the number of CPUs), then replays the inputs under tests/fuzz/regressions/<target>/.
#
#   resources/fuzz.sh [SECONDS]     a fuzzing session
#   resources/fuzz.sh --ci          the test suite's short pass: 12 s, all targets at once
#
# Seeds come from tests/fuzz/corpus/<target>/ (committed); what the fuzzer adds goes to
# tests/fuzz/work/<target>/ (ignored, kept between runs; FUZZ_WORK=DIR for another
# directory), logs to <work>/logs/, crashing inputs to tests/fuzz/artifacts/<target>/.
# One `fuzz: <target>: ...` line per target, then always a last line
# `fuzz: N passed, N failed`. Exit status 1 when a target crashed, hung, leaked or ran
# out of memory, or a regression input fails again.
#
# Needs the nightly toolchain and cargo-fuzz (installed with `cargo install` when
# missing). Without them it prints `fuzz: skipped (...)` and exits 0, except with
# CI=true, where it installs what is missing and fails if it cannot.
set -uo pipefail

usage() {
    sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

secs=""
ci=0
while (($#)); do
    case $1 in
        --ci) ci=1 ;;
        -h | --help) usage; exit 0 ;;
        '' | *[!0-9]*)
            echo "fuzz.sh: unknown argument '$1': use resources/fuzz.sh [--ci] [SECONDS]" >&2
            exit 2
            ;;
        *) secs=$1 ;;
    esac
    shift
done
if [ -z "$secs" ]; then
    if ((ci)); then secs=12; else secs=60; fi
fi
if ((secs < 1)); then
    echo "fuzz.sh: SECONDS must be at least 1" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir=$repo/tests/fuzz
work=${FUZZ_WORK:-$fuzz_dir/work}
in_ci=0
[ "${CI:-}" = true ] && in_ci=1

# Nothing to fuzz with: skip, or fail in CI.
unavailable() {
    if ((in_ci)); then
        echo "fuzz: $1, and CI=true does not allow skipping"
        echo "fuzz: 0 passed, 1 failed"
        exit 1
    fi
    echo "fuzz: skipped ($1)"
    exit 0
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    if ((in_ci)); then
        echo "fuzz.sh: installing the nightly toolchain with rustup" >&2
        rustup toolchain install nightly --profile minimal >&2 || unavailable "no nightly toolchain"
    else
        unavailable "no nightly toolchain"
    fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz)" >&2
    cargo install --locked cargo-fuzz >&2 || unavailable "cargo-fuzz is not installed and cannot be installed"
fi

cd "$fuzz_dir" || exit 1
# cargo-fuzz passes the sanitizer flags in RUSTFLAGS; CARGO_ENCODED_RUSTFLAGS would win
# over them. RUSTFLAGS also replaces the repo's `+crt-static` (.cargo/config.toml), which
# must not apply here: rustc refuses sanitizers with a statically linked libc.
unset CARGO_ENCODED_RUSTFLAGS
targets=$(cargo fuzz list --fuzz-dir . 2>/dev/null)
ntargets=$(echo "$targets" | wc -w)
if ! cargo +nightly fuzz build --fuzz-dir . >&2; then
    echo "fuzz: the fuzz targets do not build (see above)"
    echo "fuzz: 0 passed, $ntargets failed"
    exit 1
fi
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=${CARGO_TARGET_DIR:-$fuzz_dir/target}/$triple/release
mkdir -p "$work/logs" "$work/results"

# Fuzzes target $1, replays its regressions; writes "ok|fail<TAB>summary" to results/$1.
run_target() {
    local t=$1 bin=$bin_dir/$1 log=$work/logs/$1.log rlog=$work/logs/$1.regressions.log
    local rc=0 res=ok msg regs=() f
    mkdir -p "$work/$t" "$fuzz_dir/artifacts/$t"
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$fuzz_dir/artifacts/$t/" "$work/$t" "$fuzz_dir/corpus/$t" \
        >"$log" 2>&1 || rc=$?
    if ((rc == 0)); then
        local execs eps stat
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
        stat=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$log" | tail -n 1)
        msg="ok, ${execs:-?} execs (${eps:-?}/s), ${stat:-no coverage line}"
    else
        local input
        input=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/^Test unit written to //')
        res=fail
        msg="FAILED (exit $rc): input ${input:-not written}, log $log"
    fi
    for f in "$fuzz_dir/regressions/$t"/*; do
        [ -f "$f" ] && regs+=("$f")
    done
    if ((${#regs[@]})); then
        if "$bin" -timeout=10 -rss_limit_mb=2048 "${regs[@]}" >"$rlog" 2>&1; then
            msg="$msg; regressions: ${#regs[@]} replayed, ok"
        else
            res=fail
            msg="$msg; regressions: ${#regs[@]} replayed, FAILED (log $rlog)"
        fi
    fi
    printf '%s\t%s\n' "$res" "$msg" >"$work/results/$t"
}

# The CI pass runs every target at once: the shortest wall time on few cores.
if ((ci)); then
    jobs=${FUZZ_JOBS:-$ntargets}
else
    jobs=${FUZZ_JOBS:-$(nproc)}
fi
running=0
for t in $targets; do
    rm -f "$work/results/$t"
    if ((running >= jobs)); then
        wait -n
        running=$((running - 1))
    fi
    run_target "$t" &
    running=$((running + 1))
done
wait

passed=0
failed=0
for t in $targets; do
    IFS=$'\t' read -r res msg <"$work/results/$t" 2>/dev/null || { res=fail; msg="did not report"; }
    echo "fuzz: $t: $msg"
    if [ "$res" = ok ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        # The panic message or sanitizer report, for CI logs.
        for log in "$work/logs/$t.log" "$work/logs/$t.regressions.log"; do
            [ -f "$log" ] || continue
            grep -h -m 1 -A 1 "panicked at" "$log"
            grep -h -m 2 -E "ERROR: |^SUMMARY: " "$log"
        done | sed 's/^/    /'
    fi
done
echo "fuzz: $passed passed, $failed failed"
((failed == 0))

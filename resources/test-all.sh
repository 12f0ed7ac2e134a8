#!/usr/bin/env bash
# Kiln's whole test suite: set-up (packages, test guest, Debian kernel), then every
# unit, integration and doc test binary of the workspace, each run even when another
# fails to build, fails or crashes; then the gates `cargo fmt --check` and
# `cargo clippy --workspace --all-targets -- -D warnings`, and `resources/fuzz.sh --ci`
# when it exists. Needs /dev/kvm (read/write) for the integration tests; run as root or
# as a member of the kvm group. The TAP tests need root (CAP_NET_ADMIN) and skip with a
# message otherwise (outside CI).
#
# The last line is always `summary: N passed, N failed, N skipped` over every test
# binary. A test binary that did not build or did not finish (crash, signal) counts as
# one failed test and is named on a `did not run:` line above it; the gates and the fuzz
# run report on their own `gate:` lines. Exit status: 0 only when no test failed, every
# binary ran to its end and every gate passed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# Ends the run early: says why nothing ran, still closing with the summary line.
abort() {
    echo "did not run: any test ($1)"
    echo "summary: 0 passed, 1 failed, 0 skipped"
    exit 1
}
bash resources/setup.sh || abort "resources/setup.sh failed"
# The fmt and clippy gates below need these components.
for c in fmt:rustfmt clippy:clippy; do
    cargo "${c%%:*}" --version >/dev/null 2>&1 && continue
    echo "test-all: installing the ${c#*:} component with rustup" >&2
    rustup component add "${c#*:}" || echo "test-all: cannot install ${c#*:}: its gate will fail" >&2
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Every test target as "<package> <cargo target flags>": libraries (unit tests, then doc
# tests when they have any), binaries, integration tests.
targets=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        kinds = t["kind"]
        if "lib" in kinds and t.get("test", True):
            print(p["name"], "--lib")
        if "lib" in kinds and t.get("doctest", False):
            print(p["name"], "--doc")
        if "bin" in kinds and t.get("test", True):
            print(p["name"], "--bin", t["name"])
        if "test" in kinds:
            print(p["name"], "--test", t["name"])
') || abort "cargo metadata failed: the workspace manifests do not parse"

# Counts one test binary's log: "passed failed ignored skipped", then one
# "skipped test: NAME: why" line per test that returned early with "skipped: <why>"
# (only passing tests count: under CI=true a skip fails).
count() {
    awk '
        /^---- .* stdout ----$/ { name = $2 }
        /^successes:$/ { ok = 1 }
        /^failures:$/ || /^test result:/ { ok = 0 }
        ok && /^skipped: / && !(name in seen) { seen[name] = 1; k++; why[k] = name ": " substr($0, 10) }
        /^test result:/ { for (i = 2; i <= NF; i++) {
            if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
        END { printf "%d %d %d %d\n", p, f, s, k; for (i = 1; i <= k; i++) print "skipped test: " why[i] }
    ' "$1"
}

passed=0 failed=0 skipped=0 status=0
notes=()
n=0
while read -r pkg flags <&3; do
    [ -n "$pkg" ] || continue
    n=$((n + 1))
    log="$work/$n.log"
    rc=0
    # shellcheck disable=SC2086
    cargo test -p "$pkg" $flags -- --test-threads=2 --show-output </dev/null 2>&1 | tee "$log" ||
        rc=${PIPESTATUS[0]}
    read -r p f s k < <(count "$log")
    passed=$((passed + p - k)) failed=$((failed + f)) skipped=$((skipped + s + k))
    while IFS= read -r line; do notes+=("$line"); done < <(count "$log" | tail -n +2)
    ((rc == 0)) || status=1
    if ((rc != 0)) && ! grep -q '^test result:' "$log"; then
        # No result line: the binary never ran its tests to the end.
        if grep -q '^error: could not compile' "$log"; then
            why="did not build"
        else
            why=$(grep -o 'process didn.t exit successfully: .*' "$log" | tail -n 1 | sed 's/.*(\(.*\))$/\1/')
            why="did not finish: ${why:-cargo exited $rc}"
        fi
        notes+=("did not run: -p $pkg $flags ($why)")
        failed=$((failed + 1))
    elif ((rc != 0 && f == 0)); then
        notes+=("did not run: -p $pkg $flags (exited $rc after its tests)")
        failed=$((failed + 1))
    fi
done 3<<<"$targets"

# Gates: each reports one line, and a failure makes the exit status non-zero.
gate() {
    local name=$1 hint=$2
    shift 2
    local log="$work/gate.log"
    echo "+ $*"
    if "$@" >"$log" 2>&1; then
        notes+=("gate: $name: ok")
    else
        tail -n 60 "$log"
        notes+=("gate: $name: FAILED ($hint)")
        status=1
    fi
}
gate "cargo fmt --check" "run \`cargo fmt\`" cargo fmt --all --check
gate "cargo clippy -D warnings" "see the warnings above" \
    cargo clippy --workspace --all-targets -- -D warnings

# The fuzz smoke run (its own script prints "fuzz: N passed, N failed").
if [ -f resources/fuzz.sh ]; then
    rc=0
    bash resources/fuzz.sh --ci 2>&1 | tee "$work/fuzz.log" || rc=${PIPESTATUS[0]}
    line=$(grep '^fuzz: ' "$work/fuzz.log" | tail -n 1 || true)
    if ((rc == 0)); then
        notes+=("gate: ${line:-fuzz: ok}")
    else
        notes+=("gate: ${line:-fuzz} FAILED (resources/fuzz.sh --ci exited $rc)")
        status=1
    fi
fi

echo
for line in "${notes[@]}"; do echo "$line"; done
echo "summary: $passed passed, $failed failed, $skipped skipped"
exit "$status"

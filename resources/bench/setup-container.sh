#!/usr/bin/env bash
# Prepares the container runner of `kiln bench`: installs runc (Debian bookworm's 1.1;
# Debian's crun 1.8 refuses hosts with cgroups in hybrid mode) and builds an OCI bundle
# with a static busybox rootfs whose process runs `/bin/busybox echo hi`.
#
# Usage: setup-container.sh [BUNDLE_DIR]     (default: <repo>/resources/out/bench/bundle)
# Idempotent: installs only what is missing and rebuilds the bundle's config.json.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bundle=${1:-$repo/resources/out/bench/bundle}

sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
if ! command -v runc >/dev/null 2>&1; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends runc
fi
command -v python3 >/dev/null 2>&1 || {
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends python3
}

mkdir -p "$bundle/rootfs/bin"
bundle=$(cd "$bundle" && pwd)
bb="$bundle/rootfs/bin/busybox"
if [ ! -x "$bb" ]; then
    # A static busybox: from the host's busybox-static if installed, else the .deb.
    if [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; then
        cp /bin/busybox "$bb"
    else
        tmp=$(mktemp -d); chmod 755 "$tmp"
        trap 'rm -rf "$tmp"' EXIT
        (cd "$tmp" && apt-get download busybox-static >/dev/null)
        dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
        cp "$tmp/x/bin/busybox" "$bb"
    fi
    chmod 755 "$bb"
fi
ln -sf busybox "$bundle/rootfs/bin/sh"
ln -sf busybox "$bundle/rootfs/bin/echo"

# `runc spec` writes the default config (root user, pid/net/ipc/uts/mount namespaces);
# run the workload without a terminal and with a read-only root.
rm -f "$bundle/config.json"
(cd "$bundle" && runc spec)
python3 - "$bundle/config.json" <<'EOF'
import json, sys
path = sys.argv[1]
with open(path) as f:
    spec = json.load(f)
spec["process"]["terminal"] = False
spec["process"]["args"] = ["/bin/busybox", "echo", "hi"]
spec["root"]["readonly"] = True
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
EOF

# Smoke test: one run must print "hi".
out=$(runc run --bundle "$bundle" "kiln-bench-setup-$$" 2>&1) || {
    echo "setup-container: runc run failed: $out" >&2
    exit 1
}
[ "$out" = hi ] || { echo "setup-container: unexpected output: $out" >&2; exit 1; }
echo "$bundle"

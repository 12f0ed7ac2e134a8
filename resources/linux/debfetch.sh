# Shared by fetch-debian-kernel.sh and make-initramfs.sh (sourced, POSIX sh).
# Needs fail() defined by the caller.

# Ensures apt knows a candidate for package $1 (runs `apt-get update` once if not).
ensure_candidate() {
    cand=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
        apt-get update -qq >/dev/null || fail "apt-get update failed"
        cand=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    fi
    [ -n "$cand" ] && [ "$cand" != "(none)" ] || fail "no candidate for $1 in the apt sources"
}

# Downloads package $1 into $2 and unpacks it to $2/root; sets $pkgver.
fetch_deb() {
    # Download as root without the _apt sandbox (it cannot write to a private temp dir).
    (cd "$2" && apt-get download -qq -o APT::Sandbox::User=root "$1" >/dev/null) \
        || fail "apt-get download $1 failed"
    deb=$(ls "$2"/*.deb)
    pkgver=$(dpkg-deb -f "$deb" Version)
    dpkg-deb -x "$deb" "$2/root" || fail "dpkg-deb -x failed"
}

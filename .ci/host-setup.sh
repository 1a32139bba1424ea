#!/usr/bin/env bash
# Installs the host packages kernel-lab needs (Debian/Ubuntu, as root). With --lint it also
# installs the workflow linters, pinned, from PyPI, into a venv in /opt/kernel-lab-lint. With
# --e2e it gets the linters and what the offline end-to-end check needs: Debian's kernel source
# and busybox's upstream tarball (Debian's "orig" tarball), because kernel.org is not reachable
# in our CI.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# .ci/run calls these by this path.
lint_venv=/opt/kernel-lab-lint
zizmor_version=1.33.1
check_jsonschema_version=0.39.0

e2e=false
lint=false
for arg in "$@"; do
    case "$arg" in
        --e2e) e2e=true; lint=true ;;
        --lint) lint=true ;;
        *) echo "usage: host-setup.sh [--lint] [--e2e]" >&2; exit 2 ;;
    esac
done

apt-get update -q
apt-get install -y -q --no-install-recommends \
    build-essential flex bison bc perl libelf-dev libssl-dev cpio qemu-system-x86 gdb \
    dwarves kmod rsync gnupg gpgv procps ca-certificates shellcheck curl zstd lz4

# The Rust toolchain comes from rustup (Debian's cargo is too old for this workspace).
command -v cargo >/dev/null || echo "note: no cargo on PATH; install Rust with rustup (https://rustup.rs) before cargo xtask" >&2

# The workflow linters: check-jsonschema (GitHub's workflow schema, vendored in the package) and
# zizmor (security audits), both run offline by .ci/run. The system Python's venv, not whichever
# python3 comes first on PATH, because python3-venv is installed for that one.
if $lint; then
    apt-get install -y -q --no-install-recommends python3 python3-venv
    if [ "$("$lint_venv/bin/zizmor" --version 2>/dev/null)" != "zizmor $zizmor_version" ] ||
        [ "$("$lint_venv/bin/check-jsonschema" --version 2>/dev/null)" != "check-jsonschema, version $check_jsonschema_version" ]; then
        rm -rf "$lint_venv"
        /usr/bin/python3 -m venv "$lint_venv"
        "$lint_venv/bin/pip" install -q --disable-pip-version-check \
            "zizmor==$zizmor_version" "check-jsonschema==$check_jsonschema_version"
    fi
fi

$e2e || exit 0
apt-get install -y -q --no-install-recommends dpkg-dev linux-source-6.12

# busybox's pristine tarball is Debian's "orig" tarball of the busybox source package.
if ! ls "$here"/artifacts/debsrc/busybox_*.orig.tar.bz2 >/dev/null 2>&1; then
    if ! grep -rqsE '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
        # A deb-src twin of each source the machine already uses (no URL written here), so set-up
        # works behind whatever mirror or proxy apt is configured for.
        src="$(mktemp)"
        for f in /etc/apt/sources.list.d/*.sources; do
            if [ ! -e "$f" ] || [ "$f" = /etc/apt/sources.list.d/kernel-lab-src.sources ]; then
                continue
            fi
            sed 's/^Types: deb$/Types: deb-src/' "$f"
            echo
        done > "$src"
        if [ -s "$src" ]; then
            install -m 0644 "$src" /etc/apt/sources.list.d/kernel-lab-src.sources
        fi
        rm -f "$src"
        if [ -f /etc/apt/sources.list ]; then
            sed -n 's/^deb \(.*\)$/deb-src \1/p' /etc/apt/sources.list > /etc/apt/sources.list.d/kernel-lab-src.list
            [ -s /etc/apt/sources.list.d/kernel-lab-src.list ] || rm -f /etc/apt/sources.list.d/kernel-lab-src.list
        fi
        apt-get update -q
    fi
    mkdir -p "$here/artifacts/debsrc"
    (cd "$here/artifacts/debsrc" && apt-get source --download-only busybox)
fi

#!/usr/bin/env bash
# Installs the host packages kernel-lab needs (Debian/Ubuntu, as root). With --e2e it also gets
# what the offline end-to-end check needs: Debian's kernel source and busybox's upstream tarball
# (Debian's "orig" tarball), because kernel.org is not reachable in our CI.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

apt-get update -q
apt-get install -y -q --no-install-recommends \
    build-essential flex bison bc perl libelf-dev libssl-dev cpio qemu-system-x86 gdb \
    dwarves kmod rsync gnupg gpgv procps ca-certificates shellcheck

# The Rust toolchain comes from rustup (Debian's cargo is too old for this workspace).
command -v cargo >/dev/null || echo "note: no cargo on PATH; install Rust with rustup (https://rustup.rs) before cargo xtask" >&2

[ "${1:-}" = "--e2e" ] || exit 0
apt-get install -y -q --no-install-recommends dpkg-dev linux-source-6.12

# busybox's pristine tarball is Debian's "orig" tarball of the busybox source package.
if ! ls "$here"/artifacts/debsrc/busybox_*.orig.tar.bz2 >/dev/null 2>&1; then
    if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
        # shellcheck source=/dev/null
        codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
        printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$codename" > /etc/apt/sources.list.d/kernel-lab-src.sources
        apt-get update -q
    fi
    mkdir -p "$here/artifacts/debsrc"
    (cd "$here/artifacts/debsrc" && apt-get source --download-only busybox)
fi

#!/usr/bin/env bash
# Installs everything thinbox's build and tests need on a fresh Debian 12
# machine, and prepares the Debian-kernel guest that runs the dm-thin, LVM
# and ZFS tests. Idempotent: a second run only checks and costs seconds.
#
#   scripts/setup.sh            # as root
#
# Environment:
#   THINBOX_CACHE          where the guest kernel, modules and initramfs are
#                          cached (default /var/cache/thinbox)
#   THINBOX_GUEST_KERNEL   guest kernel ABI to use, e.g. 6.1.0-56-amd64
#                          (default: what Debian's linux-image-amd64 points to)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${THINBOX_CACHE:-/var/cache/thinbox}

say() { echo "setup: $*"; }
die() {
    echo "setup: error: $*" >&2
    exit 1
}

case "$cache/" in
/tmp/* | /var/tmp/* | /run/* | /dev/* | /proc/* | /sys/*)
    die "THINBOX_CACHE=$cache is hidden inside the test VM (it mounts its own /tmp, /var/tmp, /run, /dev): choose a directory such as /var/cache/thinbox"
    ;;
esac

# --- what this script can handle ---------------------------------------------
[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages and builds kernel modules): run 'sudo $0'"
[ "$(uname -m)" = x86_64 ] || die "architecture $(uname -m) is not supported: the guest is Debian's amd64 kernel under qemu-system-x86_64"
command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian 12 (bookworm) or a derivative"
. /etc/os-release
[ "${ID:-}" = debian ] || [ "${ID_LIKE:-}" = debian ] || say "warning: ${PRETTY_NAME:-this system} is not Debian; continuing"

export DEBIAN_FRONTEND=noninteractive

# --- Debian packages -----------------------------------------------------------
host_packages=(
    build-essential pkg-config libclang-dev clang
    libdevmapper-dev libbtrfsutil-dev libbtrfs-dev libseccomp-dev
    qemu-system-x86 busybox-static kmod cpio
    btrfs-progs dmsetup lvm2 thin-provisioning-tools e2fsprogs xfsprogs util-linux
    iproute2 procps psmisc
    crun runc containerd
    # thinbox serve: protoc for containerd's protos (containerd-snapshots);
    # containerd's own snapshotter suite, built with Debian's Go.
    protobuf-compiler golang-go golang-github-containerd-containerd-dev
    # image pull: a real registry to pull from, skopeo to push into it,
    # openssl for its test CA, htpasswd for its basic auth.
    docker-registry skopeo openssl apache2-utils
    # benches: peak RSS of each contender (GNU time).
    time
    # metrics: Debian's prometheus scrapes serve's /metrics and promtool
    # checks the text format, in a test.
    prometheus
    # packages (scripts/package.sh): the .deb and .rpm, their linters, a
    # fresh root to install each into.
    dpkg-dev rpm rpmlint lintian binutils systemd
)

enable_contrib() {
    local changed=0 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        if grep -q '^URIs:.*debian' "$f" && grep -qE '^Components:' "$f" && ! grep -qE '^Components:.*\bcontrib\b' "$f"; then
            sed -i -E '/^Components:/ s/$/ contrib/' "$f"
            changed=1
        fi
    done
    if [ -f /etc/apt/sources.list ] && grep -qE '^deb .*debian.* main' /etc/apt/sources.list \
        && ! grep -qE '^deb .*debian.* main.*contrib' /etc/apt/sources.list; then
        sed -i -E '/^deb .*debian/ s/ main( |$)/ main contrib\1/' /etc/apt/sources.list
        changed=1
    fi
    [ $changed -eq 0 ] || say "enabled Debian's contrib component (for zfs-dkms and zfsutils-linux)"
    return 0
}

apt_updated=0
apt_update() {
    [ $apt_updated -eq 1 ] && return 0
    say "apt-get update"
    apt-get update -qq || die "apt-get update failed: is the Debian archive reachable from this machine?"
    apt_updated=1
}

missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
    done
}

install_packages() {
    local missing
    missing=$(missing_packages "$@")
    [ -z "$missing" ] && return 0
    apt_update
    say "installing: $(echo $missing)"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/tmp/thinbox-apt.log 2>&1 \
        || { tail -30 /tmp/thinbox-apt.log >&2; die "apt-get install failed (full log: /tmp/thinbox-apt.log)"; }
}

enable_contrib
install_packages "${host_packages[@]}"

# --- release build tools --------------------------------------------------------
# scripts/package.sh links the release binary against glibc 2.28's symbols
# (RHEL 8's glibc) with zig as the C toolchain: PyPI's ziglang and
# crates.io's cargo-zigbuild, pinned, kept in the cache.
tools="$cache/tools"
if [ ! -x "$tools/ziglang/ziglang/zig" ]; then
    say "installing zig 0.13.0 (PyPI's ziglang) into $tools/ziglang"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$tools/ziglang" ziglang==0.13.0 \
        || die "pip install ziglang failed: is PyPI reachable?"
fi
if [ ! -x "$tools/bin/cargo-zigbuild" ]; then
    say "installing cargo-zigbuild 0.24.1 into $tools/bin"
    PATH="${HOME:-/root}/.cargo/bin:$PATH" cargo install --quiet --locked --root "$tools" cargo-zigbuild --version 0.24.1 \
        || die "cargo install cargo-zigbuild failed: is crates.io reachable?"
fi

# --- guest kernel --------------------------------------------------------------
kver=${THINBOX_GUEST_KERNEL:-}
if [ -z "$kver" ]; then
    if [ -f "$cache/vm/current" ] && [ -f "$cache/vm/$(cat "$cache/vm/current")/ready" ]; then
        kver=$(cat "$cache/vm/current")
    else
        apt_update
        kver=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*-amd64\)$/\1/p' | head -1)
        [ -n "$kver" ] || die "cannot tell which kernel linux-image-amd64 depends on: set THINBOX_GUEST_KERNEL, e.g. 6.1.0-56-amd64"
    fi
fi
dir="$cache/vm/$kver"

if [ -f "$dir/ready" ] && cmp -s "$dir/init" "$repo/integration/guest/initramfs-init"; then
    install_packages zfsutils-linux
    say "guest kernel $kver ready in $dir"
    exit 0
fi

say "preparing guest kernel $kver in $dir"
install_packages "linux-headers-$kver" zfs-dkms zfsutils-linux
mkdir -p "$dir"
work=$(mktemp -d "$cache/vm/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

mods="$dir/lib/modules/$kver"
if [ ! -f "$dir/vmlinuz" ] || [ ! -d "$mods/kernel" ]; then
    apt_update
    (cd "$work" && apt-get download -qq "linux-image-$kver" 2>/dev/null) \
        || die "cannot download linux-image-$kver from the Debian archive"
    dpkg-deb -x "$work"/linux-image-"$kver"_*.deb "$work/root"
    rm -rf "$dir/lib" "$dir/vmlinuz"
    mkdir -p "$dir/lib/modules"
    cp -a "$work/root/lib/modules/$kver" "$mods"
    cp "$work/root/boot/vmlinuz-$kver" "$dir/vmlinuz"
fi

# ZFS modules, built by DKMS for the guest kernel (about 4 minutes on 2 cores).
zver=$(dpkg-query -W -f='${Version}' zfs-dkms | sed 's/-.*//')
if ! dkms status -m zfs -v "$zver" -k "$kver" 2>/dev/null | grep -q installed; then
    say "building ZFS $zver modules for $kver with DKMS"
    # The package adds the source to DKMS; an earlier 'dkms remove' may have dropped it.
    dkms status -m zfs -v "$zver" 2>/dev/null | grep -q . || dkms add -m zfs -v "$zver" >/dev/null 2>&1 || true
    dkms build -m zfs -v "$zver" -k "$kver" >/tmp/thinbox-dkms.log 2>&1 \
        || { tail -30 /tmp/thinbox-dkms.log >&2; die "DKMS could not build ZFS $zver for $kver (log: /tmp/thinbox-dkms.log)"; }
    dkms install -m zfs -v "$zver" -k "$kver" --force >>/tmp/thinbox-dkms.log 2>&1 \
        || die "DKMS could not install ZFS $zver for $kver (log: /tmp/thinbox-dkms.log)"
fi
mkdir -p "$mods/updates/dkms"
cp /lib/modules/"$kver"/updates/dkms/*.ko "$mods/updates/dkms/"
depmod -b "$dir" "$kver" || die "depmod failed for the guest modules in $mods"

# The guest's chroot binds the cached modules over this directory.
mkdir -p "/lib/modules/$kver"

# Initramfs: static busybox, the virtio/9p modules in load order, the init.
mkdir -p "$work/initrd/bin" "$work/initrd/modules"
cp /bin/busybox "$work/initrd/bin/busybox"
cp "$repo/integration/guest/initramfs-init" "$work/initrd/init"
chmod 755 "$work/initrd/init"
: >"$work/initrd/modules.order"
for module in virtio_pci virtio_blk 9pnet_virtio 9p; do
    modprobe -d "$dir" -S "$kver" --show-depends "$module" | while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        name=$(basename "$path")
        grep -qx "$name" "$work/initrd/modules.order" && continue
        cp "$path" "$work/initrd/modules/$name"
        echo "$name" >>"$work/initrd/modules.order"
    done
done
grep -qx 9p.ko "$work/initrd/modules.order" || die "could not resolve the 9p module for $kver"
(cd "$work/initrd" && find . | cpio -o -H newc --quiet) >"$dir/initrd.cpio"
cp "$repo/integration/guest/initramfs-init" "$dir/init"
echo "$kver" >"$dir/kernel-version"
touch "$dir/ready"
echo "$kver" >"$cache/vm/current"
say "guest kernel $kver ready in $dir"

#!/usr/bin/env bash
# Installs everything thinbox's build and tests need on a fresh Debian 12
# machine, and prepares the Debian-kernel guests that run the dm-thin, LVM
# and ZFS tests. Idempotent: a second run only checks and costs seconds.
#
#   scripts/setup.sh            # as root
#
# Environment:
#   THINBOX_CACHE          where the guest kernel, modules and initramfs are
#                          cached (default /var/cache/thinbox)
#   THINBOX_GUEST_KERNEL   guest kernel ABI to use, e.g. 6.1.0-56-amd64
#                          (default: what Debian's linux-image-amd64 points to)
#   THINBOX_MATRIX_SUITES  the suites whose kernels make the kernel matrix
#                          (default "bullseye bookworm-backports": Debian's
#                          5.10 and 6.12; "none" prepares no extra kernel)
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

# The kernel matrix: bullseye's kernel (5.10) and bookworm-backports' (6.12),
# and ZFS 2.3 from backports (bookworm's 2.1 does not build for 6.12; 2.3
# builds for all three kernels, so every guest runs the one zfsutils). Both
# suites are pinned to 100: they give what bookworm lacks (gcc-10 for 5.10's
# modules) or what is asked of them by name, nothing else.
enable_matrix_suites() {
    local list=/etc/apt/sources.list.d/thinbox-kernel-matrix.sources uri
    [ -f "$list" ] && return 0
    uri=$(sed -n 's|^URIs:[[:space:]]*\([^[:space:]]*/debian\)/\{0,1\}[[:space:]]*$|\1|p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    cat >"$list" <<END
# Written by thinbox's scripts/setup.sh: the kernel matrix's guest kernels
# and ZFS 2.3 (pinned low in /etc/apt/preferences.d/thinbox-kernel-matrix).
Types: deb
URIs: $uri
Suites: bullseye bookworm-backports
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
END
    cat >/etc/apt/preferences.d/thinbox-kernel-matrix <<END
Package: *
Pin: release n=bullseye
Pin-Priority: 100
END
    say "added bullseye and bookworm-backports (pinned low) for the kernel matrix"
    apt_updated=0
}

zfs_suite=bookworm-backports
# zfs-dkms and zfsutils-linux from backports (an upgrade of bookworm's 2.1).
install_zfs() {
    local v
    v=$(dpkg-query -W -f='${Version} ' zfs-dkms zfsutils-linux 2>/dev/null || true)
    case "$v" in *bpo12*bpo12*) return 0 ;; esac
    apt_update
    say "installing zfs-dkms and zfsutils-linux from $zfs_suite"
    apt-get install -y -qq --no-install-recommends -t "$zfs_suite" zfs-dkms zfsutils-linux >/tmp/thinbox-apt.log 2>&1 \
        || { tail -30 /tmp/thinbox-apt.log >&2; die "apt-get install -t $zfs_suite zfs-dkms zfsutils-linux failed (full log: /tmp/thinbox-apt.log)"; }
}

enable_contrib
enable_matrix_suites
install_packages "${host_packages[@]}"
install_zfs

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

# --- guest kernels ---------------------------------------------------------------
# Each guest kernel lives in $cache/vm/KVER: vmlinuz, its modules with ZFS
# built by DKMS, an initramfs. vm/current names the default kernel, vm/matrix
# the extra ones.
zver=$(dpkg-query -W -f='${Version}' zfs-dkms | sed 's/-.*//')

guest_ready() { # DIR
    [ -f "$1/ready" ] && cmp -s "$1/init" "$repo/integration/guest/initramfs-init" \
        && [ "$(cat "$1/zfs-version" 2>/dev/null)" = "$zver" ]
}

# The kernel image and its modules, from the archive.
unpack_kernel() { # KVER DIR WORK
    local kver=$1 dir=$2 work=$3 mods="$2/lib/modules/$1"
    [ -f "$dir/vmlinuz" ] && [ -d "$mods/kernel" ] && return 0
    apt_update
    (cd "$work" && apt-get download -qq "linux-image-$kver" 2>/dev/null) \
        || die "cannot download linux-image-$kver from the Debian archive"
    dpkg-deb -x "$work"/linux-image-"$kver"_*.deb "$work/root"
    rm -rf "$dir/lib" "$dir/vmlinuz"
    mkdir -p "$dir/lib/modules"
    cp -a "$work/root/lib/modules/$kver" "$mods"
    cp "$work/root/boot/vmlinuz-$kver" "$dir/vmlinuz"
}

# DKMS builds ZFS for KVER against the kernel tree SOURCE_DIR (a build/
# directory with source/ beside it), about 4 minutes on 2 cores; prints
# where the built modules are.
build_zfs() { # KVER SOURCE_DIR
    local kver=$1 source_dir=$2
    if ! dkms status -m zfs -v "$zver" -k "$kver" 2>/dev/null | grep -qE 'built|installed'; then
        say "building ZFS $zver modules for $kver with DKMS" >&2
        # The package adds the source to DKMS; an earlier 'dkms remove' may have dropped it.
        dkms status -m zfs -v "$zver" 2>/dev/null | grep -q . || dkms add -m zfs -v "$zver" >/dev/null 2>&1 || true
        dkms build -m zfs -v "$zver" -k "$kver" --kernelsourcedir "$source_dir" >/tmp/thinbox-dkms.log 2>&1 \
            || { tail -30 /tmp/thinbox-dkms.log >&2; die "DKMS could not build ZFS $zver for $kver (log: /tmp/thinbox-dkms.log)"; }
    fi
    echo "/var/lib/dkms/zfs/$zver/$kver/$(uname -m)/module"
}

# ZFS's modules into DIR's module tree, depmod, and the initramfs: static
# busybox, the virtio/9p modules in load order (uncompressed: busybox's
# insmod takes plain modules), the init.
finish_guest() { # KVER DIR WORK BUILT_MODULES_DIR
    local kver=$1 dir=$2 work=$3 built=$4 mods="$2/lib/modules/$1" module kind path name
    rm -rf "$mods/updates/dkms"
    mkdir -p "$mods/updates/dkms"
    for path in "$built"/*.ko "$built"/*.ko.xz; do
        [ -f "$path" ] || continue
        case "$path" in
        *.xz) xz -dc "$path" >"$mods/updates/dkms/$(basename "$path" .xz)" ;;
        *) cp "$path" "$mods/updates/dkms/" ;;
        esac
    done
    [ -f "$mods/updates/dkms/zfs.ko" ] || die "no zfs.ko was built for $kver (looked in $built)"
    depmod -b "$dir" "$kver" || die "depmod failed for the guest modules in $mods"
    # The guest's chroot binds the cached modules over this directory.
    mkdir -p "/lib/modules/$kver"
    rm -rf "$work/initrd"
    mkdir -p "$work/initrd/bin" "$work/initrd/modules"
    cp /bin/busybox "$work/initrd/bin/busybox"
    cp "$repo/integration/guest/initramfs-init" "$work/initrd/init"
    chmod 755 "$work/initrd/init"
    : >"$work/initrd/modules.order"
    for module in virtio_pci virtio_blk 9pnet_virtio 9p; do
        modprobe -d "$dir" -S "$kver" --show-depends "$module" | while read -r kind path _; do
            [ "$kind" = insmod ] || continue
            name=$(basename "$path" .xz)
            grep -qx "$name" "$work/initrd/modules.order" && continue
            case "$path" in
            *.xz) xz -dc "$path" >"$work/initrd/modules/$name" ;;
            *) cp "$path" "$work/initrd/modules/$name" ;;
            esac
            echo "$name" >>"$work/initrd/modules.order"
        done
    done
    grep -qx 9p.ko "$work/initrd/modules.order" || die "could not resolve the 9p module for $kver"
    (cd "$work/initrd" && find . | cpio -o -H newc --quiet) >"$dir/initrd.cpio"
    cp "$repo/integration/guest/initramfs-init" "$dir/init"
    echo "$kver" >"$dir/kernel-version"
    echo "$zver" >"$dir/zfs-version"
    touch "$dir/ready"
}

# The default kernel: bookworm's, its headers installed from the archive.
prepare_default_kernel() {
    local kver=${THINBOX_GUEST_KERNEL:-} dir built
    if [ -z "$kver" ]; then
        if [ -f "$cache/vm/current" ] && guest_ready "$cache/vm/$(cat "$cache/vm/current")"; then
            kver=$(cat "$cache/vm/current")
        else
            apt_update
            kver=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*-amd64\)$/\1/p' | head -1)
            [ -n "$kver" ] || die "cannot tell which kernel linux-image-amd64 depends on: set THINBOX_GUEST_KERNEL, e.g. 6.1.0-56-amd64"
        fi
    fi
    dir="$cache/vm/$kver"
    if ! guest_ready "$dir"; then
        say "preparing guest kernel $kver in $dir"
        install_packages "linux-headers-$kver"
        mkdir -p "$dir"
        work=$(mktemp -d "$cache/vm/.work.XXXXXX")
        unpack_kernel "$kver" "$dir" "$work"
        built=$(build_zfs "$kver" "/lib/modules/$kver/build") || exit 1
        finish_guest "$kver" "$dir" "$work" "$built"
        rm -rf "$work"
        work=""
    fi
    echo "$kver" >"$cache/vm/current"
    say "guest kernel $kver ready in $dir"
}

# A matrix kernel: SUITE's linux-image-amd64. Its headers are unpacked into
# the work directory, not installed: 6.12's would pull a kernel image onto
# the host, and 5.10's are bullseye's. Only their compiler and kbuild's
# libraries are installed (gcc-10 and libssl1.1 from bullseye for 5.10;
# pahole for 6.12, whose headers carry vmlinux, so modules get BTF).
prepare_matrix_kernel() { # SUITE
    local suite=$1 kver="" ver dir tree common kbuild compiler deps deb built
    [ -f "$cache/vm/matrix-$suite" ] && kver=$(cat "$cache/vm/matrix-$suite")
    if [ -z "$kver" ] || ! guest_ready "$cache/vm/$kver"; then
        apt_update
        ver=$(apt-cache madison linux-image-amd64 | awk -F'|' -v s=" $suite/main " 'index($3, s) { gsub(/ /, "", $2); print $2; exit }')
        [ -n "$ver" ] || die "the Debian archive has no linux-image-amd64 in $suite (see /etc/apt/sources.list.d/thinbox-kernel-matrix.sources)"
        kver=$(apt-cache depends "linux-image-amd64=$ver" | sed -n 's/.*Depends: linux-image-\(.*-amd64\)$/\1/p' | head -1)
        [ -n "$kver" ] || die "cannot tell which kernel linux-image-amd64 $ver of $suite depends on"
    fi
    dir="$cache/vm/$kver"
    if ! guest_ready "$dir"; then
        say "preparing matrix kernel $kver ($suite) in $dir"
        mkdir -p "$dir"
        work=$(mktemp -d "$cache/vm/.work.XXXXXX")
        unpack_kernel "$kver" "$dir" "$work"
        common=$(apt-cache depends "linux-headers-$kver" | sed -n 's/^ *Depends: \(linux-headers-.*-common\)$/\1/p' | head -1)
        kbuild=$(apt-cache depends "linux-headers-$kver" | sed -n 's/^ *Depends: \(linux-kbuild-.*\)$/\1/p' | head -1)
        compiler=$(apt-cache depends "linux-headers-$kver" | sed -n 's/^ *Depends: \(linux-compiler-.*\)$/\1/p' | head -1)
        [ -n "$common" ] && [ -n "$kbuild" ] || die "cannot tell which packages linux-headers-$kver is made of"
        # shellcheck disable=SC2086
        deps=$(apt-cache depends "linux-headers-$kver" "$kbuild" $compiler \
            | sed -n 's/^ *Depends: \(gcc-[0-9]*\|lib[a-z0-9.+-]*\|pahole\)$/\1/p' | sort -u)
        # shellcheck disable=SC2086
        install_packages $deps
        (cd "$work" && apt-get download -qq "linux-headers-$kver" "$common" "$kbuild" 2>/dev/null) \
            || die "cannot download the headers of $kver from the Debian archive"
        tree="$work/headers"
        for deb in "$work"/linux-headers-*.deb "$work"/linux-kbuild-*.deb; do dpkg-deb -x "$deb" "$tree"; done
        # The headers name each other by absolute path: point them into the tree.
        sed -i "s|/usr/src/|$tree/usr/src/|g" "$tree/usr/src/linux-headers-$kver/Makefile"
        mkdir -p "$tree/lib/modules/$kver"
        ln -sfn "$tree/usr/src/linux-headers-$kver" "$tree/lib/modules/$kver/build"
        ln -sfn "$tree/usr/src/$common" "$tree/lib/modules/$kver/source"
        built=$(build_zfs "$kver" "$tree/lib/modules/$kver/build") || exit 1
        finish_guest "$kver" "$dir" "$work" "$built"
        # DKMS's record of this build points into the tree, which goes now.
        dkms remove -m zfs -v "$zver" -k "$kver" >/dev/null 2>&1 || true
        rm -rf "$work"
        work=""
    fi
    echo "$kver" >"$cache/vm/matrix-$suite"
    echo "$kver" >>"$cache/vm/matrix.new"
    say "matrix kernel $kver ($suite) ready in $dir"
}

mkdir -p "$cache/vm"
# The work directory of the kernel being prepared (global, for the trap).
work=""
trap '[ -z "$work" ] || rm -rf "$work"' EXIT
prepare_default_kernel
: >"$cache/vm/matrix.new"
suites=${THINBOX_MATRIX_SUITES:-bullseye bookworm-backports}
[ "$suites" = none ] && suites=""
for suite in $suites; do
    prepare_matrix_kernel "$suite"
done
mv "$cache/vm/matrix.new" "$cache/vm/matrix"

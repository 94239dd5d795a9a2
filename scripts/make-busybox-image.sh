#!/usr/bin/env bash
# make-busybox-image.sh OUT_DIR [NAME]
#
# Builds a one-layer OCI image layout (a directory, as `skopeo copy ...
# oci:DIR` writes) from Debian's busybox-static package, without any
# registry: /bin/busybox with a symlink per applet, /etc/passwd and
# /etc/group for root and nobody, and empty /tmp /proc /sys /dev /root.
# The config runs /bin/sh with PATH set; index.json names the image NAME
# (default busybox:latest) in org.opencontainers.image.ref.name.
#
# The package comes from `apt-get download busybox-static` (needs the apt
# lists: scripts/setup.sh runs apt-get update), or from the .deb named by
# BUSYBOX_DEB. The layer tar is deterministic (sorted names, owner 0:0,
# mtime 0, gzip -n), so the same package gives the same digests; OUT_DIR is
# replaced as a whole, so running twice gives the same layout.
#
# Then: thinbox image import OUT_DIR
set -euo pipefail
# shellcheck source=lib/oci-layout.sh
. "$(dirname "$0")/lib/oci-layout.sh"

die() {
    echo "make-busybox-image: $*" >&2
    exit 1
}

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 OUT_DIR [NAME]"
out=$1
name=${2:-busybox:latest}
oci_check_name "$name"
for tool in dpkg-deb dpkg sha256sum stat tar gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing (run scripts/setup.sh)"
done
oci_check_out "$out"

next=""
work=$(mktemp -d "${TMPDIR:-/tmp}/make-busybox-image.XXXXXX")
trap 'rm -rf "$work" ${next:+"$next"}' EXIT

# 1. The package.
deb=$(deb_of busybox-static "${BUSYBOX_DEB:-}")
version=$(dpkg-deb -f "$deb" Version)
arch=$(dpkg-deb -f "$deb" Architecture)
dpkg-deb -x "$deb" "$work/deb"
[ -x "$work/deb/bin/busybox" ] || die "$deb has no /bin/busybox"

# 2. The root filesystem.
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/root"
cp "$work/deb/bin/busybox" "$root/bin/busybox"
chmod 0755 "$root/bin/busybox"
applets=$("$root/bin/busybox" --list) || die "cannot run busybox --list (foreign architecture $arch?)"
[ -n "$applets" ] || die "busybox --list printed nothing"
while IFS= read -r applet; do
    case $applet in
        "" | busybox | */*) continue ;;
    esac
    ln -s busybox "$root/bin/$applet"
done <<<"$applets"
[ -L "$root/bin/sh" ] || die "busybox has no sh applet"
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$root/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
find "$root" -type d -exec chmod 0755 {} +
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"

# 3. The layer (deterministic tar) and the layout.
tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    -cf "$work/layer.tar" bin dev etc proc root sys tmp
oci_layout "$out" "$name" "$arch" "scripts/make-busybox-image.sh from busybox-static $version" \
    '["/bin/sh"]' "$work/layer.tar"
echo "wrote $out: $name (busybox-static $version, $arch), manifest sha256:$oci_manifest"

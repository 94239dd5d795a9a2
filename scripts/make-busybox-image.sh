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

die() {
    echo "make-busybox-image: $*" >&2
    exit 1
}

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 OUT_DIR [NAME]"
out=$1
name=${2:-busybox:latest}
case $name in
    *[\"\\]* | "" | *[[:space:]]*) die "NAME must be non-empty, without quotes, backslashes or spaces: $name" ;;
esac
for tool in dpkg-deb dpkg sha256sum stat tar gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing (run scripts/setup.sh)"
done
if [ -e "$out" ] && [ ! -e "$out/oci-layout" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
    die "$out exists and is not an OCI image layout; refusing to replace it"
fi

next=""
work=$(mktemp -d "${TMPDIR:-/tmp}/make-busybox-image.XXXXXX")
trap 'rm -rf "$work" ${next:+"$next"}' EXIT

# 1. The package.
if [ -n "${BUSYBOX_DEB:-}" ]; then
    [ -f "$BUSYBOX_DEB" ] || die "BUSYBOX_DEB=$BUSYBOX_DEB is not a file"
    deb=$BUSYBOX_DEB
else
    command -v apt-get >/dev/null || die "apt-get is missing; set BUSYBOX_DEB to a busybox-static .deb"
    # apt's download sandbox user cannot write to a root-owned mktemp dir.
    chmod 755 "$work"
    (cd "$work" && apt-get download -q busybox-static >"$work/apt.log" 2>&1) || {
        cat "$work/apt.log" >&2
        die "apt-get download busybox-static failed (run apt-get update, or set BUSYBOX_DEB)"
    }
    deb=$(ls "$work"/busybox-static_*.deb)
fi
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

# 3. The layer: deterministic tar, gzip without name or time.
tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    -cf "$work/layer.tar" bin dev etc proc root sys tmp
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

stage=$work/oci
mkdir -p "$stage/blobs/sha256"
blob() { # FILE -> prints its digest hex after storing it as a blob
    local h
    h=$(sha "$1")
    cp "$1" "$stage/blobs/sha256/$h"
    echo "$h"
}

diff_id=$(sha "$work/layer.tar")
layer=$(blob "$work/layer.tar.gz")
layer_size=$(size "$work/layer.tar.gz")

# 4. Config, manifest, index, oci-layout (JSON by printf, no tools needed).
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"scripts/make-busybox-image.sh from busybox-static %s"}]}' \
    "$arch" "$diff_id" "$version" >"$work/config.json"
config=$(blob "$work/config.json")
config_size=$(size "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
manifest=$(blob "$work/manifest.json")
manifest_size=$(size "$work/manifest.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$arch" "$name" >"$stage/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$stage/oci-layout"

# 5. Replace OUT_DIR as a whole: copy beside it, then swap, so an
#    interrupted run leaves the old layout or the new one, never a mix.
mkdir -p "$(dirname "$out")"
next="$out.new.$$"
rm -rf "$next"
cp -r "$stage" "$next"
rm -rf "$out"
mv "$next" "$out"
echo "wrote $out: $name (busybox-static $version, $arch), manifest sha256:$manifest"

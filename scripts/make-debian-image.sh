#!/usr/bin/env bash
# make-debian-image.sh OUT_DIR [NAME]
#
# Builds a three-layer OCI image layout from Debian packages, laid out as
# Debian and Ubuntu base images are, to prove that thinbox imports what
# real images contain (no registry needed):
#
#   1. base: busybox-static under a merged /usr (bin, sbin, lib, lib64 are
#      symlinks into usr/), var/run -> /run (absolute), etc/alternatives,
#      passwd and group;
#   2. libc6 and dash exactly as their .debs ship them: ./bin/dash,
#      ./lib/x86_64-linux-gnu/libc.so.6, ./lib64/ld-linux-x86-64.so.2 ->
#      /lib/x86_64-linux-gnu/... , all through layer 1's symlinks (the
#      directory entries of the merged directories are left out, as dpkg
#      leaves those directories alone);
#   3. local changes: var/run/app.pid (through the absolute symlink, so it
#      belongs at run/app.pid), an alternatives chain usr/bin/awk ->
#      /etc/alternatives/awk -> /bin/busybox, a hard link usr/bin/dash.hard
#      whose target usr/bin/dash is in layer 2 (across layers), and a
#      whiteout bin/.wh.wget through the bin symlink.
#
# The packages come from `apt-get download` (scripts/setup.sh runs apt-get
# update), or from the .debs named by BUSYBOX_DEB, LIBC6_DEB and DASH_DEB.
# Layers are deterministic (sorted names, owner 0:0, mtime 0, gzip -n).
# The image runs /bin/dash.
#
# Then: thinbox image import OUT_DIR
set -euo pipefail
# shellcheck source=lib/oci-layout.sh
. "$(dirname "$0")/lib/oci-layout.sh"

die() {
    echo "make-debian-image: $*" >&2
    exit 1
}

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 OUT_DIR [NAME]"
out=$1
name=${2:-debian-layers:latest}
oci_check_name "$name"
for tool in dpkg-deb sha256sum stat tar gzip; do
    command -v "$tool" >/dev/null || die "$tool is missing (run scripts/setup.sh)"
done
oci_check_out "$out"

next=""
work=$(mktemp -d "${TMPDIR:-/tmp}/make-debian-image.XXXXXX")
trap 'rm -rf "$work" ${next:+"$next"}' EXIT

busybox=$(deb_of busybox-static "${BUSYBOX_DEB:-}")
libc6=$(deb_of libc6 "${LIBC6_DEB:-}")
dash=$(deb_of dash "${DASH_DEB:-}")
arch=$(dpkg-deb -f "$libc6" Architecture)
versions="busybox-static $(dpkg-deb -f "$busybox" Version), libc6 $(dpkg-deb -f "$libc6" Version), dash $(dpkg-deb -f "$dash" Version)"

# A deterministic tar of the names on standard input (no recursion), run
# in directory $1, written to $2.
tar_list() {
    tar -C "$1" --no-recursion --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        --format=gnu -cf "$2" -T -
}

# 1. The merged-/usr base with busybox.
l1=$work/l1
mkdir -p "$l1/usr/bin" "$l1/usr/sbin" "$l1/usr/lib" "$l1/usr/lib64" "$l1/etc/alternatives" \
    "$l1/run" "$l1/var" "$l1/tmp" "$l1/proc" "$l1/sys" "$l1/dev" "$l1/root"
for d in bin sbin lib lib64; do
    ln -s "usr/$d" "$l1/$d"
done
ln -s /run "$l1/var/run"
dpkg-deb -x "$busybox" "$work/busybox"
install -m 0755 "$work/busybox/bin/busybox" "$l1/usr/bin/busybox"
applets=$("$l1/usr/bin/busybox" --list) || die "cannot run busybox --list (foreign architecture $arch?)"
while IFS= read -r applet; do
    case $applet in
        "" | busybox | */*) continue ;;
    esac
    ln -s busybox "$l1/usr/bin/$applet"
done <<<"$applets"
[ -L "$l1/usr/bin/wget" ] || die "busybox has no wget applet (layer 3 whites it out)"
printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$l1/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$l1/etc/group"
find "$l1" -type d -exec chmod 0755 {} +
chmod 1777 "$l1/tmp"
chmod 0700 "$l1/root"
(cd "$l1" && find . -mindepth 1 | sed 's|^\./||') | tar_list "$l1" "$work/layer1.tar"

# 2. libc6 and dash as shipped, minus the merged directories' own entries.
l2=$work/l2
mkdir -p "$l2"
dpkg-deb -x "$libc6" "$l2"
dpkg-deb -x "$dash" "$l2"
[ -f "$l2/bin/dash" ] || die "$dash has no ./bin/dash"
[ -e "$l2/lib/x86_64-linux-gnu/libc.so.6" ] || die "$libc6 has no ./lib/x86_64-linux-gnu/libc.so.6 (not amd64?)"
(cd "$l2" && find . -mindepth 1 | sed 's|^\./||' | grep -vxE 'bin|sbin|lib|lib64') \
    | tar_list "$l2" "$work/layer2.tar"

# 3. Local changes through the symlinks.
l3=$work/l3
mkdir -p "$l3/var/run" "$l3/usr/bin" "$l3/etc/alternatives" "$l3/bin"
echo 42 >"$l3/var/run/app.pid"
ln -s /bin/busybox "$l3/etc/alternatives/awk"
ln -s /etc/alternatives/awk "$l3/usr/bin/awk"
cp "$l2/bin/dash" "$l3/usr/bin/dash"
ln "$l3/usr/bin/dash" "$l3/usr/bin/dash.hard"
: >"$l3/bin/.wh.wget"
printf '%s\n' var/run/app.pid etc/alternatives/awk usr/bin/awk usr/bin/dash usr/bin/dash.hard bin/.wh.wget \
    | tar_list "$l3" "$work/layer3.tar"
# Keep only the link entry: its target, usr/bin/dash, comes from layer 2.
tar --delete -f "$work/layer3.tar" usr/bin/dash
# (Listed first, not piped into grep -q: with pipefail, grep quitting
# early would fail tar with SIGPIPE.)
listing=$(tar -tvf "$work/layer3.tar")
grep -q '^h.* usr/bin/dash.hard link to usr/bin/dash$' <<<"$listing" \
    || die "layer 3 lost its hard link entry"

oci_layout "$out" "$name" "$arch" "scripts/make-debian-image.sh from $versions" \
    '["/bin/dash"]' "$work/layer1.tar" "$work/layer2.tar" "$work/layer3.tar"
echo "wrote $out: $name ($versions, $arch), 3 layers, manifest sha256:$oci_manifest"

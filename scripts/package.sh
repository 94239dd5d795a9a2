#!/usr/bin/env bash
# Builds thinbox's packages: a .deb (Debian 12 and later) and an .rpm
# (RHEL/CentOS/Alma/Rocky 8 and later) from one release build:
#   /usr/bin/thinbox (stripped; glibc 2.28 or later is its only shared
#     library, C libraries such as libbtrfsutil linked in statically)
#   thinbox.service, thinbox-monitor@.service (systemd units)
#   /etc/thinbox/config.toml (the commented example, a config file kept
#     across upgrades)
#   man pages (thinbox.1, thinbox-SUBCOMMAND.1) and bash/zsh/fish completions
#   README, copyright
# Usage: scripts/package.sh [--out DIR] [--binary PATH]
#   --out     where the packages go (default target/package)
#   --binary  package this binary instead of building the release one
# Prints the packages' paths, last line `glibc floor: X.Y`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

out=target/package
binary=
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        *) echo "package.sh: unknown argument $1: use --out DIR or --binary PATH" >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb rpmbuild objdump gzip; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing: run scripts/setup.sh" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# Reproducible: every date is the last commit's.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
maintainer="thinbox developers <thinbox@example.org>"
# The oldest glibc the binary may need: RHEL 8's.
glibc_target=2.28

if [ -z "$binary" ]; then
    # zig links against glibc 2.28's symbol versions (RHEL 8, Debian 10 and
    # later); scripts/setup.sh installs it and cargo-zigbuild.
    tools=${THINBOX_CACHE:-/var/cache/thinbox}/tools
    [ -x "$tools/bin/cargo-zigbuild" ] && [ -x "$tools/ziglang/ziglang/zig" ] \
        || { echo "package.sh: zig or cargo-zigbuild is missing from $tools: run scripts/setup.sh" >&2; exit 1; }
    PATH="$tools/bin:$PATH" CARGO_ZIGBUILD_ZIG_PATH="$tools/ziglang/ziglang/zig" \
        RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--build-id=sha1" \
        cargo zigbuild --quiet --release --locked -p cli --target "x86_64-unknown-linux-gnu.$glibc_target"
    binary=target/x86_64-unknown-linux-gnu/release/thinbox
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- what the binary needs from the system ----------------------------------
needed=$(objdump -p "$binary" | awk '/NEEDED/ {print $2}' | sort)
for lib in $needed; do
    case $lib in
        # glibc's own libraries (zig links libgcc's parts in).
        libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|libutil.so.1|librt.so.1|ld-linux-x86-64.so.2) ;;
        *) echo "package.sh: $binary needs $lib: link it statically (.cargo/config.toml)" >&2; exit 1 ;;
    esac
done
glibc=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)

# --- the files, once -----------------------------------------------------------
common=$work/common
install -D -m 0755 "$binary" "$common/bin/thinbox"
strip --strip-unneeded --remove-section=.comment "$common/bin/thinbox"
"$common/bin/thinbox" manpages "$common/man"
gzip -9n "$common"/man/*.1
mkdir -p "$common/completions"
"$common/bin/thinbox" completions bash > "$common/completions/thinbox.bash"
"$common/bin/thinbox" completions zsh > "$common/completions/_thinbox"
"$common/bin/thinbox" completions fish > "$common/completions/thinbox.fish"
touch -d "@$SOURCE_DATE_EPOCH" "$common"/man/* "$common"/completions/*

# stage ROOT UNITDIR ZSHDIR DOCDIR: the tree both formats share.
stage() {
    local root=$1 unitdir=$2 zshdir=$3 docdir=$4
    install -D -m 0755 "$common/bin/thinbox" "$root/usr/bin/thinbox"
    install -D -m 0644 cli/systemd/thinbox.service "$root$unitdir/thinbox.service"
    install -D -m 0644 cli/systemd/thinbox-monitor@.service "$root$unitdir/thinbox-monitor@.service"
    install -D -m 0644 packaging/config.toml "$root/etc/thinbox/config.toml"
    install -d "$root/usr/share/man/man1"
    install -m 0644 "$common"/man/*.1.gz "$root/usr/share/man/man1/"
    install -D -m 0644 "$common/completions/thinbox.bash" "$root/usr/share/bash-completion/completions/thinbox"
    install -D -m 0644 "$common/completions/_thinbox" "$root$zshdir/_thinbox"
    install -D -m 0644 "$common/completions/thinbox.fish" "$root/usr/share/fish/vendor_completions.d/thinbox.fish"
    install -D -m 0644 README.md "$root$docdir/README.md"
    install -D -m 0644 packaging/copyright "$root$docdir/copyright"
}

# --- .deb ------------------------------------------------------------------------
deb=$work/deb
# Debian 12 keeps units in /lib (its usr-merge moves them later).
stage "$deb" /lib/systemd/system /usr/share/zsh/vendor-completions /usr/share/doc/thinbox
changelog_date=$(date -R -u -d "@$SOURCE_DATE_EPOCH")
printf 'thinbox (%s) unstable; urgency=medium\n\n  * Release %s: see README.md.\n\n -- %s  %s\n' \
    "$version" "$version" "$maintainer" "$changelog_date" | gzip -9n > "$deb/usr/share/doc/thinbox/changelog.gz"
mkdir -p "$deb/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$deb" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@GLIBC@/$glibc/" -e "s/@SIZE@/$installed_size/" \
    -e "s/@MAINTAINER@/$maintainer/" packaging/deb/control > "$deb/DEBIAN/control"
install -m 0644 packaging/deb/conffiles "$deb/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "packaging/deb/$script" "$deb/DEBIAN/$script"
done
(cd "$deb" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$deb/DEBIAN/md5sums"
find "$deb" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb_file="$out/thinbox_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$deb" "$deb_file" >/dev/null

# --- .rpm --------------------------------------------------------------------------
rpm=$work/rpm
stage "$rpm/stage" /usr/lib/systemd/system /usr/share/zsh/site-functions /usr/share/doc/thinbox
mkdir -p "$rpm"/{BUILD,RPMS,SOURCES,SPECS,SRPMS,tmp}
rpmbuild --quiet -bb packaging/thinbox.spec \
    --define "_topdir $rpm" \
    --define "_tmppath $rpm/tmp" \
    --define "_buildhost thinbox.build" \
    --define "stage $rpm/stage" \
    --define "version $version" \
    --define "glibc $glibc" \
    --define "maintainer $maintainer" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    >/dev/null
rpm_file="$out/thinbox-${version}-1.x86_64.rpm"
mv "$rpm"/RPMS/x86_64/thinbox-"$version"-1.*.rpm "$rpm_file"

echo "$deb_file"
echo "$rpm_file"
echo "glibc floor: $glibc"

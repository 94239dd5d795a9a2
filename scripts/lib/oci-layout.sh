# Sourced by the make-*-image.sh scripts: writes an OCI image layout from
# layer tars, deterministically, without a registry or any JSON tool.
#
#   oci_layout OUT_DIR NAME ARCH HISTORY CMD_JSON LAYER.tar...
#
# Each LAYER.tar (uncompressed) becomes a gzip -n -9 blob; the config lists
# their diff_ids in order, sets PATH and runs CMD_JSON (a JSON array);
# index.json names the image NAME in org.opencontainers.image.ref.name.
# OUT_DIR is replaced as a whole (copied beside it, then swapped), so an
# interrupted run leaves the old layout or the new one, never a mix.
# Sets oci_manifest to the manifest's digest hex. Needs $work (a scratch
# directory); sets $next while it swaps, for the caller's EXIT trap.

oci_layout() {
    local out=$1 name=$2 arch=$3 history=$4 cmd=$5
    shift 5
    local stage=$work/oci diff_ids="" layers="" tar gz h
    rm -rf "$stage"
    mkdir -p "$stage/blobs/sha256"
    for tar in "$@"; do
        gz=$tar.gz
        gzip -n -9 <"$tar" >"$gz"
        h=$(_oci_blob "$stage" "$gz")
        diff_ids="$diff_ids${diff_ids:+,}\"sha256:$(_oci_sha "$tar")\""
        layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$h\",\"size\":$(stat -c %s "$gz")}"
    done
    printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[{"created_by":"%s"}]}' \
        "$arch" "$cmd" "$diff_ids" "$history" >"$work/config.json"
    local config config_size manifest manifest_size
    config=$(_oci_blob "$stage" "$work/config.json")
    config_size=$(stat -c %s "$work/config.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
        "$config" "$config_size" "$layers" >"$work/manifest.json"
    manifest=$(_oci_blob "$stage" "$work/manifest.json")
    manifest_size=$(stat -c %s "$work/manifest.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "$manifest" "$manifest_size" "$arch" "$name" >"$stage/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$stage/oci-layout"

    mkdir -p "$(dirname "$out")"
    next="$out.new.$$"
    rm -rf "$next"
    cp -r "$stage" "$next"
    rm -rf "$out"
    mv "$next" "$out"
    next=""
    oci_manifest=$manifest
}

_oci_sha() { sha256sum "$1" | cut -d' ' -f1; }

# Stores FILE as a blob of layout STAGE; prints its digest hex.
_oci_blob() {
    local h
    h=$(_oci_sha "$2")
    cp "$2" "$1/blobs/sha256/$h"
    echo "$h"
}

# Checks NAME for what index.json can hold.
oci_check_name() {
    case $1 in
        *[\"\\]* | "" | *[[:space:]]*) die "NAME must be non-empty, without quotes, backslashes or spaces: $1" ;;
    esac
}

# Refuses to replace OUT_DIR unless it is an OCI layout or empty.
oci_check_out() {
    if [ -e "$1" ] && [ ! -e "$1/oci-layout" ] && [ -n "$(ls -A "$1" 2>/dev/null)" ]; then
        die "$1 exists and is not an OCI image layout; refusing to replace it"
    fi
}

# Downloads Debian package PKG into $work (apt-get download, as the apt
# sandbox user can read it) unless VAR names a .deb; prints the .deb's path.
deb_of() {
    local pkg=$1 given=$2
    if [ -n "$given" ]; then
        [ -f "$given" ] || die "$given (for $pkg) is not a file"
        echo "$given"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get is missing; give a $pkg .deb instead"
    chmod 755 "$work"
    (cd "$work" && apt-get download -q "$pkg" >"$work/apt-$pkg.log" 2>&1) || {
        cat "$work/apt-$pkg.log" >&2
        die "apt-get download $pkg failed (run apt-get update, or give its .deb)"
    }
    ls "$work/${pkg}_"*.deb
}

#!/usr/bin/env bash
# thinbox's main job on a fresh machine (as root):
#
#  1. installs what thinbox needs (scripts/setup.sh) and builds `thinbox`;
#  2. builds an OCI image layout from Debian's busybox-static package with
#     the project's own script (no registry: scripts/make-busybox-image.sh);
#  3. imports it (`thinbox image import`): every blob's sha256 checked, its
#     layer a committed snapshot named by its chain id;
#  4. runs a container from it with a memory limit (`thinbox run --memory`)
#     on the embedded default backend (a loopback dm-thin pool when the
#     kernel has dm-thin, else a loopback btrfs filesystem, under
#     /var/lib/thinbox; thinbox says which and why the first time), printing
#     the container's output and its exit reason;
#  5. runs a memory hog under a small limit, to show an OOM kill reported
#     as such (exit 137, reason oom_killed) instead of a bare 137.
#
# Rerunning it is fine: the image is imported once, containers use --rm.
# THINBOX_ROOT moves the state (default /var/lib/thinbox).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
step() { echo; echo "== main: $*"; }

step "building thinbox"
cargo build --quiet -p cli --bin thinbox
thinbox() {
    if [ -n "${THINBOX_ROOT:-}" ]; then
        target/debug/thinbox --root "$THINBOX_ROOT" "$@"
    else
        target/debug/thinbox "$@"
    fi
}

image=busybox:latest
layout=/var/cache/thinbox/images/busybox
step "building an OCI image of Debian's busybox-static in $layout"
scripts/make-busybox-image.sh "$layout" "$image"

step "importing $image"
# The first command on a fresh root chooses the backend and says which and why.
thinbox image ls >/dev/null
if thinbox image inspect "$image" >/dev/null 2>&1; then
    echo "$image is already imported"
else
    thinbox image import "$layout"
fi
thinbox image ls

step "running a container from $image with a 64 MiB memory limit"
thinbox run --rm --memory 64M --pids 64 "$image" -- sh -c '
    echo "hello from $(hostname), pid $$ in its own namespaces"
    echo "root filesystem:"; df -h / | tail -n 1
    if [ -e /sys/fs/cgroup/memory.max ]; then
        echo "memory limit: $(cat /sys/fs/cgroup/memory.max) bytes"
    else
        echo "memory limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes) bytes"
    fi
    echo "processes visible: $(ls -d /proc/[0-9]* | wc -l)"'

step "a memory hog under a 32 MiB limit is OOM-killed and reported as such"
set +e
thinbox run --rm --memory 32M "$image" -- sh -c 'x=$(head -c 200000000 /dev/zero | tr "\0" a); echo "not reached"'
code=$?
set -e
echo "thinbox run exited with $code (128 + SIGKILL)"
[ "$code" = 137 ] || { echo "main: expected the OOM kill (137), got $code" >&2; exit 1; }

step "done: $image stays imported; thinbox image ls / thinbox run / thinbox ps -a"

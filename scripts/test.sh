#!/usr/bin/env bash
# Runs ALL of thinbox's tests: plain tests and host real-kernel tests on this
# machine, dm-thin / LVM / ZFS / cgroup-layout tests inside the Debian-kernel
# VM. Installs what is missing first (scripts/setup.sh). Ends with
#   host: N passed, N failed
#   vm: N passed, N failed
#   total: N passed, N failed
# Arguments go to thinbox-test: [--host-only | --vm-only] [FILTER].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
cargo build --quiet -p integration --bin thinbox-test
exec target/debug/thinbox-test "$@"

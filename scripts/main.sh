#!/usr/bin/env bash
# thinbox's main job on a fresh machine.
#
# What it will be (issue "thinbox CLI"): build thinbox, make an OCI image
# from Debian's busybox-static, import it and run a container from it on the
# embedded default backend with a memory limit, printing its output and exit
# reason.
#
# What works today: it installs everything (scripts/setup.sh), builds the
# workspace, and proves the device-mapper platform thinbox stands on by
# booting Debian's kernel in the test VM and making a thin-pool, a thin
# device and a snapshot there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
export PATH="${HOME:-/root}/.cargo/bin:$PATH"
echo "main: building thinbox"
cargo build --quiet --workspace --bins
echo "main: the thinbox CLI is not built yet; showing the dm-thin platform in the VM instead"
target/debug/thinbox-vm info
target/debug/thinbox-vm run -- sh -c '
set -e
cd /tmp
truncate -s 16M meta && truncate -s 512M data
meta=$(losetup --find --show meta); data=$(losetup --find --show data)
dmsetup create demo-pool --table "0 1048576 thin-pool $meta $data 128 1024"
dmsetup message demo-pool 0 "create_thin 0"
dmsetup create demo-thin --table "0 2097152 thin /dev/dm-0 0"
dmsetup message demo-pool 0 "create_snap 1 0"
echo "dm targets:"; dmsetup targets | grep thin
echo "devices:"; dmsetup ls
echo "pool status:"; dmsetup status demo-pool
'

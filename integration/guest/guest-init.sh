# thinbox guest setup, run as PID 1 in a chroot of the host's (read-only) root.
# The harness prepends the variables THINBOX_VM_CGROUP, THINBOX_VM_KVER,
# THINBOX_VM_MODULES and the exported test environment.
share=/run/thinbox-vm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

finish() {
    dmesg >"$share/dmesg" 2>&1
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}
fail() {
    echo "thinbox-guest: $*" >/dev/console
    echo "thinbox-guest: $*" >>"$share/setup-errors"
    finish
}

mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "cannot mount /dev"
# The harness boots again after a kernel panic only if this line is missing.
echo "thinbox-guest: started" >/dev/console
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue
# Keep the host's /tmp and /var/tmp reachable before the guest's own tmpfs
# hides them: a checkout (and its test binaries) may live there.
mkdir -p /run/host/tmp /run/host/var/tmp
mount --bind /tmp /run/host/tmp
mount --bind /var/tmp /run/host/var/tmp
# Sized past RAM (tmpfs takes pages only as they are written) so the
# sparse pool files tests make fit the room thinbox checks for them.
mount -t tmpfs -o mode=1777,size=16g tmpfs /tmp || fail "cannot mount /tmp"
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
# THINBOX_VM_KEEP: host paths (colon-separated) the command needs, e.g. the
# workspace; those under /tmp or /var/tmp are bound back in place, read-only.
old_ifs=$IFS
IFS=:
for path in $THINBOX_VM_KEEP; do
    case "$path" in
    /tmp/* | /var/tmp/*)
        # Sorted: a path below one bound already is visible through it.
        [ -e "$path" ] && continue
        mkdir -p "$path" && mount --bind "/run/host$path" "$path" \
            || fail "cannot make the host path $path visible in the guest"
        ;;
    esac
done
IFS=$old_ifs
mkdir -p /run/lock /run/lvm /run/user
echo 1 >/proc/sys/kernel/sysrq

# The guest kernel's modules (with ZFS built by DKMS) come from the cache.
mount --bind "$THINBOX_VM_MODULES" "/lib/modules/$THINBOX_VM_KVER" \
    || fail "cannot bind the guest modules over /lib/modules/$THINBOX_VM_KVER (run scripts/setup.sh)"

# Tools that write under /etc get a private writable copy.
for dir in /etc/lvm /etc/zfs; do
    if [ -d "$dir" ]; then
        copy="/run/etc-copy$dir"
        mkdir -p "$copy" && cp -a "$dir/." "$copy/" && mount --bind "$copy" "$dir"
    fi
done
# No udev here: LVM must make its own device nodes and not wait for udev.
if [ -f /etc/lvm/lvm.conf ]; then
    printf 'activation {\n\tudev_sync = 0\n\tudev_rules = 0\n}\ndevices {\n\tobtain_device_list_from_udev = 0\n}\n' >>/etc/lvm/lvm.conf
fi

mount_v1_controllers() {
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup || fail "cannot mount the cgroup tmpfs"
    # One hierarchy per controller, co-mounted the way RHEL and systemd do it.
    for group in cpu,cpuacct cpuset memory devices freezer net_cls,net_prio blkio pids perf_event hugetlb rdma misc; do
        first=${group%%,*}
        grep -q "^$first[[:space:]].*1\$" /proc/cgroups || continue
        mkdir -p "/sys/fs/cgroup/$group"
        if ! mount -t cgroup -o "$group" cgroup "/sys/fs/cgroup/$group" 2>/dev/null; then
            # A kernel may build a controller for v2 only (Debian's 6.12:
            # no CONFIG_MEMCG_V1, no CONFIG_CPUSETS_V1), as RHEL 10 does:
            # the layout goes without it, as such a host's does.
            echo "thinbox-guest: cgroup v1 $group is not in this kernel (v2 only)" >/dev/console
            rmdir "/sys/fs/cgroup/$group"
            continue
        fi
        if [ "$group" != "$first" ]; then
            for member in $(echo "$group" | tr , ' '); do
                ln -s "$group" "/sys/fs/cgroup/$member"
            done
        fi
    done
}

case "$THINBOX_VM_CGROUP" in
v2)
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
    ;;
v1)
    mount_v1_controllers
    ;;
hybrid)
    mount_v1_controllers
    mkdir -p /sys/fs/cgroup/unified
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup/unified || fail "cannot mount cgroup2 at unified"
    ;;
*)
    fail "unknown cgroup layout '$THINBOX_VM_CGROUP'"
    ;;
esac

for module in loop dm-mod dm-thin-pool dm-snapshot btrfs ext4 xfs overlay; do
    modprobe "$module" || fail "cannot load module $module"
done
if [ -n "$THINBOX_VM_ZFS" ]; then
    modprobe zfs || fail "cannot load the zfs module built by DKMS"
fi
ip link set lo up 2>/dev/null

cd /
sh "$share/command" >"$share/stdout" 2>"$share/stderr" </dev/null
echo $? >"$share/status"
finish

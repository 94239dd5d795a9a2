//! Backends that claim exact usage ([`snapshotter::Capabilities::exact_usage`])
//! report, byte for byte, what the kernel's own tools say of the same
//! snapshot: `btrfs qgroup show` (exclusive), `zfs get used`, `thin_ls`
//! (exclusive bytes of the thin device). `usage_excludes_parent` only
//! checks bounds that hold for estimates too.

use super::*;
use snapshotter::{Key, Labels, MountGuard, Name, Usage};

/// A committed parent with 8 MiB and a child that wrote 3 MiB more, its
/// usage, and its mounts (still prepared).
fn parent_and_child(sn: &dyn Snapshotter, work: &Path) -> (Usage, Vec<snapshotter::MountSpec>) {
    let write = |key: &Key, parent: Option<&Name>, file: &str, mib: u32| {
        let m = sn.prepare(key, parent, &Labels::new()).unwrap();
        let dir = work.join(key.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        let g = MountGuard::new(&m, &dir).unwrap();
        // Pseudo-random (xorshift64): ZFS 2.2 and later compress by
        // default, and a repeating pattern would take almost no blocks.
        let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(mib);
        let data: Vec<u8> = (0..(mib << 17))
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        std::fs::write(dir.join(file), data).unwrap();
        run("sync", &[]);
        g.unmount().unwrap();
        m
    };
    let base = Key::new("base").unwrap();
    write(&base, None, "eight", 8);
    let parent = Name::new("parent").unwrap();
    sn.commit(&parent, &base, &Labels::new()).unwrap();
    let child = Key::new("child").unwrap();
    let m = write(&child, Some(&parent), "three", 3);
    let usage = sn.usage(&child).unwrap();
    assert!(sn.capabilities().exact_usage);
    (usage, m)
}

/// The number in column `col` of the line of `out` whose first field is `key`.
fn field(out: &str, key: &str, col: usize) -> u64 {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&key))
        .and_then(|f| f.get(col)?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

pub fn btrfs_usage_is_the_qgroups() {
    let fs = btrfs_fs();
    run(
        "btrfs",
        &["quota", "enable", fs.mount.target.to_str().unwrap()],
    );
    let root = fs.mount.target.join("root");
    let sn = Btrfs::open(&root).unwrap();
    let (usage, m) = parent_and_child(&sn, fs.mount.target.as_path());
    let path = &m[0].source;
    let id = field(&run("btrfs", &["subvolume", "show", path]), "Subvolume", 2);
    let out = run("btrfs", &["qgroup", "show", "--raw", "-f", path]);
    let exclusive = field(&out, &format!("0/{id}"), 2);
    assert_eq!(usage.size.0, exclusive, "btrfs qgroup show says {out}");
    assert!(usage.size.0 >= 3 << 20);
}

pub fn zfs_usage_is_used() {
    let pool = zfs_pool();
    let sn = Zfs::open(&pool.zpool.dir.path().join("root"), &pool.dataset).unwrap();
    let (usage, m) = parent_and_child(&sn, pool.zpool.dir.path());
    let used: u64 = run("zfs", &["get", "-Hp", "-o", "value", "used", &m[0].source])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(usage.size.0, used);
    assert!(usage.size.0 >= 3 << 20);
}

pub fn devmapper_usage_is_thin_ls() {
    use std::os::unix::fs::MetadataExt;
    let pool = thin_pool();
    let sn = pool.open(&pool.dir.path().join("root"), DM_CONFIG);
    let (usage, m) = parent_and_child(&*sn, pool.dir.path());
    let dev = std::fs::metadata(&m[0].source).unwrap().rdev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let table = run(
        "dmsetup",
        &["table", "-j", &major.to_string(), "-m", &minor.to_string()],
    );
    let thin_id = table.split_whitespace().last().unwrap().to_owned();
    let meta = pool.pool_dir.join("metadata");
    let meta_loop = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end()) == meta)
        })
        .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
        .expect("the metadata loop device");
    run(
        "dmsetup",
        &["message", &pool.name, "0", "reserve_metadata_snap"],
    );
    let out = std::process::Command::new("thin_ls")
        .args([
            "--metadata-snap",
            "--no-headers",
            "-o",
            "DEV,EXCLUSIVE_BYTES",
            &meta_loop,
        ])
        .output()
        .unwrap();
    run(
        "dmsetup",
        &["message", &pool.name, "0", "release_metadata_snap"],
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(usage.size.0, field(&out, &thin_id, 1), "thin_ls says {out}");
    assert!(usage.size.0 >= 3 << 20);
}

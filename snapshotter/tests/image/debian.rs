//! A real multi-layer image built from Debian packages by
//! `scripts/make-debian-image.sh`: usrmerge symlinks, `var/run -> /run`,
//! an `/etc/alternatives` chain, a hard link across layers and a whiteout
//! through a symlink all land where containerd and Docker put them.

use super::*;
use std::os::unix::fs::MetadataExt;

fn readlink(root: &Path, rel: &str) -> String {
    fs::read_link(root.join(rel))
        .unwrap_or_else(|e| panic!("/{rel} is not a symlink: {e}"))
        .to_string_lossy()
        .into_owned()
}

pub(super) fn debian_script(env: &Env<'_>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-debian-image.sh");
    let out = env.path("debian-oci");
    run(
        script.to_str().unwrap(),
        &[out.to_str().unwrap(), "debian-layers:test"],
    );
    let images = env.images();
    let img = import(env, &images, &out, None).unwrap().remove(0);
    assert_eq!(img.name, "debian-layers:test");
    assert_eq!(img.layers.len(), 3, "{img:?}");
    let (g, key) = env.view(&img.top_snapshot().unwrap(), "debian");
    let root = g.target().to_owned();
    // Layer 1's symlinks survive layers that write through them.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "/run"),
    ] {
        assert_eq!(readlink(&root, link), target, "/{link}");
    }
    // Layer 2 as shipped: ./bin/dash and ./lib/... end up under usr/.
    assert!(root.join("usr/bin/dash").is_file());
    assert!(root.join("usr/lib/x86_64-linux-gnu/libc.so.6").is_file());
    assert_eq!(
        readlink(&root, "usr/lib64/ld-linux-x86-64.so.2"),
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    );
    // Layer 3: through the absolute var/run symlink into run/.
    assert_eq!(fs::read(root.join("run/app.pid")).unwrap(), b"42\n");
    assert_eq!(readlink(&root, "usr/bin/awk"), "/etc/alternatives/awk");
    assert_eq!(readlink(&root, "etc/alternatives/awk"), "/bin/busybox");
    let dash = fs::metadata(root.join("usr/bin/dash")).unwrap();
    let hard = fs::metadata(root.join("usr/bin/dash.hard")).unwrap();
    assert_eq!(dash.ino(), hard.ino(), "the hard link across layers");
    assert_eq!(dash.nlink(), 2);
    assert!(
        fs::symlink_metadata(root.join("usr/bin/wget")).is_err(),
        "bin/.wh.wget removed usr/bin/wget"
    );
    assert!(root.join("usr/bin/wc").exists(), "the other applets stay");
    env.drop_view(g, key);
}

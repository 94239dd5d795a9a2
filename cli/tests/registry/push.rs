//! `thinbox image push` against the real registry (see registry.rs).

use serde_json::Value;

use crate::cli_support::{busybox_spec, Root};
use crate::{layout, pull, root_for};
use integration::registry::{free_port, Registry, RegistryOptions};

/// Access-log lines of thinbox's requests with `method` whose path has `part`.
fn requests(reg: &Registry, method: &str, part: &str) -> usize {
    reg.log()
        .lines()
        .filter(|l| {
            l.contains(&format!("\"{method} /v2/")) && l.contains(part) && l.contains("\"thinbox/")
        })
        .count()
}

/// `skopeo inspect` of an image in `reg`: its JSON.
fn skopeo_inspect(reg: &Registry, name: &str) -> Value {
    reg.inspect(name)
        .unwrap_or_else(|| panic!("no {name} in the registry"))
}

/// `run --commit`, pushed; skopeo and a fresh root see it; a second push
/// sends nothing; a push to another repository mounts every blob; small
/// chunks go as PATCHes; and the bad cases.
pub fn push_a_committed_image() {
    push_from(root_for);
}

/// The same from dm-thin roots (in the VM): the layers are diffs of thin
/// snapshots.
pub fn push_on_dm_thin() {
    push_from(|section| {
        let root = Root::with_config(&format!("backend = \"devmapper\"\n[registry]\n{section}"));
        root.ok(&["snapshot", "ls"]);
        root
    });
}

fn push_from(root_for: impl Fn(&str) -> Root) {
    let reg = Registry::start(RegistryOptions::default());
    let img = layout(&busybox_spec("busybox:1"));
    reg.push(img.path(), "library/busybox:1", false);
    let root = root_for("");
    let base = format!("{}/library/busybox:1", reg.host);
    pull(&root, &[&base]);
    root.ok(&[
        "run",
        "--commit",
        "app:1",
        &base,
        "--",
        "sh",
        "-c",
        "echo changed >/etc/motd",
    ]);
    let layers = root.json(&["image", "inspect", "app:1"])["layers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(layers, 2);

    let target = format!("{}/team/app:1", reg.host);
    let p = root.json(&["image", "push", "app:1", &target]);
    assert_eq!(p["blobs_monolithic"], layers + 1, "layers and config: {p}");
    assert_eq!(p["blobs_present"], 0, "{p}");
    let manifest = p["manifest"].as_str().unwrap().to_owned();
    assert_eq!(p["reference"], format!("{target}@{manifest}"), "{p}");
    let seen = skopeo_inspect(&reg, "team/app:1");
    assert_eq!(seen["Digest"], manifest.as_str(), "{seen}");
    assert_eq!(seen["Layers"].as_array().unwrap().len(), layers, "{seen}");
    assert_eq!(reg.digest("team/app:1"), manifest);

    // Pulled into a fresh root and run: the committed change is there.
    let back = root_for("");
    pull(&back, &[&target]);
    assert_eq!(
        back.ok(&["run", "--rm", &target, "--", "cat", "/etc/motd"]),
        "changed\n"
    );

    // The export is deterministic: a second push sends no byte.
    let patches_before = requests(&reg, "PATCH", "/blobs/uploads/");
    let again = root.json(&["image", "push", "app:1", &target]);
    assert_eq!(again["blobs_present"], layers + 1, "{again}");
    assert_eq!(again["bytes_uploaded"], 0, "{again}");
    assert_eq!(again["manifest"], manifest.as_str(), "{again}");

    // Another repository: every blob mounted from team/app.
    let other = format!("{}/other/app:2", reg.host);
    let m = root.json(&["image", "push", "app:1", &other]);
    assert_eq!(m["blobs_mounted"], layers + 1, "{m}");
    assert_eq!(m["bytes_uploaded"], 0, "{m}");
    assert!(requests(&reg, "POST", "mount=") > layers);
    assert_eq!(
        skopeo_inspect(&reg, "other/app:2")["Digest"],
        manifest.as_str()
    );

    // A pulled image's kept blobs mount from where it was pulled.
    let mirrored = format!("{}/mirrored/app:1", reg.host);
    let p = back.json(&["image", "push", &target, &mirrored]);
    assert_eq!(p["blobs_mounted"], layers + 1, "{p}");
    assert_eq!(p["manifest"], manifest.as_str(), "byte for byte: {p}");

    // Chunks, to a registry with nothing yet: 4 KiB a PATCH.
    let reg2 = Registry::start(RegistryOptions::default());
    let chunked = format!("{}/chunked/app:1", reg2.host);
    let c = root.json(&["image", "push", "--chunk-size", "4096", "app:1", &chunked]);
    assert!(c["blobs_chunked"].as_u64().unwrap() >= 1, "{c}");
    assert!(requests(&reg2, "PATCH", "/blobs/uploads/") > 10);
    assert_eq!(requests(&reg, "PATCH", "/blobs/uploads/"), patches_before);
    let seen = skopeo_inspect(&reg2, "chunked/app:1");
    assert_eq!(seen["Digest"], c["manifest"], "{seen}");
    assert_eq!(c["manifest"], manifest.as_str(), "the same export");

    // Killed after its first blob: the tag is not there (the manifest
    // goes last); the next push sends only what is missing.
    let killed = format!("{}/killed/app:1", reg.host);
    let out = back
        .command(&["image", "push", &target, &killed])
        .env("THINBOX_CRASH_AT", "push-blob-sent")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        reg.inspect("killed/app:1").is_none(),
        "a killed push left a tag"
    );
    let k = back.json(&["image", "push", &target, &killed]);
    assert_eq!(k["blobs_present"], 1, "the blob sent before the kill: {k}");
    assert_eq!(
        skopeo_inspect(&reg, "killed/app:1")["Digest"],
        manifest.as_str()
    );

    // A pulled image goes byte for byte (its blobs were kept), every blob
    // mounted from the repository it came from.
    let copy = format!("{}/team/busybox:1", reg.host);
    let b = root.json(&["image", "push", &base, &copy]);
    assert_eq!(b["manifest"], reg.digest("library/busybox:1"), "{b}");
    assert_eq!(b["blobs_mounted"], 2, "config and layer: {b}");
    assert_eq!(b["bytes_uploaded"], 0, "{b}");
    assert_eq!(
        reg.digest("team/busybox:1"),
        reg.digest("library/busybox:1")
    );
    // Removing the image sweeps its kept blobs (the committed image that
    // shares its layer has none kept).
    let kept = root.path().join("content/blobs/sha256");
    assert_eq!(
        std::fs::read_dir(&kept).unwrap().count(),
        3,
        "manifest, config, layer"
    );
    root.ok(&["image", "rm", &base]);
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 0);
    assert!(root.ok(&["image", "ls"]).contains("app:1"));

    // Bad input: one line, the right exit code.
    let line = root.fails(&["image", "push", "nosuch:1", &target], 3);
    assert!(line.contains("nosuch"), "{line}");
    let line = root.fails(
        &[
            "image",
            "push",
            "app:1",
            &format!("{}/x@sha256:{}", reg.host, "a".repeat(64)),
        ],
        2,
    );
    assert!(line.contains("not a digest"), "{line}");
    let closed = format!("127.0.0.1:{}/x:1", free_port());
    let line = root.fails(&["image", "push", "app:1", &closed], 9);
    assert!(line.contains("127.0.0.1"), "{line}");
    let private = Registry::start(RegistryOptions {
        user: Some(("pusher", "secret")),
        ..RegistryOptions::default()
    });
    let line = root.fails(
        &[
            "image",
            "push",
            "app:1",
            &format!("{}/team/app:1", private.host),
        ],
        8,
    );
    assert!(line.contains("log in"), "{line}");
}

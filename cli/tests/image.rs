//! `thinbox image ...` through the real binary on the host's embedded
//! default (loopback btrfs): import of an OCI layout directory, an OCI tar
//! and a docker-save tar with `--json` parsed, layers shared between
//! images stored once, ls/inspect/rm; and bad input (not an image, digest
//! mismatch, truncated layer, name in use, rm while a container's root
//! sits on the image), each one line on stderr, a non-zero exit and
//! nothing left behind. Images are written by `snapshotter::image::write`,
//! and one from Debian packages by `scripts/make-debian-image.sh`.
#![forbid(unsafe_code)]

mod cli_support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use cli_support::{snapshots, Root};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use snapshotter::image::write::{self, Compression, Entry, ImageSpec};
use snapshotter::image::{chain_ids, Digest, ImageConfig};

const BTRFS: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs];
const DM_THIN: &[Need] = &[Need::Root, Need::Loop, Need::DmThin];

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new("image_commands_happy_path", image_commands_happy_path).needs(BTRFS),
        KernelTest::new("image_bad_input", image_bad_input).needs(BTRFS),
        KernelTest::new("debian_image_runs", debian_image_runs).needs(BTRFS),
        // In the VM the embedded default is a loopback dm-thin pool.
        KernelTest::new("vm_dmthin_image_commands_happy_path", vm_dmthin_happy_path).needs(DM_THIN),
    ])
}

/// A real three-layer image from Debian packages
/// (`scripts/make-debian-image.sh`) imports and runs: dash loads libc
/// through usrmerge's lib64 -> usr/lib64 and libc6's absolute ld.so link,
/// `var/run/app.pid` is read at `/run/app.pid`, the alternatives chain
/// runs busybox awk, and `debian-layers` means `debian-layers:latest`.
fn debian_image_runs() {
    let root = Root::new();
    let oci = root.path().join("debian-oci");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-debian-image.sh");
    let made = std::process::Command::new(&script)
        .arg(&oci)
        .output()
        .expect("run make-debian-image.sh");
    assert!(made.status.success(), "{made:?}");
    root.ok(&["image", "import", oci.to_str().unwrap()]);
    let out = root.ok(&[
        "run",
        "--rm",
        "debian-layers",
        "--",
        "/bin/dash",
        "-c",
        "echo dash $0; cat /var/run/app.pid /run/app.pid; awk 'BEGIN { print 6 * 7 }'; \
         test -e /usr/bin/wget || echo no wget",
    ]);
    assert_eq!(out, "dash /bin/dash\n42\n42\n42\nno wget\n");
}

fn config() -> ImageConfig {
    ImageConfig {
        env: vec!["PATH=/bin".into()],
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        working_dir: "/".into(),
        user: String::new(),
        ..Default::default()
    }
}

fn base() -> Vec<u8> {
    write::layer_tar(&[
        Entry::dir("bin"),
        Entry::file("bin/tool", b"#!/bin/sh\n", 0o755),
        Entry::dir("etc"),
        Entry::file("etc/os", b"base\n", 0o644),
    ])
    .unwrap()
}

fn top(tag: &str) -> Vec<u8> {
    write::layer_tar(&[
        Entry::dir("etc"),
        Entry::file("etc/os", format!("{tag}\n").as_bytes(), 0o644),
        Entry::file("data", &[1u8; 50_000], 0o644),
    ])
    .unwrap()
}

fn spec(name: &str, tag: &str) -> ImageSpec {
    ImageSpec::new(config(), vec![base(), top(tag)]).name(name)
}

fn image_names(root: &Root) -> Vec<String> {
    root.json(&["image", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// No scratch directory or import intent left in the image store.
fn assert_no_scratch(root: &Root) {
    let tmp = root.path().join("images/tmp");
    if tmp.exists() {
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "scratch left");
    }
}

fn image_commands_happy_path() {
    happy_path("backend = \"btrfs\"");
}

fn vm_dmthin_happy_path() {
    happy_path("backend = \"dm-thin\"");
}

/// The happy path; `backend` is a line the backend record must hold.
fn happy_path(backend: &str) {
    let root = Root::new();
    let work = root.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let oci_dir = work.join("oci");
    let oci_tar = work.join("oci.tar");
    let docker_tar = work.join("docker.tar");
    let wa = write::oci_dir(&spec("a:1", "a"), &oci_dir).unwrap();
    let wb = write::oci_tar(&spec("b:1", "b").compression(Compression::Zstd), &oci_tar).unwrap();
    let wc = write::docker_tar(
        &spec("c:1", "c").compression(Compression::None),
        &docker_tar,
    )
    .unwrap();

    // OCI directory, --json.
    let a = root.json(&["image", "import", oci_dir.to_str().unwrap()]);
    let rec = root.backend_record();
    assert!(rec.contains(backend), "{rec}");
    let a = &a.as_array().unwrap()[0];
    assert_eq!(a["name"], "a:1", "{a}");
    assert_eq!(a["manifest"], wa.manifest.to_string(), "{a}");
    assert_eq!(a["config"]["cmd"][0], "/bin/sh", "{a}");
    assert_eq!(a["config"]["env"][0], "PATH=/bin", "{a}");
    let diff_ids: Vec<Digest> = wa.layers.iter().map(|l| l.diff_id).collect();
    let chains = chain_ids(&diff_ids);
    let layers = a["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["digest"], wa.layers[i].digest.to_string());
        assert_eq!(l["diff_id"], diff_ids[i].to_string());
        assert_eq!(l["chain_id"], chains[i].to_string());
        assert_eq!(l["size"], wa.layers[i].size);
    }
    assert_eq!(a["top_snapshot"], chains[1].to_string());
    // The layers are committed snapshots named by chain id.
    let snaps = snapshots(&root);
    assert_eq!(
        snaps,
        chains
            .iter()
            .map(|c| c.to_string())
            .collect::<BTreeSet<_>>()
    );

    // OCI tar (human output) and docker-save tar: the base layer is shared.
    let out = root.ok(&["image", "import", oci_tar.to_str().unwrap()]);
    assert!(out.starts_with("imported b:1 (2 layers"), "{out}");
    assert!(out.contains(&wb.manifest.to_string()), "{out}");
    let c = root.json(&["image", "import", docker_tar.to_str().unwrap()]);
    assert_eq!(c[0]["name"], "c:1", "{c}");
    assert_eq!(c[0]["manifest"], wc.manifest.to_string(), "{c}");
    assert_eq!(
        snapshots(&root).len(),
        4,
        "base stored once: {:?}",
        snapshots(&root)
    );
    // --name renames; the same layers are all reused.
    let d = root.json(&["image", "import", oci_dir.to_str().unwrap(), "--name", "d"]);
    assert_eq!(d[0]["name"], "d");
    assert_eq!(snapshots(&root).len(), 4);

    // ls, inspect (by name and by digest prefix).
    assert_eq!(image_names(&root), ["a:1", "b:1", "c:1", "d"]);
    let ls = root.ok(&["image", "ls"]);
    assert!(ls.starts_with("NAME"), "{ls}");
    assert!(ls.contains(&wb.manifest.hex()[..12]), "{ls}");
    let i = root.json(&["image", "inspect", "b:1"]);
    assert_eq!(i["name"], "b:1");
    assert_eq!(i["layers"].as_array().unwrap().len(), 2);
    let i = root.json(&["image", "inspect", &wc.manifest.hex()[..10]]);
    assert_eq!(i["name"], "c:1");
    let text = root.ok(&["image", "inspect", "a:1"]);
    assert!(text.contains("cmd:         [\"/bin/sh\"]"), "{text}");

    // rm: shared layers stay while an image uses them.
    let r = root.json(&["image", "rm", "a:1"]);
    assert_eq!(r["removed"], "a:1");
    assert_eq!(snapshots(&root).len(), 4, "d still uses a's layers");
    assert_eq!(root.ok(&["image", "rm", "d"]).trim(), "removed d");
    assert_eq!(snapshots(&root).len(), 3);
    root.ok(&["image", "rm", "b:1"]);
    root.ok(&["image", "rm", "c:1"]);
    assert!(snapshots(&root).is_empty());
    assert!(image_names(&root).is_empty());
    assert_no_scratch(&root);
}

/// Runs a failing import and checks nothing changed.
#[track_caller]
fn import_fails(root: &Root, args: &[&str], code: i32, wants: &[&str]) -> String {
    let (snaps, images) = (snapshots(root), image_names(root));
    let mut a = vec!["image", "import"];
    a.extend_from_slice(args);
    let line = root.fails(&a, code);
    for w in wants {
        assert!(line.contains(w), "{line:?} lacks {w:?}");
    }
    assert_eq!(snapshots(root), snaps, "snapshots left by {args:?}");
    assert_eq!(image_names(root), images);
    assert_no_scratch(root);
    line
}

fn image_bad_input() {
    let root = Root::new();
    let work = root.path().join("work");
    fs::create_dir_all(&work).unwrap();
    let p = |rel: &str| work.join(rel).to_str().unwrap().to_owned();

    // One good image first, so failures must spare its layers.
    write::oci_dir(&spec("good", "good"), &work.join("good")).unwrap();
    root.ok(&["image", "import", &p("good")]);

    // Not an image: a text file, an empty directory, a plain layer tar.
    fs::write(work.join("notes.txt"), "hello\n").unwrap();
    import_fails(
        &root,
        &[&p("notes.txt")],
        2,
        &["invalid image", "expected an OCI image layout"],
    );
    fs::create_dir_all(work.join("empty")).unwrap();
    import_fails(&root, &[&p("empty")], 2, &["expected an OCI image layout"]);
    fs::write(work.join("layer.tar"), base()).unwrap();
    import_fails(
        &root,
        &[&p("layer.tar")],
        2,
        &["expected an OCI image layout"],
    );
    import_fails(&root, &[&p("missing")], 3, &["not found"]);

    // Digest mismatch in the top layer (the base layer is shared with
    // "good"; the new top layer is made, then removed again).
    let w = write::oci_dir(&spec("bad", "bad"), &work.join("bad")).unwrap();
    corrupt_blob(&work.join("bad"), &w.layers[1].digest, |b| {
        let n = b.len() / 2;
        b[n] ^= 1;
    });
    import_fails(
        &root,
        &[&p("bad")],
        2,
        &[
            "digest mismatch",
            &w.layers[1].digest.to_string(),
            "layer 2 of 2",
        ],
    );

    // A digest mismatch in a docker layer.tar found after decompression.
    let w = write::docker_tar(
        &spec("bad2", "bad2").compression(Compression::None),
        &work.join("bad2.tar"),
    )
    .unwrap();
    let mut t = fs::read(work.join("bad2.tar")).unwrap();
    let at = t.windows(5).position(|s| s == b"bad2\n").unwrap();
    t[at] = b'B';
    fs::write(work.join("bad2.tar"), t).unwrap();
    import_fails(
        &root,
        &[&p("bad2.tar")],
        2,
        &[
            "digest mismatch",
            &format!("expected diff id {}", w.layers[1].diff_id),
        ],
    );

    // A truncated layer blob, and an OCI tar cut short.
    let w = write::oci_dir(&spec("short", "short"), &work.join("short")).unwrap();
    corrupt_blob(&work.join("short"), &w.layers[1].digest, |b| {
        b.truncate(b.len() / 2)
    });
    import_fails(&root, &[&p("short")], 2, &["truncated"]);
    let w = write::oci_tar(&spec("short2", "short2"), &work.join("short2.tar")).unwrap();
    let blob = &w
        .files
        .iter()
        .find(|f| f.0 == format!("blobs/sha256/{}", w.layers[1].digest.hex()))
        .unwrap()
        .1;
    let t = fs::read(work.join("short2.tar")).unwrap();
    let at = t.windows(blob.len()).position(|s| s == &blob[..]).unwrap();
    fs::write(work.join("short2.tar"), &t[..at + blob.len() / 2]).unwrap();
    import_fails(&root, &[&p("short2.tar")], 2, &["truncated"]);

    // The same image again: a no-op that says so (as `ctr images import`
    // and `docker load` succeed); no name at all.
    let out = root.ok(&["image", "import", &p("good")]);
    assert!(out.contains("already present"), "{out}");
    let v = root.json(&["image", "import", &p("good")]);
    assert_eq!(v[0]["outcome"], "already_present", "{v}");
    assert_eq!(v[0]["name"], "good", "{v}");
    write::oci_dir(&ImageSpec::new(config(), vec![base()]), &work.join("anon")).unwrap();
    import_fails(&root, &[&p("anon")], 2, &["--name"]);
    let line = root.fails(&["image", "import", &p("anon"), "--name", "has space"], 2);
    assert!(line.contains("image name"), "{line}");

    // Unknown image; rm refused while a container's root sits on it.
    assert!(root
        .fails(&["image", "inspect", "nope"], 3)
        .contains("no such image"));
    assert!(root
        .fails(&["image", "rm", "nope"], 3)
        .contains("no such image"));
    let img = root.json(&["image", "inspect", "good"]);
    let top = img["top_snapshot"].as_str().unwrap();
    root.ok(&["snapshot", "prepare", "thinbox-test-ctr", top]);
    let line = root.fails(&["image", "rm", "good"], 4);
    assert!(line.contains("thinbox-test-ctr"), "{line}");
    assert_eq!(image_names(&root), ["good"]);
    root.ok(&["snapshot", "rm", "thinbox-test-ctr"]);
    root.ok(&["image", "rm", "good"]);
    assert!(snapshots(&root).is_empty(), "{:?}", snapshots(&root));

    // Unknown subcommand and flag: clap's usage error.
    let r = root.run(&["image", "frobnicate"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = root.run(&["image", "import", "--bogus"]);
    assert_eq!(r.code, 2, "{r:?}");
}

fn corrupt_blob(dir: &Path, digest: &Digest, f: impl FnOnce(&mut Vec<u8>)) {
    let p = dir.join(format!("blobs/sha256/{}", digest.hex()));
    let mut b = fs::read(&p).unwrap();
    f(&mut b);
    fs::write(&p, b).unwrap();
}

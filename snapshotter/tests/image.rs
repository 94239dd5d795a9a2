//! Image import, removal and container commit on real snapshotters: naive
//! and overlay on the host, btrfs on a loop device (host and VM). Images
//! are written with `snapshotter::image::write` (OCI directory, OCI tar,
//! docker-save tar) and by the project's scripts from Debian packages:
//! `scripts/make-busybox-image.sh` (one layer) and
//! `scripts/make-debian-image.sh` (three layers through usrmerge and
//! `/var/run` symlinks, see `image/debian.rs`).

#![forbid(unsafe_code)]

use integration::fixtures::{run, sparse_file, temp_dir, LoopDevice, Mount};
use integration::harness::{self, KernelTest};
use integration::need::Need;
use snapshotter::backend::{btrfs::Btrfs, naive::Naive, overlay::Overlay};
use snapshotter::image::write::{self, Compression, Entry, ImageSpec, Written};
use snapshotter::image::{
    chain_ids, Digest, FaultPoint, Image, ImageConfig, Images, ImportOutcome, ImportProgress,
};
use snapshotter::{ErrorKind, Key, Labels, MountGuard, Name, Snapshotter};
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const NAIVE: &[Need] = &[Need::Root];

const OVERLAY: &[Need] = &[Need::Root, Need::Overlay];

const BTRFS: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs];

const BTRFS_VM: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs, Need::Vm];

/// What a scenario gets: a snapshotter and a scratch directory (the image
/// store lives in `work/images`).
struct Env<'a> {
    sn: &'a dyn Snapshotter,
    work: PathBuf,
}

impl Env<'_> {
    fn images(&self) -> Images {
        Images::open(&self.work.join("images"), self.sn).expect("open images")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.work.join(rel)
    }

    /// Names of every snapshot.
    fn snapshots(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.sn
            .walk(&[], &mut |i| {
                out.insert(i.name.clone());
                Ok(())
            })
            .expect("walk");
        out
    }

    /// Mounts a view of `name` and returns (guard, mountpoint).
    fn view(&self, name: &Name, tag: &str) -> (MountGuard, Key) {
        let key = Key::new(format!("view-{tag}")).unwrap();
        let m = self
            .sn
            .view(&key, Some(name), &Labels::new())
            .expect("view");
        let dir = self.path(&format!("view-{tag}"));
        fs::create_dir_all(&dir).unwrap();
        (MountGuard::new(&m, &dir).expect("mount view"), key)
    }

    fn drop_view(&self, g: MountGuard, key: Key) {
        g.unmount().expect("unmount view");
        self.sn.remove(&key).expect("remove view");
    }
}

fn with_naive(f: fn(&Env<'_>)) {
    let dir = temp_dir();
    let sn = Naive::open(&dir.path().join("root")).expect("open naive");
    f(&Env {
        sn: &sn,
        work: dir.path().to_owned(),
    });
}

fn with_overlay(f: fn(&Env<'_>)) {
    let dir = temp_dir();
    let sn = Overlay::open(&dir.path().join("root")).expect("open overlay");
    f(&Env {
        sn: &sn,
        work: dir.path().to_owned(),
    });
}

fn with_btrfs(f: fn(&Env<'_>)) {
    let dir = temp_dir();
    let image = dir.path().join("btrfs.img");
    sparse_file(&image, 1 << 30);
    let dev = LoopDevice::attach(&image);
    run("mkfs.btrfs", &["-q", "-f", dev.as_str()]);
    let mount = Mount::new(dev.as_str(), &dir.path().join("mnt"), Some("btrfs"), "");
    {
        let sn = Btrfs::open(&mount.target.join("root")).expect("open btrfs");
        let work = dir.path().join("work");
        fs::create_dir_all(&work).unwrap();
        f(&Env { sn: &sn, work });
    }
    drop(mount);
    drop(dev);
}

fn config() -> ImageConfig {
    ImageConfig {
        env: vec!["PATH=/usr/bin:/bin".into(), "GREETING=hi".into()],
        entrypoint: vec!["/bin/entry".into()],
        cmd: vec!["--flag".into()],
        working_dir: "/srv".into(),
        user: "1000:1000".into(),
        // As an import records it: the writer stamps this host's.
        platform: {
            let (os, arch) = snapshotter::image::host_platform();
            format!("{os}/{arch}")
        },
    }
}

fn base_layer() -> Vec<u8> {
    write::layer_tar(&[
        Entry::dir("bin"),
        Entry::file("bin/entry", b"#!/bin/sh\necho base\n", 0o755),
        Entry::dir("etc"),
        Entry::file("etc/motd", b"hello\n", 0o644),
        Entry::file("etc/gone", b"to be deleted\n", 0o644),
        Entry::symlink("etc/link", "motd"),
    ])
    .unwrap()
}

fn second_layer() -> Vec<u8> {
    write::layer_tar(&[
        Entry::dir("etc"),
        Entry::whiteout("etc/gone"),
        Entry::file("etc/motd", b"hello again\n", 0o644),
        Entry::dir("srv"),
        Entry::file("srv/data", &[7u8; 100_000], 0o600),
    ])
    .unwrap()
}

fn third_layer() -> Vec<u8> {
    write::layer_tar(&[Entry::file("third", b"3\n", 0o644)]).unwrap()
}

fn two_layer_spec(name: &str) -> ImageSpec {
    ImageSpec::new(config(), vec![base_layer(), second_layer()]).name(name)
}

fn import(
    env: &Env<'_>,
    images: &Images,
    src: &Path,
    name: Option<&str>,
) -> snapshotter::Result<Vec<Image>> {
    Ok(images
        .import(env.sn, src, name, &mut |_| {})?
        .into_iter()
        .map(|i| i.image)
        .collect())
}

/// Checks an imported image against what was written, and its tree.
fn check_imported(env: &Env<'_>, img: &Image, written: &Written, name: &str) {
    assert_eq!(img.name, name);
    assert_eq!(img.config, config());
    let diff_ids: Vec<Digest> = written.layers.iter().map(|l| l.diff_id).collect();
    let chains = chain_ids(&diff_ids);
    assert_eq!(img.layers.len(), 2);
    for (i, l) in img.layers.iter().enumerate() {
        assert_eq!(l.diff_id, diff_ids[i]);
        assert_eq!(l.chain_id, chains[i]);
        assert_eq!(l.digest, written.layers[i].digest);
        assert_eq!(l.size, written.layers[i].size);
        let info = env
            .sn
            .stat(&Key::new(chains[i].to_string()).unwrap())
            .expect("layer snapshot");
        assert_eq!(info.kind, snapshotter::Kind::Committed);
    }
    assert_eq!(img.manifest, written.manifest);
    let top = img.top_snapshot().expect("top");
    assert_eq!(top.as_str(), chains[1].to_string());
    let (g, key) = env.view(&top, "check");
    let root = g.target().to_owned();
    assert_eq!(fs::read(root.join("etc/motd")).unwrap(), b"hello again\n");
    assert!(!root.join("etc/gone").exists(), "whiteout applied");
    assert_eq!(
        fs::read_link(root.join("etc/link")).unwrap(),
        Path::new("motd")
    );
    assert_eq!(fs::read(root.join("srv/data")).unwrap().len(), 100_000);
    assert!(root.join("bin/entry").is_file());
    env.drop_view(g, key);
}

fn oci_dir(env: &Env<'_>) {
    let images = env.images();
    let src = env.path("oci");
    let written = write::oci_dir(&two_layer_spec("demo:1"), &src).unwrap();
    let mut events = Vec::new();
    let got = images
        .import(env.sn, &src, None, &mut |p| {
            events.push(match p {
                ImportProgress::Layer { index, count, .. } => format!("layer {index}/{count}"),
                ImportProgress::LayerDone { index, reused } => format!("done {index} {reused}"),
            })
        })
        .expect("import");
    assert!(
        got.iter().all(|i| i.outcome == ImportOutcome::New),
        "{got:?}"
    );
    let got: Vec<Image> = got.into_iter().map(|i| i.image).collect();
    assert_eq!(
        events,
        ["layer 0/2", "done 0 false", "layer 1/2", "done 1 false"]
    );
    assert_eq!(got.len(), 1);
    check_imported(env, &got[0], &written, "demo:1");
    // Listed, found by name, by digest and digest prefix, and kept across reopen.
    drop(images);
    let images = env.images();
    assert_eq!(images.list().unwrap(), got);
    assert_eq!(images.get("demo:1").unwrap(), got[0]);
    assert_eq!(images.get(&written.manifest.to_string()).unwrap(), got[0]);
    assert_eq!(images.get(&written.manifest.hex()[..12]).unwrap(), got[0]);
    assert_eq!(images.get("nope").unwrap_err().kind(), ErrorKind::NotFound);
}

fn oci_tar(env: &Env<'_>) {
    let images = env.images();
    let src = env.path("image.tar");
    let spec = two_layer_spec("demo:tar").compression(Compression::Zstd);
    let written = write::oci_tar(&spec, &src).unwrap();
    let got = import(env, &images, &src, None).expect("import oci tar");
    check_imported(env, &got[0], &written, "demo:tar");
}

fn docker_tar(env: &Env<'_>) {
    let images = env.images();
    let src = env.path("docker.tar");
    let spec = two_layer_spec("demo:docker").compression(Compression::None);
    let written = write::docker_tar(&spec, &src).unwrap();
    let got = import(env, &images, &src, None).expect("import docker tar");
    check_imported(env, &got[0], &written, "demo:docker");
    // --name overrides the name the archive records.
    images.remove(env.sn, "demo:docker").unwrap();
    let got = import(env, &images, &src, Some("renamed")).expect("import with a name");
    assert_eq!(got[0].name, "renamed");
    assert!(images.get("demo:docker").is_err());
}

fn shared_layer_stored_once(env: &Env<'_>) {
    let images = env.images();
    let a = env.path("a");
    let b = env.path("b.tar");
    write::oci_dir(&ImageSpec::new(config(), vec![base_layer()]).name("a"), &a).unwrap();
    // Another compression of the same base layer: same diff id, same chain id.
    let spec_b = ImageSpec::new(config(), vec![base_layer(), third_layer()])
        .name("b")
        .compression(Compression::None);
    write::docker_tar(&spec_b, &b).unwrap();
    let ia = import(env, &images, &a, None).unwrap().remove(0);
    let mut reused = Vec::new();
    let ib = images
        .import(env.sn, &b, None, &mut |p| {
            if let ImportProgress::LayerDone { reused: r, .. } = p {
                reused.push(r);
            }
        })
        .unwrap()
        .remove(0)
        .image;
    assert_eq!(reused, [true, false]);
    assert_eq!(ia.layers[0].chain_id, ib.layers[0].chain_id);
    assert_ne!(ia.layers[0].digest, ib.layers[0].digest, "blobs differ");
    assert_eq!(env.snapshots().len(), 2, "{:?}", env.snapshots());
    // Removing a keeps the shared layer for b; removing b then drops both.
    images.remove(env.sn, "a").unwrap();
    assert_eq!(env.snapshots().len(), 2);
    assert_eq!(images.list().unwrap().len(), 1);
    images.remove(env.sn, "b").unwrap();
    assert!(env.snapshots().is_empty(), "{:?}", env.snapshots());
    assert!(images.list().unwrap().is_empty());
}

/// Nothing of a failed import remains: no snapshot, no image, no intent
/// (reopening finds nothing to roll back), no scratch directory.
fn assert_clean(env: &Env<'_>, images: Images, before: &BTreeSet<String>) {
    assert_eq!(&env.snapshots(), before);
    assert!(images.list().unwrap().is_empty() || !before.is_empty());
    drop(images);
    let images = env.images();
    assert_eq!(&env.snapshots(), before);
    let tmp = env.path("images/tmp");
    if tmp.exists() {
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "scratch left");
    }
    drop(images);
}

fn digest_mismatch(env: &Env<'_>) {
    let images = env.images();
    // A layer blob with one byte changed (same size).
    let src = env.path("oci");
    let w = write::oci_dir(&two_layer_spec("bad"), &src).unwrap();
    let blob = src.join(format!("blobs/sha256/{}", w.layers[1].digest.hex()));
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();
    let e = import(env, &images, &src, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("layer 2 of 2"), "{msg}");
    assert!(msg.contains(&w.layers[1].digest.to_string()), "{msg}");
    assert!(msg.contains("content has sha256:"), "{msg}");
    assert_clean(env, images, &BTreeSet::new());

    // A docker layer.tar (no blob digest) whose content does not match the
    // config's diff id: caught after decompression, after layer 1 was made.
    let images = env.images();
    let tar = env.path("docker.tar");
    let spec = two_layer_spec("bad2").compression(Compression::None);
    let w = write::docker_tar(&spec, &tar).unwrap();
    let dir = env.path("docker-dir");
    fs::create_dir_all(&dir).unwrap();
    run(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    let layer = dir.join(format!("{}/layer.tar", w.layers[1].diff_id.hex()));
    let mut t = fs::read(&layer).unwrap();
    let pos = t.windows(11).position(|s| s == b"hello again").unwrap();
    t[pos] = b'j';
    fs::write(&layer, &t).unwrap();
    let e = import(env, &images, &dir, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DigestMismatch, "{e}");
    assert!(
        e.to_string()
            .contains(&format!("expected diff id {}", w.layers[1].diff_id)),
        "{e}"
    );
    assert_clean(env, images, &BTreeSet::new());
}

fn truncated(env: &Env<'_>) {
    let images = env.images();
    let src = env.path("oci");
    let w = write::oci_dir(&two_layer_spec("short"), &src).unwrap();
    let blob = src.join(format!("blobs/sha256/{}", w.layers[1].digest.hex()));
    let bytes = fs::read(&blob).unwrap();
    fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    let e = import(env, &images, &src, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage, "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_clean(env, images, &BTreeSet::new());

    // An OCI tar cut short.
    let images = env.images();
    let tar = env.path("image.tar");
    let w = write::oci_tar(&two_layer_spec("short2"), &tar).unwrap();
    let blob_path = format!("blobs/sha256/{}", w.layers[1].digest.hex());
    let blob = &w.files.iter().find(|f| f.0 == blob_path).unwrap().1;
    let bytes = fs::read(&tar).unwrap();
    let at = bytes
        .windows(blob.len())
        .position(|s| s == &blob[..])
        .unwrap();
    fs::write(&tar, &bytes[..at + blob.len() / 2]).unwrap();
    let e = import(env, &images, &tar, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage, "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert_clean(env, images, &BTreeSet::new());

    // A docker layer.tar cut short: its tar ends early.
    let images = env.images();
    let tar = env.path("docker.tar");
    let spec = two_layer_spec("short3").compression(Compression::Gzip);
    let w = write::docker_tar(&spec, &tar).unwrap();
    let dir = env.path("docker-dir");
    fs::create_dir_all(&dir).unwrap();
    run(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    let layer = dir.join(format!("{}/layer.tar", w.layers[1].diff_id.hex()));
    let bytes = fs::read(&layer).unwrap();
    fs::write(&layer, &bytes[..bytes.len() / 2]).unwrap();
    let e = import(env, &images, &dir, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidImage, "{e}");
    assert!(e.to_string().contains("layer 2 of 2"), "{e}");
    assert!(e.to_string().contains("truncated or corrupt"), "{e}");
    assert_clean(env, images, &BTreeSet::new());
}

fn not_an_image(env: &Env<'_>) {
    let images = env.images();
    let text = env.path("notes.txt");
    fs::write(&text, b"just some text, not an image\n").unwrap();
    let random = env.path("random.bin");
    fs::write(
        &random,
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let empty = env.path("empty-dir");
    fs::create_dir_all(&empty).unwrap();
    let plain_tar = env.path("plain.tar");
    fs::write(
        &plain_tar,
        write::layer_tar(&[Entry::file("x", b"x", 0o644)]).unwrap(),
    )
    .unwrap();
    for src in [&text, &random, &empty, &plain_tar] {
        let e = import(env, &images, src, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidImage, "{}: {e}", src.display());
        assert!(
            e.to_string().contains("expected an OCI image layout"),
            "{e}"
        );
    }
    let gz = env.path("image.tar.gz");
    fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
    let e = import(env, &images, &gz, None).unwrap_err();
    assert!(e.to_string().contains("decompress it first"), "{e}");
    let e = import(env, &images, &env.path("missing"), None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // No name anywhere: asks for --name.
    let src = env.path("anon");
    write::oci_dir(&ImageSpec::new(config(), vec![base_layer()]), &src).unwrap();
    let e = import(env, &images, &src, None).unwrap_err();
    assert!(e.to_string().contains("--name"), "{e}");
    assert_clean(env, images, &BTreeSet::new());
}

/// Entries of an uncompressed layer tar: path → (kind, contents).
fn tar_entries(tar: &[u8]) -> Vec<(String, char, Vec<u8>)> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(tar);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let kind = if e.header().entry_type().is_dir() {
            'd'
        } else {
            'f'
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((path, kind, data));
    }
    out
}

fn commit_container(env: &Env<'_>) {
    let images = env.images();
    let src = env.path("oci");
    write::oci_dir(&two_layer_spec("base"), &src).unwrap();
    let base = import(env, &images, &src, None).unwrap().remove(0);
    let ctr = Key::new("ctr").unwrap();
    let m = env
        .sn
        .prepare(&ctr, base.top_snapshot().as_ref(), &Labels::new())
        .unwrap();
    let root = env.path("ctr-root");
    fs::create_dir_all(&root).unwrap();
    let g = MountGuard::new(&m, &root).unwrap();
    fs::write(root.join("srv/new"), b"new file\n").unwrap();
    fs::write(root.join("etc/motd"), b"changed\n").unwrap();
    fs::remove_file(root.join("bin/entry")).unwrap();
    g.unmount().unwrap();

    // A taken name and a wrong key are refused and change nothing.
    assert_eq!(
        images
            .commit_container(env.sn, &base, &ctr, "base")
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        images
            .commit_container(env.sn, &base, &Key::new("nope").unwrap(), "x")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    let img = images
        .commit_container(env.sn, &base, &ctr, "derived")
        .unwrap();
    assert_eq!(img.name, "derived");
    assert_eq!(img.config, base.config);
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.layers[..2], base.layers[..]);
    let new = &img.layers[2];
    let diff_ids: Vec<Digest> = img.layers.iter().map(|l| l.diff_id).collect();
    assert_eq!(new.chain_id, chain_ids(&diff_ids)[2]);
    assert!(env.sn.stat(&ctr).is_err(), "the container key is committed");
    assert_eq!(images.get("derived").unwrap(), img);

    // The committed layer's diff against its parent is exactly the change,
    // and hashes to the recorded diff id.
    let mut tar = Vec::new();
    let scratch = env.path("diff-scratch");
    fs::create_dir_all(&scratch).unwrap();
    snapshotter::layer::diff_snapshot(
        env.sn,
        &Key::new(new.chain_id.to_string()).unwrap(),
        &scratch,
        &mut tar,
    )
    .unwrap();
    assert_eq!(Digest::sha256(&tar), new.diff_id);
    assert_eq!(tar.len() as u64, new.size);
    let entries = tar_entries(&tar);
    let files: BTreeSet<(String, char)> = entries.iter().map(|(p, k, _)| (p.clone(), *k)).collect();
    let want: BTreeSet<(String, char)> = [
        ("bin", 'd'),
        ("bin/.wh.entry", 'f'),
        ("etc", 'd'),
        ("etc/motd", 'f'),
        ("srv", 'd'),
        ("srv/new", 'f'),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_owned(), k))
    .collect();
    assert_eq!(files, want);
    let content = |p: &str| entries.iter().find(|e| e.0 == p).unwrap().2.clone();
    assert_eq!(content("etc/motd"), b"changed\n");
    assert_eq!(content("srv/new"), b"new file\n");

    // The derived image holds a container's root; removing base keeps the
    // layers derived shares.
    images.remove(env.sn, "base").unwrap();
    assert_eq!(env.snapshots().len(), 3);
    images.remove(env.sn, "derived").unwrap();
    assert!(env.snapshots().is_empty(), "{:?}", env.snapshots());
}

/// A crash after the container's layer was committed is rolled forward.
fn commit_crash_rolls_forward(env: &Env<'_>) {
    let mut images = env.images();
    let src = env.path("oci");
    write::oci_dir(&two_layer_spec("base"), &src).unwrap();
    let base = import(env, &images, &src, None).unwrap().remove(0);
    let ctr = Key::new("ctr").unwrap();
    env.sn
        .prepare(&ctr, base.top_snapshot().as_ref(), &Labels::new())
        .unwrap();
    images.set_fault_hook(|p| {
        if p == FaultPoint::ContainerCommitted {
            panic!("injected crash");
        }
        Ok(())
    });
    let r = catch_unwind(AssertUnwindSafe(|| {
        images.commit_container(env.sn, &base, &ctr, "derived")
    }));
    assert!(r.is_err());
    drop(images);
    let images = env.images();
    let img = images.get("derived").expect("rolled forward");
    assert_eq!(img.layers.len(), 3);
    assert_eq!(env.snapshots().len(), 3);
}

/// Builds the busybox image with the project's script, imports it and
/// finds /bin/sh (a symlink to busybox) in its top snapshot.
fn busybox_script(env: &Env<'_>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image.sh");
    let out = env.path("busybox-oci");
    run(
        script.to_str().unwrap(),
        &[out.to_str().unwrap(), "busybox:test"],
    );
    // Idempotent: a second run over the same directory gives the same layout.
    let index = fs::read(out.join("index.json")).unwrap();
    run(
        script.to_str().unwrap(),
        &[out.to_str().unwrap(), "busybox:test"],
    );
    assert_eq!(fs::read(out.join("index.json")).unwrap(), index);
    let images = env.images();
    let img = import(env, &images, &out, None).unwrap().remove(0);
    assert_eq!(img.name, "busybox:test");
    assert_eq!(img.config.cmd, ["/bin/sh"]);
    assert!(img.config.env.iter().any(|e| e.starts_with("PATH=")));
    let (g, key) = env.view(&img.top_snapshot().unwrap(), "busybox");
    let root = g.target().to_owned();
    let sh = fs::symlink_metadata(root.join("bin/sh")).expect("/bin/sh exists");
    assert!(sh.file_type().is_symlink() || sh.is_file());
    assert!(fs::metadata(root.join("bin/busybox")).unwrap().len() > 100_000);
    assert!(root.join("etc/passwd").is_file());
    for d in ["tmp", "proc", "sys", "dev"] {
        assert!(root.join(d).is_dir(), "/{d}");
    }
    env.drop_view(g, key);
}

macro_rules! on {
    ($with:ident, $needs:expr, $prefix:literal; $($f:ident),* $(,)?) => {
        vec![$(
            KernelTest::new(concat!($prefix, stringify!($f)), {
                fn t() {
                    $with($f)
                }
                t
            })
            .needs($needs),
        )*]
    };
}

/// Set in the child of [`killed_import_rolled_back`]: the directory to
/// import in; the child kills itself with SIGKILL after layer 2.
const KILL_CHILD_ENV: &str = "THINBOX_TEST_IMAGE_KILL_CHILD";

fn kill_child(dir: &Path) -> ! {
    let sn = Naive::open(&dir.join("root")).expect("child: open naive");
    let mut images = Images::open(&dir.join("images"), &sn).expect("child: open images");
    images.set_fault_hook(|p| {
        if p == FaultPoint::LayerCommitted(1) {
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL)
                .expect("kill self");
        }
        Ok(())
    });
    let r = images.import(&sn, &dir.join("b"), None, &mut |_| {});
    panic!("child: the import was not killed: {r:?}");
}

/// A process killed (SIGKILL) mid-import leaves two new snapshots and the
/// intent; the next open rolls them back and keeps the shared base layer.
fn killed_import_rolled_back() {
    let dir = temp_dir();
    let a = dir.path().join("a");
    write::oci_dir(&ImageSpec::new(config(), vec![base_layer()]).name("a"), &a).unwrap();
    let spec =
        ImageSpec::new(config(), vec![base_layer(), second_layer(), third_layer()]).name("b");
    write::oci_dir(&spec, &dir.path().join("b")).unwrap();
    let before = {
        let sn = Naive::open(&dir.path().join("root")).unwrap();
        let env = Env {
            sn: &sn,
            work: dir.path().to_owned(),
        };
        import(&env, &env.images(), &a, None).unwrap();
        env.snapshots()
    };
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env(KILL_CHILD_ENV, dir.path())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the child was killed: {status:?}");
    let sn = Naive::open(&dir.path().join("root")).unwrap();
    let env = Env {
        sn: &sn,
        work: dir.path().to_owned(),
    };
    // What the killed import left, seen before the image store reopens.
    let left = env.snapshots();
    assert_eq!(left.len(), before.len() + 2, "{left:?}");
    let images = env.images();
    assert_eq!(env.snapshots(), before);
    assert_eq!(images.list().unwrap().len(), 1);
    // And the import works afterwards.
    import(&env, &images, &dir.path().join("b"), None).unwrap();
    assert_eq!(env.snapshots().len(), 3);
}

#[path = "image/store.rs"]
mod store;
use store::*;

#[path = "image/debian.rs"]
mod debian;
use debian::*;

fn main() -> ExitCode {
    if let Some(dir) = std::env::var_os(KILL_CHILD_ENV) {
        kill_child(Path::new(&dir));
    }
    let mut tests = on!(with_naive, NAIVE, "naive_";
        oci_dir, oci_tar, docker_tar, shared_layer_stored_once, digest_mismatch, truncated,
        not_an_image, name_taken, atomic_failure, crash_rollback, rm_refused_while_container,
        stale_diff_views_are_removed, commit_container, commit_crash_rolls_forward,
        busybox_script, debian_script,
    );
    tests.push(
        KernelTest::new("naive_killed_import_rolled_back", killed_import_rolled_back).needs(NAIVE),
    );
    tests.extend(on!(with_overlay, OVERLAY, "overlay_";
        oci_dir, shared_layer_stored_once, digest_mismatch, crash_rollback,
        rm_refused_while_container, commit_container, debian_script,
    ));
    tests.extend(on!(with_btrfs, BTRFS, "btrfs_";
        oci_dir, docker_tar, shared_layer_stored_once, atomic_failure, crash_rollback,
        rm_refused_while_container, stale_diff_views_are_removed, commit_container,
        debian_script,
    ));
    tests.extend(on!(with_btrfs, BTRFS_VM, "vm_btrfs_"; oci_tar, commit_container));
    harness::main(&tests)
}

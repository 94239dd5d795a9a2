//! `thinbox image pull` against a real registry: Debian's docker-registry
//! (distribution 2.8) started on 127.0.0.1 by each test, images pushed
//! into it with Debian's skopeo from layouts the tests write.
//!
//! - plain http: pull, run, re-pull fetching nothing (the registry's
//!   access log counts the blob requests), pull by digest, a mirror of
//!   docker.io;
//! - a multi-layer image with gzip, zstd and plain layers; a two-platform
//!   index, the host's platform by default and `--platform`;
//! - TLS from a CA the test makes (in a `certs.d` directory) with
//!   htpasswd basic auth, credentials from an auth file or a credential
//!   helper; TLS client certificates;
//! - push (registry/push.rs): a committed image pushed, inspected by
//!   skopeo, pulled back; pushed again, mounted, chunked, killed;
//! - SIGKILL mid-blob (resumed with a Range) and after a layer was
//!   applied (its blob not fetched again);
//! - bad input: a bad reference, a missing tag, a damaged blob, a
//!   registry that hangs, nothing listening: one line, the exit code,
//!   nothing recorded.
#![forbid(unsafe_code)]

mod cli_support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[path = "registry/push.rs"]
mod push;
use cli_support::{busybox_spec, Root};
use integration::fixtures::temp_dir;
use integration::harness::{self, KernelTest};
use integration::need::Need;
use integration::registry::{
    auth_file, free_port, s, LocalAddress, Registry, RegistryOptions, TokenServer,
};
use serde_json::{json, Value};
use snapshotter::image::write::{self, Compression, Entry, ImageSpec, LayerSpec};

fn main() -> ExitCode {
    const NEEDS: &[Need] = &[Need::Root, Need::Loop, Need::Btrfs];
    let t = |name, f| {
        KernelTest::new(name, f)
            .needs(NEEDS)
            .timeout(Duration::from_secs(600))
    };
    let dm_thin = KernelTest::new("vm_dmthin_push_a_committed_image", push::push_on_dm_thin)
        .needs(&[Need::Root, Need::Loop, Need::DmThin])
        .timeout(Duration::from_secs(600));
    harness::main(&[
        dm_thin,
        t("pull_run_and_pull_again", pull_run_and_pull_again),
        t(
            "layers_of_every_compression_and_platforms",
            layers_of_every_compression_and_platforms,
        ),
        t("tls_with_basic_auth", tls_with_basic_auth),
        t("credential_helpers", credential_helpers),
        t("client_certificates", client_certificates),
        t("insecure_registries", insecure_registries),
        t("token_auth", token_auth),
        t("killed_pulls_resume", killed_pulls_resume),
        t("push_a_committed_image", push::push_a_committed_image),
        t(
            "bad_pulls_say_why_and_leave_nothing",
            bad_pulls_say_why_and_leave_nothing,
        ),
    ])
}

/// A btrfs root with `registry_section` as its `[registry]`, its backend
/// made (so a failing pull's one line is its only one).
fn root_for(registry_section: &str) -> Root {
    let root = Root::with_config(&format!(
        "backend = \"btrfs\"\n[btrfs]\nimage_size = \"2G\"\n[registry]\n{registry_section}"
    ));
    root.ok(&["snapshot", "ls"]);
    root
}

fn layout(spec: &ImageSpec) -> tempfile::TempDir {
    let d = temp_dir();
    write::oci_dir(spec, d.path()).unwrap();
    d
}

fn pull(root: &Root, args: &[&str]) -> Value {
    let mut a = vec!["image", "pull"];
    a.extend_from_slice(args);
    root.json(&a)
}

fn pull_run_and_pull_again() {
    let reg = Registry::start(RegistryOptions::default());
    let img = layout(&busybox_spec("busybox:1"));
    reg.push(img.path(), "library/busybox:1", false);
    let root = root_for("");
    let reference = format!("{}/library/busybox:1", reg.host);

    let p = pull(&root, &[&reference]);
    assert_eq!(p["outcome"], "new", "{p}");
    assert_eq!(p["name"], reference.as_str());
    assert_eq!(p["layers_fetched"], 1);
    assert_eq!(
        p["endpoint"],
        format!("http://{}", reg.host),
        "plain http on loopback"
    );
    assert_eq!(
        p["manifest"],
        reg.digest("library/busybox:1"),
        "the registry's digest"
    );
    let out = root.ok(&[
        "run",
        "--rm",
        &reference,
        "--",
        "sh",
        "-c",
        "echo pulled $FROM_IMAGE",
    ]);
    assert_eq!(out.trim(), "pulled yes");
    let gets = reg.blob_gets(None);
    assert_eq!(gets.len(), 2, "the config and the layer: {gets:?}");

    // Again: the manifest is asked for, nothing else.
    let again = pull(&root, &[&reference]);
    assert_eq!(again["outcome"], "already_present", "{again}");
    assert_eq!(reg.blob_gets(None).len(), 2, "no blob fetched again");
    let human = root.ok(&["image", "pull", &reference]);
    assert!(human.contains("up to date"), "{human}");

    // By digest: another name, the layer reused.
    let pinned = format!(
        "{}/library/busybox@{}",
        reg.host,
        p["manifest"].as_str().unwrap()
    );
    let by_digest = pull(&root, &[&pinned]);
    assert_eq!(by_digest["outcome"], "new");
    assert_eq!(by_digest["name"], pinned.as_str());
    assert_eq!(by_digest["layers_fetched"], 0);
    assert_eq!(by_digest["layers_reused"], 1);
    let ls = root.json(&["image", "ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 2, "{ls}");

    // A mirror of docker.io: `busybox:1` never leaves this machine.
    let mirrored = root_for(&format!(
        "[registry.mirrors]\n\"docker.io\" = [\"http://{}\"]\n",
        reg.host
    ));
    let m = pull(&mirrored, &["busybox:1"]);
    assert_eq!(
        (m["name"].as_str(), m["endpoint"].as_str()),
        (
            Some("busybox:1"),
            Some(format!("http://{}", reg.host).as_str())
        ),
        "{m}"
    );
    assert_eq!(
        m["reference"].as_str().unwrap(),
        format!(
            "docker.io/library/busybox:1@{}",
            p["manifest"].as_str().unwrap()
        )
    );
    let out = mirrored.ok(&["run", "--rm", "busybox:1", "--", "echo", "from the mirror"]);
    assert_eq!(out.trim(), "from the mirror");
}

fn marker_layer(path: &str, text: &str, c: Compression) -> LayerSpec {
    LayerSpec {
        tar: write::layer_tar(&[Entry::dir("etc"), Entry::file(path, text.as_bytes(), 0o644)])
            .unwrap(),
        compression: c,
    }
}

fn layers_of_every_compression_and_platforms() {
    let reg = Registry::start(RegistryOptions::default());
    let root = root_for("parallel = 2\n");

    let mut spec = busybox_spec("multi:1");
    spec.layers
        .push(marker_layer("etc/zstd", "zstd layer\n", Compression::Zstd));
    spec.layers.push(marker_layer(
        "etc/plain",
        "plain layer\n",
        Compression::None,
    ));
    spec.layers.push(marker_layer(
        "etc/motd",
        "changed on top\n",
        Compression::Gzip,
    ));
    let img = layout(&spec);
    reg.push(img.path(), "multi:1", false);
    let reference = format!("{}/multi:1", reg.host);
    let p = pull(&root, &[&reference]);
    assert_eq!(
        (
            p["layers_fetched"].as_u64(),
            p["layers"].as_array().map(Vec::len)
        ),
        (Some(4), Some(4)),
        "{p}"
    );
    let out = root.ok(&[
        "run",
        "--rm",
        &reference,
        "--",
        "cat",
        "/etc/zstd",
        "/etc/plain",
        "/etc/motd",
    ]);
    assert_eq!(out, "zstd layer\nplain layer\nchanged on top\n");

    // A two-platform index: the host's manifest unless --platform says.
    let dir = temp_dir();
    let mut manifests = Vec::new();
    for arch in ["arm64", "amd64"] {
        let mut spec = busybox_spec("multi-arch:1");
        spec.platform = ("linux".into(), arch.into());
        spec.layers.push(marker_layer(
            "etc/arch",
            &format!("{arch}\n"),
            Compression::Gzip,
        ));
        let w = write::oci_dir(&spec, dir.path()).unwrap();
        let size = std::fs::metadata(dir.path().join("blobs/sha256").join(w.manifest.hex()))
            .unwrap()
            .len();
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest.to_string(),
            "size": size,
            "platform": { "os": "linux", "architecture": arch },
        }));
    }
    let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
    let index_bytes = index.to_string();
    let index_digest = snapshotter::image::Digest::sha256(index_bytes.as_bytes());
    std::fs::write(
        dir.path().join("blobs/sha256").join(index_digest.hex()),
        &index_bytes,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("index.json"),
        json!({ "schemaVersion": 2, "manifests": [{ "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest.to_string(), "size": index_bytes.len() }] }).to_string(),
    )
    .unwrap();
    reg.push(dir.path(), "multi-arch:1", true);
    let reference = format!("{}/multi-arch:1", reg.host);
    let host = pull(&root, &[&reference]);
    assert_eq!(host["platform"], "linux/amd64", "{host}");
    assert_eq!(
        root.ok(&["run", "--rm", &reference, "--", "cat", "/etc/arch"]),
        "amd64\n"
    );
    let arm_root = root_for("");
    let arm = pull(&arm_root, &["--platform", "linux/arm64", &reference]);
    assert_eq!(arm["platform"], "linux/arm64");
    assert_ne!(arm["manifest"], host["manifest"]);
    let line = root.fails(
        &["image", "pull", "--platform", "linux/s390x", &reference],
        2,
    );
    assert!(
        line.contains("no manifest for linux/s390x")
            && line.contains("linux/arm64, linux/amd64")
            && line.contains("--platform"),
        "{line}"
    );
    let line = root.fails(&["image", "pull", "--platform", "s390x", &reference], 2);
    assert!(line.contains("OS/ARCH"), "{line}");
}

/// busybox pushed to `reg` as `name` (with `pusher:secret`): its
/// reference, and a directory with an auth file with the right password
/// and one with a wrong one.
fn private_image(reg: &Registry, name: &str) -> (String, tempfile::TempDir, PathBuf, PathBuf) {
    let img = layout(&busybox_spec(name));
    reg.push(img.path(), name, false);
    let files = temp_dir();
    let good = auth_file(files.path(), &reg.host, "pusher", "secret");
    let bad = auth_file(files.path(), &reg.host, "pusher", "wrong");
    (format!("{}/{name}", reg.host), files, good, bad)
}

/// A `docker-credential-NAME` helper in `dir`: answers `get` for `host`
/// with `user`/`password`, and "not found" for anything else, as docker's
/// helpers do.
fn credential_helper(dir: &Path, name: &str, host: &str, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread -r server\n\
             if [ \"$server\" = '{host}' ]; then\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n\
             else echo 'credentials not found in native keychain'; exit 1; fi\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Credentials from helpers named in docker's config.json: `credsStore`
/// for every registry, `credHelpers` for one (which wins); a helper with
/// nothing for the registry is anonymous; a missing helper is named.
fn credential_helpers() {
    let reg = Registry::start(RegistryOptions {
        tls: true,
        user: Some(("pusher", "secret")),
        ..RegistryOptions::default()
    });
    let certs = reg.tls.clone().unwrap();
    let (reference, files, _, _) = private_image(&reg, "team/helped:1");
    let bin = files.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    credential_helper(&bin, "good", &reg.host, "pusher", "secret");
    credential_helper(&bin, "wrong", &reg.host, "pusher", "wrong");
    credential_helper(&bin, "other", "elsewhere:5000", "pusher", "secret");
    let path = format!("{}:{}", s(&bin), std::env::var("PATH").unwrap_or_default());
    let config = |name: &str, json: &str| {
        let f = files.path().join(name);
        std::fs::write(&f, json).unwrap();
        root_for(&format!(
            "certs_dirs = [\"{}\"]\nauth_files = [\"{}\"]\n",
            s(&certs),
            s(&f)
        ))
    };
    let pull_with_path = |root: &Root| {
        root.command(&["--json", "image", "pull", &reference])
            .env("PATH", &path)
            .output()
            .unwrap()
    };

    let store = config("store.json", r#"{"auths": {}, "credsStore": "good"}"#);
    let out = pull_with_path(&store);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        store.ok(&["run", "--rm", &reference, "--", "cat", "/etc/motd"]),
        "original\n"
    );

    // credHelpers for this host wins over credsStore and auths.
    let helpers = config(
        "helpers.json",
        &format!(
            r#"{{"auths": {{"{}": {{"auth": "cHVzaGVyOndyb25n"}}}}, "credsStore": "wrong", "credHelpers": {{"{}": "good"}}}}"#,
            reg.host, reg.host
        ),
    );
    assert!(pull_with_path(&helpers).status.success());

    // A helper with nothing for this registry: anonymous, so "log in".
    let nothing = config("nothing.json", r#"{"credsStore": "other"}"#);
    let out = pull_with_path(&nothing);
    assert_eq!(out.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&out.stderr).contains("log in"));
    // Wrong credentials from a helper are refused as any others.
    let wrong = config("wrong.json", r#"{"credsStore": "wrong"}"#);
    let out = pull_with_path(&wrong);
    assert_eq!(out.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the credentials"));
    // A helper that is not installed: named, with the fix; nothing recorded.
    let missing = config("missing.json", r#"{"credsStore": "nosuch"}"#);
    let out = pull_with_path(&missing);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("docker-credential-nosuch") && err.contains("install it"),
        "{err}"
    );
    assert!(missing
        .json(&["image", "ls"])
        .as_array()
        .unwrap()
        .is_empty());
}

/// A registry that wants a TLS client certificate: the `client.cert` /
/// `client.key` pair in its certs.d directory is sent; without it the
/// handshake fails with one line; a certificate without its key is named.
fn client_certificates() {
    let reg = Registry::start(RegistryOptions {
        tls: true,
        client_certs: true,
        ..RegistryOptions::default()
    });
    let certs = reg.tls.clone().unwrap();
    let img = layout(&busybox_spec("mtls:1"));
    reg.push(img.path(), "mtls:1", false);
    let reference = format!("{}/mtls:1", reg.host);
    let root_with = |dir: &Path| root_for(&format!("certs_dirs = [\"{}\"]\n", s(dir)));

    let root = root_with(&certs);
    let p = pull(&root, &[&reference]);
    assert_eq!(p["endpoint"], format!("https://{}", reg.host), "{p}");
    assert_eq!(
        root.ok(&["run", "--rm", &reference, "--", "cat", "/etc/motd"]),
        "original\n"
    );

    // The CA alone: the registry ends the handshake.
    let only_ca = temp_dir();
    let host_dir = only_ca.path().join(&reg.host);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(
        certs.join(&reg.host).join("ca.crt"),
        host_dir.join("ca.crt"),
    )
    .unwrap();
    let line = root_with(only_ca.path()).fails(&["image", "pull", &reference], 9);
    assert!(line.contains("wants a client certificate"), "{line}");

    // A certificate without its key: exit 2 naming where the key goes.
    std::fs::copy(
        certs.join(&reg.host).join("client.cert"),
        host_dir.join("me.cert"),
    )
    .unwrap();
    let half = root_with(only_ca.path());
    let line = half.fails(&["image", "pull", &reference], 2);
    assert!(
        line.contains("me.key") && line.contains("without its key"),
        "{line}"
    );
    assert!(half.json(&["image", "ls"]).as_array().unwrap().is_empty());
}

/// Plain http to a registry that is not on loopback only when the config
/// names it insecure; without that, one line saying where to name it.
fn insecure_registries() {
    let addr = LocalAddress::add(std::net::Ipv4Addr::new(198, 51, 100, 7));
    let reg = Registry::start(RegistryOptions {
        address: Some(addr.0),
        ..RegistryOptions::default()
    });
    let img = layout(&busybox_spec("plain:1"));
    reg.push(img.path(), "plain:1", false);
    let reference = format!("{}/plain:1", reg.host);

    let strict = root_for("retries = 0\n");
    let line = strict.fails(&["image", "pull", &reference], 9);
    assert!(line.contains("[registry] insecure"), "{line}");
    assert!(strict.json(&["image", "ls"]).as_array().unwrap().is_empty());

    let named = root_for(&format!("insecure = [\"{}\"]\n", reg.host));
    let p = pull(&named, &[&reference]);
    assert_eq!(p["endpoint"], format!("http://{}", reg.host), "{p}");
    assert_eq!(
        named.ok(&["run", "--rm", &reference, "--", "cat", "/etc/motd"]),
        "original\n"
    );
}

fn tls_with_basic_auth() {
    let reg = Registry::start(RegistryOptions {
        tls: true,
        user: Some(("pusher", "secret")),
        ..RegistryOptions::default()
    });
    let certs = reg.tls.clone().unwrap();
    let (reference, files, good, bad) = private_image(&reg, "team/private:1");

    // Without the CA: the certificate is not trusted, and the line says where the CA goes.
    let no_ca = root_for(&format!(
        "certs_dirs = []\nauth_files = [\"{}\"]\n",
        s(&good)
    ));
    let line = no_ca.fails(&["image", "pull", &reference], 9);
    assert!(line.contains("certs.d"), "{line}");

    let with = |auth: &Path| {
        root_for(&format!(
            "certs_dirs = [\"{}\"]\nauth_files = [\"{}\"]\n",
            s(&certs),
            s(auth)
        ))
    };
    // No credentials, then wrong ones: exit 8, saying to log in.
    let anon = root_for(&format!(
        "certs_dirs = [\"{}\"]\nauth_files = [\"{}\"]\n",
        s(&certs),
        s(&files.path().join("none.json"))
    ));
    let line = anon.run(&["image", "pull", &reference]);
    assert_eq!(line.code, 8, "{line:?}");
    assert!(line.stderr.contains("log in"), "{line:?}");
    let line = with(&bad).fails(&["image", "pull", &reference], 8);
    assert!(line.contains("refused the credentials"), "{line}");
    assert!(with(&bad)
        .json(&["image", "ls"])
        .as_array()
        .unwrap()
        .is_empty());

    let root = with(&good);
    let p = pull(&root, &[&reference]);
    assert_eq!(p["endpoint"], format!("https://{}", reg.host), "{p}");
    assert_eq!(
        root.ok(&["run", "--rm", &reference, "--", "cat", "/etc/motd"]),
        "original\n"
    );
    // $REGISTRY_AUTH_FILE, as podman reads it.
    let env_root = root_for(&format!("certs_dirs = [\"{}\"]\n", s(&certs)));
    let out = env_root
        .command(&["--json", "image", "pull", &reference])
        .env("REGISTRY_AUTH_FILE", &good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `image pull reference`, which must die by SIGKILL at crash point `step`.
fn pull_killed_at(root: &Root, reference: &str, step: &str) {
    let out = root
        .command(&["image", "pull", reference])
        .env("THINBOX_CRASH_AT", step)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        None,
        "killed at {step}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn killed_pulls_resume() {
    let reg = Registry::start(RegistryOptions::default());
    // A second layer of 24 MiB that gzip cannot shrink, for a blob to die in.
    let mut noise = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut spec = busybox_spec("big:1");
    spec.layers.push(LayerSpec {
        tar: write::layer_tar(&[Entry::dir("data"), Entry::file("data/noise", &noise, 0o644)])
            .unwrap(),
        compression: Compression::Gzip,
    });
    let img = layout(&spec);
    reg.push(img.path(), "big:1", false);
    let reference = format!("{}/big:1", reg.host);
    let root = root_for("parallel = 1\n");

    // Killed half way through a blob: the next pull asks for the rest.
    pull_killed_at(&root, &reference, "pull-blob-half");
    assert!(
        root.json(&["image", "ls"]).as_array().unwrap().is_empty(),
        "no image from a killed pull"
    );
    let before = reg.blob_gets(None).len();
    let p = pull(&root, &[&reference]);
    assert_eq!(p["outcome"], "new");
    let gets = reg.blob_gets(None);
    let resumed: Vec<&String> = gets[before..]
        .iter()
        .filter(|l| l.contains("\" 206 "))
        .collect();
    assert_eq!(
        resumed.len(),
        1,
        "one blob resumed with a Range: {:?}",
        &gets[before..]
    );
    assert_eq!(
        root.ok(&[
            "run",
            "--rm",
            &reference,
            "--",
            "sh",
            "-c",
            "wc -c < /data/noise"
        ])
        .trim(),
        (24 << 20).to_string()
    );
    assert!(
        !root
            .path()
            .join("pulls")
            .read_dir()
            .map(|mut d| d.any(|e| e.unwrap().path().is_dir()))
            .unwrap_or(false),
        "the staging directory is gone"
    );

    // Killed after the first layer was applied: the import is rolled
    // back, and the next pull applies it again from its kept blob.
    let root = root_for("parallel = 1\n");
    let first_layer = p["layers"][0]["digest"].as_str().unwrap().to_owned();
    let fetched_before = reg.blob_gets(Some(&first_layer)).len();
    pull_killed_at(&root, &reference, "pull-layer-applied");
    assert_eq!(reg.blob_gets(Some(&first_layer)).len(), fetched_before + 1);
    let p = pull(&root, &[&reference]);
    assert_eq!(p["outcome"], "new");
    assert_eq!(
        reg.blob_gets(Some(&first_layer)).len(),
        fetched_before + 1,
        "the applied layer's blob is not fetched again"
    );
    let snaps = root.json(&["snapshot", "ls"]);
    assert_eq!(
        snaps.as_array().unwrap().len(),
        2,
        "two layers, nothing left of the killed import: {snaps}"
    );
}

fn bad_pulls_say_why_and_leave_nothing() {
    let reg = Registry::start(RegistryOptions::default());
    let img = temp_dir();
    let layer = write::oci_dir(&busybox_spec("busybox:1"), img.path())
        .unwrap()
        .layers[0]
        .digest;
    reg.push(img.path(), "busybox:1", false);
    let root = root_for("retries = 0\ntimeout = 2\n");

    let line = root.fails(&["image", "pull", "Busybox"], 2);
    assert!(
        line.contains("\"Busybox\"") && line.contains("lowercase"),
        "{line}"
    );
    let line = root.fails(&["image", "pull", &format!("{}/busybox:nope", reg.host)], 3);
    assert!(
        line.contains("busybox:nope") && line.contains("404") && line.contains("tag"),
        "{line}"
    );

    // A damaged blob in the registry's storage: refused, nothing kept.
    let hex = layer.hex();
    let data = reg.dir.path().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let line = root.fails(&["image", "pull", &format!("{}/busybox:1", reg.host)], 1);
    assert!(line.contains(&hex) && line.contains("damaged"), "{line}");
    assert!(root.json(&["image", "ls"]).as_array().unwrap().is_empty());
    assert!(
        root.json(&["snapshot", "ls"])
            .as_array()
            .unwrap()
            .is_empty(),
        "no layer made"
    );

    // A registry that accepts and never answers: a timeout, not a hang.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_host = hang.local_addr().unwrap().to_string();
    let held = std::thread::spawn(move || {
        let mut keep = Vec::new();
        for c in hang.incoming().take(4) {
            keep.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let line = root.fails(&["image", "pull", &format!("{hang_host}/busybox:1")], 9);
    assert!(
        line.contains("no answer in time") && line.contains(&hang_host),
        "{line}"
    );
    drop(held);

    // Nothing listening.
    let line = root.fails(
        &[
            "image",
            "pull",
            &format!("127.0.0.1:{}/busybox:1", free_port()),
        ],
        9,
    );
    assert!(
        line.contains("refused") || line.contains("cannot connect"),
        "{line}"
    );
}

fn token_auth() {
    let dir = temp_dir();
    let tokens = TokenServer::start(dir.path());
    let reg = Registry::start(RegistryOptions {
        token: Some((tokens.realm.clone(), tokens.cert.clone())),
        ..RegistryOptions::default()
    });
    let (reference, files, good, bad) = private_image(&reg, "team/tok:1");

    let anon = root_for(&format!(
        "auth_files = [\"{}\"]\n",
        s(&files.path().join("none.json"))
    ));
    let line = anon.fails(&["image", "pull", &reference], 8);
    assert!(line.contains("token service wants credentials"), "{line}");
    let line = root_for(&format!("auth_files = [\"{}\"]\n", s(&bad)))
        .fails(&["image", "pull", &reference], 8);
    assert!(line.contains("refused the credentials"), "{line}");

    let root = root_for(&format!("auth_files = [\"{}\"]\n", s(&good)));
    let before = tokens.requests.load(std::sync::atomic::Ordering::Relaxed);
    let p = pull(&root, &[&reference]);
    assert_eq!(p["outcome"], "new", "{p}");
    let asked = tokens.requests.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(
        asked, 1,
        "one token for the manifest and both blobs (cached per scope)"
    );
    assert_eq!(
        root.ok(&["run", "--rm", &reference, "--", "cat", "/etc/motd"]),
        "original\n"
    );
}

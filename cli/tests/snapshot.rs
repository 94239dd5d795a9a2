//! `thinbox snapshot ...` through the real binary on the host's embedded
//! default (loopback btrfs): every command's happy path with `--json`
//! parsed, and bad input (unknown key, parent not committed, rm of a
//! parent, duplicate key, commit of a view, bad labels and filters).
#![forbid(unsafe_code)]

mod cli_support;

use std::process::ExitCode;

use cli_support::Root;
use integration::fixtures::run;
use integration::harness::{self, KernelTest};
use integration::need::Need;
use serde_json::Value;

fn main() -> ExitCode {
    harness::main(&[
        KernelTest::new("snapshot_commands_happy_path", snapshot_commands_happy_path).needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
        ]),
        KernelTest::new("snapshot_bad_input", snapshot_bad_input).needs(&[
            Need::Root,
            Need::Loop,
            Need::Btrfs,
        ]),
    ])
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

fn snapshot_commands_happy_path() {
    let root = Root::new();
    let mnt = root.path().join("mnt");
    let m = mnt.to_str().unwrap();

    // prepare + mount, write, unmount, commit.
    let p = root.json(&[
        "snapshot",
        "prepare",
        "layer1-key",
        "--mount",
        m,
        "--label",
        "a=b",
    ]);
    assert_eq!(p["key"], "layer1-key", "{p}");
    assert_eq!(p["mounted_at"], m, "{p}");
    assert!(!p["mounts"].as_array().unwrap().is_empty(), "{p}");
    std::fs::write(mnt.join("one"), "1").unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    std::fs::write(mnt.join("dir/two"), "2").unwrap();
    run("umount", &[m]);
    let c = root.json(&[
        "snapshot",
        "commit",
        "layer1",
        "layer1-key",
        "--label",
        "x=y",
    ]);
    assert_eq!(c["name"], "layer1", "{c}");
    assert_eq!(c["kind"], "committed", "{c}");

    // A child that deletes and adds.
    let out = root.ok(&["snapshot", "prepare", "layer2-key", "layer1"]);
    assert!(out.starts_with("mount -t "), "mounts printed: {out}");
    root.ok(&["snapshot", "mounts", "layer2-key", "--mount", m]);
    assert_eq!(std::fs::read_to_string(mnt.join("one")).unwrap(), "1");
    std::fs::remove_file(mnt.join("one")).unwrap();
    std::fs::write(mnt.join("three"), "3").unwrap();
    run("umount", &[m]);
    root.ok(&["snapshot", "commit", "layer2", "layer2-key"]);

    // A view and an active snapshot.
    let v = root.json(&["snapshot", "view", "look", "layer2"]);
    assert_eq!(v["key"], "look", "{v}");
    root.ok(&["snapshot", "prepare", "work", "layer2"]);

    // ls, with and without filters.
    let all = root.json(&["snapshot", "ls"]);
    assert_eq!(names(&all), ["layer1", "layer2", "look", "work"], "{all}");
    let committed = root.json(&["snapshot", "ls", "--filter", "kind==committed"]);
    assert_eq!(names(&committed), ["layer1", "layer2"], "{committed}");
    let kids = root.json(&["snapshot", "ls", "--filter", "parent==layer2"]);
    assert_eq!(names(&kids), ["look", "work"], "{kids}");
    let human = root.ok(&["snapshot", "ls"]);
    assert!(human.lines().next().unwrap().starts_with("KEY"), "{human}");
    assert_eq!(human.lines().count(), 5, "{human}");

    // inspect.
    let i = root.json(&["snapshot", "inspect", "layer2"]);
    assert_eq!(i["parent"], "layer1", "{i}");
    assert_eq!(i["kind"], "committed", "{i}");
    let i = root.json(&["snapshot", "inspect", "layer1"]);
    assert_eq!(i["labels"]["x"], "y", "{i}");
    assert!(i["created"].as_u64().unwrap() > 1_600_000_000, "{i}");
    let i = root.json(&["snapshot", "inspect", "look"]);
    assert_eq!(i["kind"], "view", "{i}");

    // usage.
    let u = root.json(&["snapshot", "usage", "layer1"]);
    assert!(u["size"].as_u64().unwrap() >= 2, "{u}");
    assert!(u["inodes"].as_u64().unwrap() >= 3, "{u}");

    // diff: the OCI layer of layer2 holds its changes only.
    let tar = root.path().join("layer2.tar");
    let d = root.json(&["snapshot", "diff", "layer2", tar.to_str().unwrap()]);
    assert_eq!(d["whiteouts"], 1, "{d}");
    let list = run("tar", &["-tf", tar.to_str().unwrap()]);
    let entries: Vec<&str> = list.lines().map(|l| l.trim_start_matches("./")).collect();
    assert!(entries.contains(&"three"), "{list}");
    assert!(entries.contains(&".wh.one"), "{list}");
    assert!(!entries.iter().any(|e| e.starts_with("dir")), "{list}");
    // To stdout too.
    let out = root
        .command(&["snapshot", "diff", "layer1", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.len() >= 1024, "a tar on stdout");

    // rm, children first.
    for k in ["look", "work", "layer2", "layer1"] {
        let r = root.json(&["snapshot", "rm", k]);
        assert_eq!(r["removed"], k, "{r}");
    }
    assert_eq!(root.json(&["snapshot", "ls"]), serde_json::json!([]));
}

fn snapshot_bad_input() {
    let root = Root::new();
    root.ok(&["snapshot", "prepare", "a"]);
    root.ok(&["snapshot", "commit", "base", "a"]);
    root.ok(&["snapshot", "prepare", "active", "base"]);
    root.ok(&["snapshot", "view", "v", "base"]);

    // Unknown keys: exit 3.
    for args in [
        &["snapshot", "inspect", "nope"][..],
        &["snapshot", "rm", "nope"],
        &["snapshot", "usage", "nope"],
        &["snapshot", "mounts", "nope"],
        &["snapshot", "commit", "n", "nope"],
        &["snapshot", "prepare", "x", "nope"],
    ] {
        let line = root.fails(args, 3);
        assert!(line.contains("nope"), "{args:?}: {line}");
    }
    // Parent not committed: exit 2.
    let line = root.fails(&["snapshot", "prepare", "x", "active"], 2);
    assert!(line.contains("not committed"), "{line}");
    let line = root.fails(&["snapshot", "view", "x", "v"], 2);
    assert!(line.contains("not committed"), "{line}");
    // rm of a parent: exit 4, and it stays.
    let line = root.fails(&["snapshot", "rm", "base"], 4);
    assert!(line.contains("children"), "{line}");
    root.json(&["snapshot", "inspect", "base"]);
    // A key in use: exit 4.
    let line = root.fails(&["snapshot", "prepare", "active", "base"], 4);
    assert!(line.contains("active") && line.contains("exists"), "{line}");
    root.fails(&["snapshot", "commit", "base", "active"], 4);
    // Commit of a view: exit 2.
    let line = root.fails(&["snapshot", "commit", "c", "v"], 2);
    assert!(line.contains("view"), "{line}");
    // Bad labels, filters, keys.
    let line = root.fails(&["snapshot", "prepare", "y", "--label", "novalue"], 2);
    assert!(line.contains("NAME=VALUE"), "{line}");
    root.fails(&["snapshot", "ls", "--filter", "size==1"], 2);
    root.fails(&["snapshot", "inspect", ""], 2);
    // A diff that fails leaves no file.
    let out = root.path().join("no.tar");
    root.fails(&["snapshot", "diff", "nope", out.to_str().unwrap()], 3);
    assert!(!out.exists());
    // --debug shows the whole chain (and a backtrace).
    let r = root.run(&["--debug", "snapshot", "inspect", "nope"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.lines().count() > 1, "{r:?}");
    assert!(r.stderr.contains("Caused by"), "{r:?}");
    // None of it changed anything.
    let all = root.json(&["snapshot", "ls"]);
    assert_eq!(names(&all), ["active", "base", "v"], "{all}");
}

//! containerd's view, for `thinbox doctor`: the snapshots thinbox keeps for
//! containerd (stored as `@containerd/NAMESPACE/ID/KEY`, the names
//! containerd's metadata store gives its backend) against the ones
//! containerd lists through `thinbox serve`.
//!
//! containerd's List of a proxy snapshotter skips the records whose backend
//! snapshot is gone (its Walk drops a NotFound Stat), so only one direction
//! can be seen through it: snapshots thinbox keeps that containerd has no
//! record of (its database reset or restored, a crash between the backend's
//! prepare and containerd's commit). They are reported, never removed:
//! containerd's garbage collector removes what it does not know once it
//! cleans thinbox's snapshotter (after containerd removed a snapshot of it),
//! and one of them may be a prepare still in flight.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use super::{Finding, FindingKind};
use crate::clients::containerd_view;
use crate::error::{Error, ErrorKind, Result};

/// Where containerd's view comes from: a seam, so the comparison is tested
/// without containerd.
pub trait ContainerdView {
    /// containerd's namespaces.
    fn namespaces(&self) -> Result<Vec<String>>;
    /// The keys of the snapshots containerd lists in `namespace` for
    /// thinbox's snapshotter.
    fn snapshot_keys(&self, namespace: &str) -> Result<Vec<String>>;
    /// What to call this view in messages (its address).
    fn describe(&self) -> String;
}

/// containerd through Debian's (and containerd.io's) `ctr`.
#[derive(Debug, Clone)]
pub struct Ctr {
    /// containerd's socket.
    pub address: PathBuf,
    /// The name containerd's config gives thinbox's proxy plugin.
    pub snapshotter: String,
}

impl Ctr {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .output()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unreachable,
                    format!("cannot run ctr (containerd's client): {e}"),
                )
            })?;
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Unreachable,
                format!(
                    "ctr {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl ContainerdView for Ctr {
    fn namespaces(&self) -> Result<Vec<String>> {
        if !self.address.exists() {
            return Err(Error::new(
                ErrorKind::Unreachable,
                format!(
                    "no containerd socket at {}: give containerd's address with --containerd-address",
                    self.address.display()
                ),
            ));
        }
        Ok(self
            .run(&["namespaces", "ls", "-q"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn snapshot_keys(&self, namespace: &str) -> Result<Vec<String>> {
        let out = self.run(&[
            "--namespace",
            namespace,
            "snapshots",
            "--snapshotter",
            &self.snapshotter,
            "ls",
        ])?;
        Ok(parse_snapshot_keys(&out))
    }

    fn describe(&self) -> String {
        format!("containerd at {}", self.address.display())
    }
}

/// The KEY column of `ctr snapshots ls` (`KEY PARENT KIND`, a header first).
pub fn parse_snapshot_keys(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// containerd's namespace and key of a stored key made through its
/// metadata store (`@containerd/NAMESPACE/ID/KEY`, ID its decimal counter);
/// `None` for other clients' keys (containerd's own test suite, say, which
/// talks to `serve` directly with keys of its choosing).
pub fn containerd_name(stored: &str) -> Option<(&str, &str)> {
    let rest = containerd_view(stored)?;
    let (namespace, rest) = rest.split_once('/')?;
    let (id, key) = rest.split_once('/')?;
    (!namespace.is_empty()
        && !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && !key.is_empty())
    .then_some((namespace, key))
}

/// Snapshots thinbox keeps for containerd that `view` has no record of.
pub fn unknown_to_containerd(stored: &[String], view: &dyn ContainerdView) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let namespaces: BTreeSet<String> = view.namespaces()?.into_iter().collect();
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    for ns in &namespaces {
        for key in view.snapshot_keys(ns)? {
            listed.insert((ns.clone(), key));
        }
    }
    for s in stored {
        let Some((ns, key)) = containerd_name(s) else {
            continue;
        };
        if listed.contains(&(ns.to_owned(), key.to_owned())) {
            continue;
        }
        let why = if namespaces.contains(ns) {
            format!("containerd's namespace {ns} has no snapshot {key}")
        } else {
            format!("containerd has no namespace {ns}")
        };
        findings.push(Finding {
            kind: FindingKind::UnknownToContainerd,
            subject: s.clone(),
            detail: format!(
                "thinbox keeps {s} for containerd, but {why} ({}): its space is held for nothing",
                view.describe()
            ),
            fix: "containerd's garbage collector removes it at the first collection after containerd removes any snapshot on thinbox (an image or a container on thinbox removed); a restart alone does not".to_owned(),
            fixable: false,
        });
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        namespaces: Vec<&'static str>,
        keys: Vec<(&'static str, &'static str)>,
    }

    impl ContainerdView for Fake {
        fn namespaces(&self) -> Result<Vec<String>> {
            Ok(self.namespaces.iter().map(|s| s.to_string()).collect())
        }
        fn snapshot_keys(&self, namespace: &str) -> Result<Vec<String>> {
            Ok(self
                .keys
                .iter()
                .filter(|(ns, _)| *ns == namespace)
                .map(|(_, k)| k.to_string())
                .collect())
        }
        fn describe(&self) -> String {
            "a fake containerd".to_owned()
        }
    }

    #[test]
    fn names_of_containerd_made_keys() {
        assert_eq!(
            containerd_name("@containerd/default/12/sha256:abc"),
            Some(("default", "sha256:abc"))
        );
        assert_eq!(
            containerd_name("@containerd/k8s.io/3/ctr/with/slashes"),
            Some(("k8s.io", "ctr/with/slashes"))
        );
        for other in [
            "@containerd//tmp/suite/key",
            "@containerd/default/x1/key",
            "@containerd/default/12/",
            "mine",
            "@containerd/default",
        ] {
            assert_eq!(containerd_name(other), None, "{other}");
        }
    }

    #[test]
    fn parses_ctr_snapshot_listing() {
        let out = "KEY                                                                     PARENT KIND\n\
                   sha256:5b0f327be733efb4b5d0efe6f1a4d6d2f1d6bb5f94d1f0f3c7f6d6f8b2b1e1a1         Committed\n\
                   hello sha256:5b0f327be733efb4b5d0efe6f1a4d6d2f1d6bb5f94d1f0f3c7f6d6f8b2b1e1a1 Active\n";
        assert_eq!(
            parse_snapshot_keys(out),
            [
                "sha256:5b0f327be733efb4b5d0efe6f1a4d6d2f1d6bb5f94d1f0f3c7f6d6f8b2b1e1a1",
                "hello"
            ]
        );
        assert!(parse_snapshot_keys("KEY PARENT KIND\n").is_empty());
    }

    #[test]
    fn only_what_containerd_does_not_list_is_reported() {
        let view = Fake {
            namespaces: vec!["default", "k8s.io"],
            keys: vec![("default", "sha256:a"), ("k8s.io", "pod")],
        };
        let stored: Vec<String> = [
            "@containerd/default/1/sha256:a",
            "@containerd/default/2/sha256:b",
            "@containerd/k8s.io/7/pod",
            "@containerd/gone/3/x",
            "@containerd//tmp/suite/key",
            "cli-made",
        ]
        .map(str::to_owned)
        .to_vec();
        let found = unknown_to_containerd(&stored, &view).unwrap();
        let subjects: Vec<&str> = found.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(
            subjects,
            ["@containerd/default/2/sha256:b", "@containerd/gone/3/x"]
        );
        assert!(found
            .iter()
            .all(|f| !f.fixable && f.kind == FindingKind::UnknownToContainerd));
        assert!(
            found[1].detail.contains("no namespace gone"),
            "{}",
            found[1].detail
        );
    }
}

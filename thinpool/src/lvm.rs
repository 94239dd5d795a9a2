//! lvm2 and util-linux as thinbox drives them for direct-lvm pools: only
//! their machine-readable output (`lvs --reportformat json`, `wipefs
//! --json`) and exit status are used, never their English messages.
//!
//! Needs lvm2 with thin support (`lvconvert --thinpool`, lvm 2.02.99+ for
//! `--reportformat json` 2.02.158+) and util-linux 2.29+ for `wipefs --json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};

/// Runs a tool; returns stdout, or a [`ErrorKind::ToolFailed`] error.
pub(crate) fn run(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::ToolMissing {
                    tool: tool.to_owned(),
                }
            } else {
                ErrorKind::Io
            };
            Error::new(kind).with_source(e)
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(Error::new(ErrorKind::ToolFailed {
            tool: format!("{tool} {}", args.join(" ")),
            status: out.status.code(),
        })
        .with_source(std::io::Error::other(stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct WipefsReport {
    #[serde(default)]
    signatures: Vec<WipefsSignature>,
}

#[derive(Deserialize)]
struct WipefsSignature {
    #[serde(rename = "type")]
    kind: String,
}

/// Signatures (partition tables, filesystems, PV labels) found on a device.
pub fn signatures(dev: &Path) -> Result<Vec<String>> {
    let d = dev.to_str().unwrap_or_default();
    let out = run("wipefs", &["--json", "--no-act", d]).map_err(|e| e.path(dev))?;
    parse_wipefs(&out)
}

/// Parses `wipefs --json` output (empty output: no signatures).
pub fn parse_wipefs(out: &str) -> Result<Vec<String>> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let r: WipefsReport =
        serde_json::from_str(out).map_err(|e| Error::parse("wipefs report", out, e.to_string()))?;
    Ok(r.signatures.into_iter().map(|s| s.kind).collect())
}

#[derive(Deserialize)]
struct LvsReport {
    report: Vec<LvsSection>,
}

#[derive(Deserialize)]
struct LvsSection {
    #[serde(default)]
    lv: Vec<LvRow>,
}

/// One row of `lvs --reportformat json -o lv_name,vg_name,lv_attr,lv_dm_path`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct LvRow {
    /// LV name.
    pub lv_name: String,
    /// VG name.
    pub vg_name: String,
    /// Attribute string (`twi-a-t---` for an active thin pool).
    pub lv_attr: String,
    /// `/dev/mapper/...` path of the LV's top dm device.
    pub lv_dm_path: String,
}

impl LvRow {
    /// True for a thin-pool LV (attribute `t` in the first position).
    pub fn is_thin_pool(&self) -> bool {
        self.lv_attr.starts_with('t')
    }

    /// The dm name of the LV.
    pub fn dm_name(&self) -> &str {
        self.lv_dm_path.trim_start_matches("/dev/mapper/")
    }
}

/// Parses an `lvs --reportformat json` report.
pub fn parse_lvs(out: &str) -> Result<Vec<LvRow>> {
    let r: LvsReport =
        serde_json::from_str(out).map_err(|e| Error::parse("lvs report", out, e.to_string()))?;
    Ok(r.report.into_iter().flat_map(|s| s.lv).collect())
}

/// The LV `vg/lv`.
pub fn lv(vg: &str, lv: &str) -> Result<LvRow> {
    let out = run(
        "lvs",
        &[
            "--reportformat",
            "json",
            "-o",
            "lv_name,vg_name,lv_attr,lv_dm_path",
            &format!("{vg}/{lv}"),
        ],
    )?;
    parse_lvs(&out)?.into_iter().next().ok_or_else(|| {
        Error::new(ErrorKind::NotFound {
            name: format!("{vg}/{lv}"),
        })
    })
}

/// The LVM profile file thinbox writes for a pool.
pub fn profile_path(dir: &Path, vg: &str, lv: &str) -> PathBuf {
    dir.join(format!("{}.profile", profile_name(vg, lv)))
}

/// The profile's name (`--metadataprofile NAME`).
pub fn profile_name(vg: &str, lv: &str) -> String {
    format!("thinbox-{vg}-{lv}")
}

/// The profile's text: autoextend threshold and percent.
pub fn profile_text(threshold: u8, percent: u8) -> String {
    format!(
        "activation {{\n\tthin_pool_autoextend_threshold={threshold}\n\tthin_pool_autoextend_percent={percent}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wipefs() {
        assert!(parse_wipefs("").unwrap().is_empty());
        let out = r#"{
           "signatures": [
              {"device": "vda", "offset": "0x218", "type": "LVM2_member", "uuid": "x", "label": null},
              {"device": "vda", "offset": "0x1fe", "type": "dos", "uuid": null, "label": null}
           ]
        }"#;
        assert_eq!(parse_wipefs(out).unwrap(), vec!["LVM2_member", "dos"]);
        assert!(parse_wipefs("{").is_err());
    }

    #[test]
    fn parses_lvs() {
        let out = r#"{
          "report": [
              {
                  "lv": [
                      {"lv_name":"pool", "vg_name":"tb", "lv_attr":"twi-a-tz--", "lv_dm_path":"/dev/mapper/tb-pool"}
                  ]
              }
          ]
        }"#;
        let v = parse_lvs(out).unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].is_thin_pool());
        assert_eq!(v[0].dm_name(), "tb-pool");
    }

    #[test]
    fn profile() {
        let t = profile_text(80, 20);
        assert!(t.contains("thin_pool_autoextend_threshold=80"));
        assert!(t.contains("thin_pool_autoextend_percent=20"));
        assert_eq!(
            profile_path(Path::new("/etc/lvm/profile"), "vg", "p"),
            PathBuf::from("/etc/lvm/profile/thinbox-vg-p.profile")
        );
    }
}

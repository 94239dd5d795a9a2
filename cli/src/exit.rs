//! Exit codes: one per family of [`ErrorKind`], as `thinbox --help` lists
//! them. 2 is also what clap uses for usage errors.

use engine::ErrorKind;

/// The process exit code for `kind`.
pub fn code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidArgument => 2,
        ErrorKind::NotFound => 3,
        ErrorKind::AlreadyExists | ErrorKind::InUse => 4,
        ErrorKind::NotRoot => 5,
        ErrorKind::BackendUnavailable => 6,
        ErrorKind::NoSpace => 7,
        ErrorKind::Unauthorized => 8,
        ErrorKind::Unreachable => 9,
        _ => 1,
    }
}

/// The stable name of `kind` in `--json` errors.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::InUse => "in_use",
        ErrorKind::NotRoot => "not_root",
        ErrorKind::BackendUnavailable => "backend_unavailable",
        ErrorKind::NoSpace => "no_space",
        ErrorKind::Io => "io",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::Unreachable => "unreachable",
        _ => "failed",
    }
}

/// A failure as one JSON object, for stderr under `--json`: its kind, exit
/// code, whole message, and the fix (thinbox's messages end with what to
/// do, after the last `": "`; null when there is none).
pub fn error_json(kind: &str, code: u8, message: &str) -> serde_json::Value {
    let fix = message
        .rsplit_once(": ")
        .map(|(_, f)| f.trim())
        .filter(|f| !f.is_empty());
    serde_json::json!({
        "error": { "kind": kind, "exit_code": code, "message": message, "fix": fix }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_per_family() {
        let codes = [
            ErrorKind::Failed,
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::NotRoot,
            ErrorKind::BackendUnavailable,
            ErrorKind::NoSpace,
            ErrorKind::Unauthorized,
            ErrorKind::Unreachable,
        ]
        .map(code);
        let mut sorted = codes.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len(), "{codes:?}");
        assert_eq!(code(ErrorKind::InUse), code(ErrorKind::AlreadyExists));
        assert_eq!(code(ErrorKind::Io), 1);
        assert_eq!(code(ErrorKind::Corrupt), 1);
    }

    #[test]
    fn library_errors_map_to_exit_codes() {
        let e: engine::Error = thinpool::Error::new(thinpool::ErrorKind::DmThinUnsupported).into();
        assert_eq!(code(e.kind), 6);
        let e: engine::Error =
            thinpool::Error::new(thinpool::ErrorKind::NameTaken { name: "p".into() }).into();
        assert_eq!(code(e.kind), 4);
        let e: engine::Error =
            snapshotter::Error::new(snapshotter::ErrorKind::NotFound, "stat").into();
        assert_eq!(code(e.kind), 3);
        let e: engine::Error =
            thinpool::Error::new(thinpool::ErrorKind::InvalidBlockSize { bytes: 4096 }).into();
        assert_eq!(code(e.kind), 2);
        let e: engine::Error = thinpool::Error::new(thinpool::ErrorKind::NotRoot).into();
        assert_eq!(code(e.kind), 5);
    }

    #[test]
    fn json_errors_carry_kind_code_message_and_fix() {
        let v = error_json(
            kind_name(ErrorKind::NotFound),
            3,
            "no container named \"x\": `thinbox ps -a` lists them",
        );
        assert_eq!(v["error"]["kind"], "not_found");
        assert_eq!(v["error"]["exit_code"], 3);
        assert_eq!(v["error"]["fix"], "`thinbox ps -a` lists them");
        let v = error_json("io", 1, "disk on fire");
        assert!(v["error"]["fix"].is_null());
        assert_eq!(v["error"]["message"], "disk on fire");
    }
}

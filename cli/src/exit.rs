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
        _ => 1,
    }
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
}

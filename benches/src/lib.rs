//! Criterion benchmarks for thinbox. Each benchmark measures thinbox and a
//! peer doing the same work in the same run (raw dmsetup/btrfs/zfs commands,
//! runc and crun, overlayfs) and the ratio goes into docs/benchmarks.md.
//!
//! The benchmark targets are in `benches/benches/` (`snapshot_backends`,
//! `container_start`; thinpool has its own `snapshot_cycle`); this library is
//! empty, the home for code they come to share.
#![forbid(unsafe_code)]

//! Criterion benchmarks for thinbox. Each benchmark measures thinbox and a
//! peer doing the same work in the same run (raw dmsetup/btrfs/zfs commands,
//! runc and crun, overlayfs) and the ratio goes into docs/benchmarks.md.
//!
//! The benchmark targets arrive with the thinpool, snapshotter and runner
//! issues; this crate holds what they will share.
#![forbid(unsafe_code)]

//! Real-kernel testing for thinbox.
//!
//! thinbox is built on machines whose kernel has loop devices, btrfs,
//! overlayfs and cgroups but no device-mapper and no ZFS. This crate makes
//! the environment a test needs explicit and takes the test to a kernel that
//! has it:
//!
//! - [`need`]: what a test needs ([`need::Need`]) and what the running kernel
//!   has ([`need::Environment`]);
//! - [`harness`]: the `main` of `harness = false` test targets: each test in
//!   its own child process, skipped locally / failed under `CI=true` when its
//!   needs are missing;
//! - [`vm`]: boots Debian's stock kernel under QEMU (KVM when it works, TCG
//!   otherwise) with the host root shared read-only, a chosen cgroup layout
//!   and spare virtio disks, and runs a command inside;
//! - [`orchestrate`]: `thinbox-test`, which runs every test of the workspace
//!   where it can run and prints `host:`, `vm:` and `total:` lines;
//! - [`containerd`]: containerd's own snapshotter test suite, built from
//!   Debian's Go sources, and its verdicts;
//! - [`fixtures`]: self-removing loop devices, mounts and names, and a sweep
//!   for what killed tests leave behind.
//!
//! The guest is prepared by `scripts/setup.sh`; see docs/testing.md.
#![deny(unsafe_code)]

pub mod containerd;
pub mod fixtures;
pub mod harness;
pub mod need;
pub mod orchestrate;
pub mod registry;
// The one module whose `unsafe` blocks the crate allows, each with a SAFETY comment.
#[allow(unsafe_code)]
mod sys;
pub mod vm;

//! Provision and operate device-mapper thin-pools.
//!
//! Kernel features needed: device-mapper (`CONFIG_BLK_DEV_DM`, `/dev/mapper/control`,
//! ioctl interface 4.x), the `thin-pool` and `thin` targets
//! (`CONFIG_DM_THIN_PROVISIONING`, module `dm-thin-pool`; kernel 4.19+ for the
//! metadata low watermark in the status line), and loop devices (`CONFIG_BLK_DEV_LOOP`,
//! `/dev/loop-control`; `LOOP_SET_DIRECT_IO` since 4.4) for loopback pools. All
//! of it needs root (CAP_SYS_ADMIN).
//!
//! Vocabulary: a *pool* is a `thin-pool` dm device over a metadata device and a
//! data device; a *thin device* is a 24-bit [`ThinId`] inside the pool's
//! metadata, which may be *active* (a `thin` dm device exists) or not; a
//! *snapshot* is a thin device created from another one sharing its blocks.
//!
//! Layers, bottom up:
//! - [`units`], [`table`], [`status`], [`metadata_size`]: typed units and ids,
//!   every kernel string as a type that parses and prints (no root needed);
//! - [`dm`], [`loopdev`], [`metadata`], [`lvm`]: trait seams over
//!   device-mapper control, loop control, the offline metadata tools
//!   (`thin_ls`, `thin_check`) and lvm2, each with a real implementation and
//!   a fake, passed in by the caller through [`pool::Deps`];
//! - [`store`]: the crash-safe record store (SQLite; intent before each
//!   kernel mutation, done after it, tied together by the pool's transaction id);
//! - [`pool`]: loopback pools, direct-lvm pools ([`lvm`]) and adopted pools,
//!   their thin devices and snapshots, filesystems on them ([`fs`]),
//!   reconciliation on open, autoextend on dm events, the free-space floor,
//!   clean shutdown, `thin_check` after an unclean stop, and teardown.
//!
//! Lifecycle: `Pool::create_loopback` / `create_lvm` / `adopt` → `create_thin`,
//! `snapshot`, `activate`, `deactivate`, `resize_thin`, `delete_thin` →
//! `watch` (autoextend; `Pool::monitor` says whether dmeventd or this loop
//! watches an LVM pool) → `shutdown` (keep) or `destroy` / `destroy_deferred`
//! (remove). `open_loopback` / `open_lvm` / `open_adopted` re-activate
//! idempotently and reconcile: half-made thin devices are rolled back,
//! finished ones completed (an interrupted delete or resize is finished),
//! unknown thin ids reported, missing ones marked; a direct-lvm creation
//! interrupted before it committed is rolled back.
//!
//! Tools used on the host: thin-provisioning-tools (`thin_ls`, `thin_check`),
//! lvm2 and util-linux `wipefs` for direct-lvm, e2fsprogs/xfsprogs for `fs`.
#![forbid(unsafe_code)]

pub mod backing;
pub mod checked;
pub mod dm;
pub mod error;
pub mod fs;
pub mod loopdev;
pub mod lvm;
pub mod metadata;

pub mod metadata_size;
pub mod pool;

pub mod sqlite;
pub mod status;
pub mod store;

pub mod table;
pub mod units;

pub use error::{Context, Error, ErrorKind, Result};
pub use units::{BlockSize, Bytes, DataBlocks, MetaBlocks, Sectors, ThinId, TransactionId};

//! An in-memory fake backend: objects are entries in a shared map, and a
//! crash can be injected at any operation (the call panics before or after
//! doing its work), to test [`crate::core::Snapshots`]'s recovery.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::core::{Backend, Object};
use crate::error::{Error, ErrorKind, Result};
use crate::mount::MountSpec;
use crate::store::SnapshotId;
use crate::types::{Capabilities, Kind, Labels, Usage};

/// Where a fake operation should fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Panic (a crash) before doing anything.
    CrashBefore(&'static str),
    /// Panic (a crash) after doing the work.
    CrashAfter(&'static str),
    /// Return an error without doing anything.
    Fail(&'static str),
}

/// The objects, shared so a test can inspect them and reopen over them.
pub type Objects = Arc<Mutex<BTreeMap<SnapshotId, Kind>>>;

/// The fake.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    /// The objects.
    pub objects: Objects,
    /// An injected fault.
    pub fault: Option<Fault>,
}

impl MemoryBackend {
    /// A fake over `objects` with an optional fault.
    pub fn new(objects: Objects, fault: Option<Fault>) -> MemoryBackend {
        MemoryBackend { objects, fault }
    }

    fn step(
        &self,
        op: &'static str,
        work: impl FnOnce(&mut BTreeMap<SnapshotId, Kind>),
    ) -> Result<()> {
        match self.fault {
            Some(Fault::CrashBefore(o)) if o == op => panic!("injected crash before {op}"),
            Some(Fault::Fail(o)) if o == op => {
                return Err(Error::new(ErrorKind::Io, op).detail("injected failure"))
            }
            _ => {}
        }
        work(&mut self.objects.lock().unwrap_or_else(|p| p.into_inner()));
        if matches!(self.fault, Some(Fault::CrashAfter(o)) if o == op) {
            panic!("injected crash after {op}");
        }
        Ok(())
    }
}

impl Backend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_level: false,
            exact_usage: true,
            max_size_label: false,
            rename_lower_dirs: true,
            cheap_commit: true,
            bounds_size: false,
            counts_inodes: true,
            lists_changes: false,
        }
    }

    fn create(&self, obj: &Object<'_>, _labels: &Labels) -> Result<()> {
        let (id, kind) = (obj.id, obj.kind);
        self.step("create", |m| {
            m.insert(id, kind);
        })
    }

    fn commit(&self, obj: &Object<'_>) -> Result<()> {
        let id = obj.id;
        self.step("commit", |m| {
            m.insert(id, Kind::Committed);
        })
    }

    fn uncommit(&self, obj: &Object<'_>) -> Result<()> {
        let id = obj.id;
        self.step("uncommit", |m| {
            m.insert(id, Kind::Active);
        })
    }

    fn remove(&self, id: SnapshotId) -> Result<()> {
        self.step("remove", |m| {
            m.remove(&id);
        })
    }

    fn mounts(&self, obj: &Object<'_>) -> Result<Vec<MountSpec>> {
        Ok(vec![MountSpec {
            fstype: "memory".into(),
            source: obj.id.to_string(),
            options: if obj.kind == Kind::View {
                vec!["ro".into()]
            } else {
                vec![]
            },
        }])
    }

    fn usage(&self, _obj: &Object<'_>) -> Result<Usage> {
        Ok(Usage::default())
    }

    fn list(&self) -> Result<Vec<SnapshotId>> {
        Ok(self
            .objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect())
    }
}

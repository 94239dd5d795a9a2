//! containerd's Snapshots service over the engine's snapshotter.
//!
//! Each call converts containerd's strings into thinbox's types (keys
//! through [`engine::clients`], so containerd's never meet the CLI's),
//! runs the snapshotter on a blocking thread, and converts back. Errors get
//! the gRPC codes containerd's errdefs read: its unpacker relies on
//! AlreadyExists to see a concurrent unpack of the same layer.

// `tonic::Status` is the error the `containerd-snapshots` trait returns;
// boxing it here would only be unboxed again at the trait.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{self, Status};
use containerd_snapshots::{Info as CInfo, Kind as CKind, Usage as CUsage};
use engine::clients::{check_labels, containerd_key, containerd_view};
use engine::Engine;

use crate::metrics::Operations;
use snapshotter::{Filter, Info, Key, Kind, Labels, MountSpec, Name};

/// Serves the API on `listener` until `stop` resolves, timing each call
/// into `ops`.
pub async fn serve(
    engine: Arc<Engine>,
    listener: UnixListener,
    ops: Option<Operations>,
    stop: impl std::future::Future<Output = ()>,
) -> engine::Result<()> {
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| engine::Error::new(engine::ErrorKind::Io, format!("cannot serve: {e}")))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let mut service = Service::new(engine);
    service.ops = ops;
    let service = containerd_snapshots::server(Arc::new(service));
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .map_err(|e| engine::Error::new(engine::ErrorKind::Failed, format!("serving failed: {e}")))
}

/// SIGTERM and SIGINT, caught (made in a runtime's context).
#[derive(Debug)]
pub struct Stop {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Stop {
    /// Catches SIGTERM and SIGINT from now on.
    pub fn catch() -> engine::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        let caught = |kind| {
            signal(kind).map_err(|e| {
                engine::Error::new(engine::ErrorKind::Io, format!("cannot catch signals: {e}"))
            })
        };
        Ok(Stop {
            term: caught(SignalKind::terminate())?,
            int: caught(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first of them.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("stopping: finishing the calls in flight");
    }
}

/// The service: one engine, shared by every call.
#[derive(Debug)]
pub struct Service {
    engine: Arc<Engine>,
    /// A retry of deferred removals is scheduled.
    retry_scheduled: Arc<AtomicBool>,
    /// Where each call's latency and error go.
    ops: Option<Operations>,
}

/// When removals a busy device deferred are tried again after a Remove:
/// a container's mount namespace releases its root device a moment after
/// its last process exits, so containerd's own Remove (and the Cleanup it
/// sends after garbage collection) can come too soon.
const RETRY_DEFERRED: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(10),
];

impl Service {
    /// A service over `engine`.
    pub fn new(engine: Arc<Engine>) -> Service {
        Service {
            engine,
            retry_scheduled: Arc::new(AtomicBool::new(false)),
            ops: None,
        }
    }

    /// Runs `call`, recording its latency and outcome as `verb`'s.
    async fn timed<T>(
        &self,
        verb: &'static str,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let r = call.await;
        if let Some(ops) = &self.ops {
            ops.observe(verb, started.elapsed(), r.as_ref().err());
        }
        r
    }

    /// Runs the snapshotter's cleanup at each of [`RETRY_DEFERRED`] from
    /// now, unless such a round is already scheduled. A cleanup with
    /// nothing deferred only reads the records.
    fn retry_deferred_removals(&self) {
        if self.retry_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (engine, scheduled) = (self.engine.clone(), self.retry_scheduled.clone());
        tokio::spawn(async move {
            for delay in RETRY_DEFERRED {
                tokio::time::sleep(delay).await;
                let engine = engine.clone();
                let done =
                    tokio::task::spawn_blocking(move || engine.snapshotter().cleanup()).await;
                if let Ok(Err(e)) = done {
                    tracing::debug!("retrying deferred removals: {e}");
                }
            }
            scheduled.store(false, Ordering::Release);
        });
    }

    /// Runs `f` on the engine on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| Status::internal(format!("the call failed: {e}")))?
    }
}

impl Service {
    /// Prepare (`Kind::Active`) or View.
    async fn create(
        &self,
        kind: Kind,
        k: String,
        p: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let (k, p, l) = (key(&k)?, parent(&p)?, labels(l)?);
        self.blocking(move |e| {
            let sn = e.snapshotter();
            match kind {
                Kind::View => sn.view(&k, p.as_ref(), &l),
                _ => sn.prepare(&k, p.as_ref(), &l),
            }
            .map(mounts)
            .map_err(snapshot_status)
        })
        .await
    }
}

/// containerd's errdefs code for a snapshotter error.
pub fn snapshot_status(e: snapshotter::Error) -> Status {
    use snapshotter::ErrorKind as K;
    let message = e.to_string();
    match e.kind() {
        K::NotFound => Status::not_found(message),
        K::AlreadyExists => Status::already_exists(message),
        // containerd's own metadata answers these with InvalidArgument
        // (a parent that is not committed) and FailedPrecondition.
        K::ParentNotCommitted | K::InvalidArgument => Status::invalid_argument(message),
        K::HasChildren | K::CommitOfView | K::NotActive | K::InUse => {
            Status::failed_precondition(message)
        }
        K::BackendUnavailable | K::Busy | K::Closed => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

/// containerd's errdefs code for an engine error.
pub fn engine_status(e: engine::Error) -> Status {
    use engine::ErrorKind as K;
    let message = e.to_string();
    match e.kind {
        K::InvalidArgument => Status::invalid_argument(message),
        K::NotFound => Status::not_found(message),
        K::AlreadyExists => Status::already_exists(message),
        K::InUse => Status::failed_precondition(message),
        K::NotRoot => Status::permission_denied(message),
        K::BackendUnavailable => Status::unavailable(message),
        K::NoSpace => Status::resource_exhausted(message),
        _ => Status::internal(message),
    }
}

fn key(k: &str) -> Result<Key, Status> {
    containerd_key(k).map_err(engine_status)
}

fn name(k: &str) -> Result<Name, Status> {
    Name::new(key(k)?.as_str()).map_err(snapshot_status)
}

fn parent(p: &str) -> Result<Option<Name>, Status> {
    (!p.is_empty()).then(|| name(p)).transpose()
}

fn labels(l: HashMap<String, String>) -> Result<Labels, Status> {
    let l: Labels = l.into_iter().collect();
    check_labels(&l).map_err(engine_status)?;
    Ok(l)
}

/// containerd's view of a stored snapshot, if containerd made it.
fn own(i: &Info) -> Option<Info> {
    let name = containerd_view(&i.name)?.to_owned();
    let parent = i
        .parent
        .as_deref()
        .map(|p| containerd_view(p).unwrap_or(p).to_owned());
    Some(Info {
        name,
        parent,
        ..i.clone()
    })
}

fn to_containerd(i: Info) -> CInfo {
    CInfo {
        kind: match i.kind {
            Kind::View => CKind::View,
            Kind::Active => CKind::Active,
            Kind::Committed => CKind::Committed,
        },
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        labels: i.labels.into_iter().collect(),
        created_at: i.created,
        updated_at: i.updated,
    }
}

fn stat_own(engine: &Engine, k: &Key) -> Result<CInfo, Status> {
    let i = engine.snapshotter().stat(k).map_err(snapshot_status)?;
    own(&i)
        .map(to_containerd)
        .ok_or_else(|| Status::not_found(format!("snapshot {k} not found")))
}

fn mounts(m: Vec<MountSpec>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.fstype,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

/// The stream `List` returns (collected first: a walk holds the store).
pub type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<CInfo, Status>>>;

#[tonic::async_trait]
impl containerd_snapshots::Snapshotter for Service {
    type Error = Status;

    async fn stat(&self, k: String) -> Result<CInfo, Status> {
        self.timed("stat", async {
            let k = key(&k)?;
            self.blocking(move |e| stat_own(e, &k)).await
        })
        .await
    }

    async fn update(&self, info: CInfo, fieldpaths: Option<Vec<String>>) -> Result<CInfo, Status> {
        self.timed("update", async {
            let k = key(&info.name)?;
            let l = labels(info.labels)?;
            self.blocking(move |e| {
                let sn = e.snapshotter();
                let mut current = sn.stat(&k).map_err(snapshot_status)?;
                current.labels = l;
                let paths: Vec<&str> = fieldpaths
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(String::as_str)
                    .collect();
                let updated = sn.update(&current, &paths).map_err(snapshot_status)?;
                own(&updated)
                    .map(to_containerd)
                    .ok_or_else(|| Status::not_found(format!("snapshot {k} not found")))
            })
            .await
        })
        .await
    }

    async fn usage(&self, k: String) -> Result<CUsage, Status> {
        self.timed("usage", async {
            let k = key(&k)?;
            self.blocking(move |e| {
                stat_own(e, &k)?;
                let u = e.snapshotter().usage(&k).map_err(snapshot_status)?;
                Ok(CUsage {
                    inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
                    size: i64::try_from(u.size.0).unwrap_or(i64::MAX),
                })
            })
            .await
        })
        .await
    }

    async fn mounts(&self, k: String) -> Result<Vec<Mount>, Status> {
        self.timed("mounts", async {
            let k = key(&k)?;
            self.blocking(move |e| {
                e.snapshotter()
                    .mounts(&k)
                    .map(mounts)
                    .map_err(snapshot_status)
            })
            .await
        })
        .await
    }

    async fn prepare(
        &self,
        k: String,
        p: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.timed("prepare", async {
            self.create(Kind::Active, k, p, l).await
        })
        .await
    }

    async fn view(
        &self,
        k: String,
        p: String,
        l: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.timed("view", async { self.create(Kind::View, k, p, l).await })
            .await
    }

    async fn commit(&self, n: String, k: String, l: HashMap<String, String>) -> Result<(), Status> {
        self.timed("commit", async {
            let (n, k, l) = (name(&n)?, key(&k)?, labels(l)?);
            self.blocking(move |e| e.snapshotter().commit(&n, &k, &l).map_err(snapshot_status))
                .await
        })
        .await
    }

    async fn remove(&self, k: String) -> Result<(), Status> {
        self.timed("remove", async {
            let k = key(&k)?;
            let r = self
                .blocking(move |e| e.snapshotter().remove(&k).map_err(snapshot_status))
                .await;
            if r.is_ok() {
                self.retry_deferred_removals();
            }
            r
        })
        .await
    }

    async fn clear(&self) -> Result<(), Status> {
        self.timed("cleanup", async {
            self.blocking(|e| e.snapshotter().cleanup().map_err(snapshot_status))
                .await
        })
        .await
    }

    type InfoStream = InfoStream;

    async fn list(&self, _snapshotter: String, filters: Vec<String>) -> Result<InfoStream, Status> {
        self.timed("list", async {
            let filters = filters
                .iter()
                .filter(|f| !f.is_empty())
                .map(|f| f.parse::<Filter>().map_err(snapshot_status))
                .collect::<Result<Vec<_>, _>>()?;
            let infos = self
                .blocking(move |e| {
                    let mut all = Vec::new();
                    e.snapshotter()
                        .walk(&[], &mut |i| {
                            if let Some(i) = own(i) {
                                if filters.is_empty()
                                    || snapshotter::filter::matches_any(&filters, &i)
                                {
                                    all.push(Ok(to_containerd(i)));
                                }
                            }
                            Ok(())
                        })
                        .map_err(snapshot_status)?;
                    Ok(all)
                })
                .await?;
            Ok(tokio_stream::iter(infos))
        })
        .await
    }
}

//! The daemon's Prometheus endpoint: `GET /metrics` over HTTP/1 on a TCP
//! address (loopback by default, `[serve] metrics_address`), answering the
//! root's state metrics ([`engine::metrics::StateCollector`], read on a
//! blocking thread at each scrape) and the daemon's own [`Operations`].

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use containerd_snapshots::tonic::{Code, Status};
use engine::{Error, ErrorKind, Result};
use hyper::service::{make_service_fn, service_fn};
use hyper::{Body, Method, Request, Response, StatusCode};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Latency and errors of each call containerd makes.
#[derive(Debug, Clone)]
pub struct Operations {
    duration: HistogramVec,
    errors: IntCounterVec,
}

/// The verbs of containerd's Snapshots service, each with series from the
/// first scrape.
pub const VERBS: [&str; 10] = [
    "stat", "update", "usage", "mounts", "prepare", "view", "commit", "remove", "list", "cleanup",
];

impl Operations {
    /// The families, registered in `r`.
    pub fn registered(r: &Registry) -> Result<Operations> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "thinbox_operation_duration_seconds",
                "Time each snapshots API call took, by verb (errors included).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["verb"],
        )
        .map_err(definition)?;
        let errors = IntCounterVec::new(
            Opts::new(
                "thinbox_operation_errors_total",
                "Snapshots API calls that failed, by verb and containerd's error code.",
            ),
            &["verb", "code"],
        )
        .map_err(definition)?;
        for verb in VERBS {
            duration.with_label_values(&[verb]);
        }
        engine::metrics::register(r, Box::new(duration.clone()))?;
        engine::metrics::register(r, Box::new(errors.clone()))?;
        Ok(Operations { duration, errors })
    }

    /// Records one call of `verb` that took `took`.
    pub fn observe(&self, verb: &str, took: Duration, failed: Option<&Status>) {
        self.duration
            .with_label_values(&[verb])
            .observe(took.as_secs_f64());
        if let Some(s) = failed {
            self.errors
                .with_label_values(&[verb, code_name(s.code())])
                .inc();
        }
    }
}

fn definition(e: prometheus::Error) -> Error {
    Error::new(ErrorKind::Failed, format!("cannot define a metric: {e}"))
}

/// containerd's errdefs name of a gRPC code.
fn code_name(c: Code) -> &'static str {
    match c {
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::InvalidArgument => "invalid_argument",
        Code::FailedPrecondition => "failed_precondition",
        Code::Unavailable => "unavailable",
        Code::ResourceExhausted => "resource_exhausted",
        Code::PermissionDenied => "permission_denied",
        Code::Cancelled => "cancelled",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Unimplemented => "not_implemented",
        _ => "internal",
    }
}

/// Binds the metrics address (before the daemon says it is ready, so a
/// taken port fails the start, not the first scrape).
pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).map_err(|e| {
        Error::new(
            if e.kind() == std::io::ErrorKind::AddrInUse {
                ErrorKind::InUse
            } else {
                ErrorKind::Io
            },
            format!(
                "cannot serve metrics on {addr}: {e}: stop what listens there, or set [serve] metrics_address (or --metrics-address) to another address or \"off\""
            ),
        )
    })?;
    l.set_nonblocking(true).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot serve metrics on {addr}: {e}"),
        )
    })?;
    Ok(l)
}

/// Serves `registry` on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    stop: impl Future<Output = ()>,
) -> Result<()> {
    let make = make_service_fn(move |_| {
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(service_fn(move |req| answer(registry.clone(), req))) }
    });
    hyper::Server::from_tcp(listener)
        .map_err(|e| Error::new(ErrorKind::Io, format!("cannot serve metrics: {e}")))?
        .http1_only(true)
        .serve(make)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Error::new(ErrorKind::Failed, format!("serving metrics failed: {e}")))
}

async fn answer(
    registry: Arc<Registry>,
    req: Request<Body>,
) -> std::result::Result<Response<Body>, Infallible> {
    let reply = |status: StatusCode, text: String| {
        let mut r = Response::new(Body::from(text));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "thinbox serves its metrics on /metrics\n".to_owned(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /metrics\n".to_owned(),
        ));
    }
    // The state is read from the kernel and the stores: not on the runtime.
    let encoded = tokio::task::spawn_blocking(move || engine::metrics::encode(&registry)).await;
    Ok(match encoded {
        Ok(Ok(text)) => {
            let mut r = reply(StatusCode::OK, text);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(engine::metrics::CONTENT_TYPE),
            );
            r
        }
        Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_timed_and_errors_counted_by_code() {
        let r = Registry::new();
        let ops = Operations::registered(&r).unwrap();
        ops.observe("prepare", Duration::from_millis(3), None);
        ops.observe(
            "prepare",
            Duration::from_millis(7),
            Some(&Status::already_exists("x")),
        );
        let text = engine::metrics::encode(&r).unwrap();
        assert!(
            text.contains(r#"thinbox_operation_duration_seconds_count{verb="prepare"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"thinbox_operation_duration_seconds_bucket{verb="prepare",le="0.005"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"thinbox_operation_errors_total{code="already_exists",verb="prepare"} 1"#
            ),
            "{text}"
        );
        // Every verb has its series before its first call.
        assert!(
            text.contains(r#"thinbox_operation_duration_seconds_count{verb="cleanup"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn a_taken_address_names_the_setting() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let e = bind(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InUse);
        assert!(e.message.contains("metrics_address"), "{e}");
    }

    #[test]
    fn scrapes_answer_on_metrics_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = Registry::new();
        let ops = Operations::registered(&r).unwrap();
        ops.observe("stat", Duration::from_millis(1), None);
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.block_on(async move {
            let server = tokio::spawn(serve(l, Arc::new(r), async {
                let _ = rx.await;
            }));
            let get = |path: &'static str| async move {
                let uri: hyper::Uri = format!("http://{addr}{path}").parse().unwrap();
                let res = hyper::Client::new().get(uri).await.unwrap();
                let status = res.status();
                let ctype = res
                    .headers()
                    .get(hyper::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = hyper::body::to_bytes(res.into_body()).await.unwrap();
                (status, ctype, String::from_utf8(body.to_vec()).unwrap())
            };
            let (status, ctype, body) = get("/metrics").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(ctype.as_deref(), Some(engine::metrics::CONTENT_TYPE));
            assert!(
                body.contains(r#"thinbox_operation_duration_seconds_count{verb="stat"} 1"#),
                "{body}"
            );
            let (status, _, body) = get("/").await;
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert!(body.contains("/metrics"), "{body}");
            tx.send(()).unwrap();
            server.await.unwrap().unwrap();
        });
    }
}

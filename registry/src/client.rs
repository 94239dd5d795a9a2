//! One client for every registry a process talks to: where each answers
//! (https, or plain http for the insecure ones and localhost), the TLS
//! roots it is checked against, tokens, retries.
//!
//! TLS roots: the system bundle (`/etc/ssl/certs/ca-certificates.crt`)
//! plus every `*.crt` in `CERTS_DIR/HOST/` (`/etc/containers/certs.d`,
//! `/etc/docker/certs.d`), as podman and docker read them. A
//! `NAME.cert` there with its `NAME.key` is the client certificate sent
//! to that host (the first pair, by name).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ureq::http::{self, Response};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use crate::auth::{find_credentials, Challenge, Credentials, TokenAnswer};
use crate::error::{Error, ErrorKind, Result};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_API};

/// How to reach registries, as the user configured it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Hosts (`host:port`) that may be reached over plain http when https
    /// fails; localhost and 127.0.0.0/8 always may.
    pub insecure: Vec<String>,
    /// Registry → mirror URLs (`https://mirror:5000`) tried in order
    /// before it, for pulls.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Auth files, first match wins (see [`crate::auth`]).
    pub auth_files: Vec<PathBuf>,
    /// Directories holding a `HOST/` directory of CA certificates each.
    pub certs_dirs: Vec<PathBuf>,
    /// The system's CA bundle (None: Mozilla's roots built in).
    pub ca_bundle: Option<PathBuf>,
    /// Time to connect.
    pub connect_timeout: Duration,
    /// Longest wait for an answer or for the next bytes of one.
    pub read_timeout: Duration,
    /// Tries after the first for a refused connection, 429 or 5xx.
    pub retries: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            auth_files: crate::auth::default_auth_files(),
            certs_dirs: vec![
                "/etc/containers/certs.d".into(),
                "/etc/docker/certs.d".into(),
            ],
            ca_bundle: Some("/etc/ssl/certs/ca-certificates.crt".into()),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retries: 3,
        }
    }
}

/// Where one registry (or a mirror of it) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://host:port`, no trailing slash.
    pub base: String,
    /// `host:port`: which credentials and certificates apply.
    pub host: String,
    /// A mirror rather than the registry itself.
    pub mirror: bool,
}

/// A registry client (cheap to share between threads).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    agents: Mutex<HashMap<String, Agent>>,
    bases: Mutex<HashMap<String, String>>,
    /// (host, scope) → the Authorization value that worked.
    auth: Mutex<HashMap<(String, String), String>>,
    system_roots: OnceLock<Vec<Certificate<'static>>>,
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    name == "localhost" || name.starts_with("127.") || name == "[::1]"
}

fn pem_certs(bytes: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(bytes)
        .filter_map(|i| match i {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// Transport failures as one line that says what to check.
fn transport(url: &str, e: ureq::Error) -> Error {
    let (kind, detail) = match &e {
        ureq::Error::Timeout(t) => (ErrorKind::Timeout, format!("no answer in time ({t:?}); the registry is down or hangs, or set [registry] read_timeout")),
        ureq::Error::HostNotFound => (ErrorKind::Transport, "the host name does not resolve; check the reference".to_owned()),
        ureq::Error::ConnectionFailed => (ErrorKind::Transport, "cannot connect; is the registry running, and is it the right port?".to_owned()),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => (ErrorKind::Transport, "connection refused; is the registry running, and is it the right port?".to_owned()),
        e if wants_client_certificate(e) => (ErrorKind::Transport, format!("TLS: {e}; the registry wants a client certificate: put NAME.cert and NAME.key in /etc/containers/certs.d/HOST/")),
        e if is_certificate_error(e) => (ErrorKind::Transport, format!("TLS: {e}; if the registry's certificate is signed by your own CA, put the CA in /etc/containers/certs.d/HOST/ca.crt")),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => (ErrorKind::Transport, format!("TLS: {e}; if the registry serves plain http, name it in [registry] insecure = [\"HOST:PORT\"]")),
        other => (ErrorKind::Transport, other.to_string()),
    };
    Error::new(kind, url, detail).source(e)
}

/// The server speaks TLS with a certificate this client does not trust
/// (rustls' handshake errors reach ureq as i/o errors).
fn is_certificate_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Rustls(_) => true,
        ureq::Error::Io(io) => {
            let said = io.to_string().to_lowercase();
            io.kind() == std::io::ErrorKind::InvalidData
                && (said.contains("certificate") || said.contains("alert"))
        }
        _ => false,
    }
}

/// The server ended the handshake for want of a client certificate (TLS
/// 1.3's `certificate_required` alert, 1.2's `bad_certificate`).
fn wants_client_certificate(e: &ureq::Error) -> bool {
    let said = e.to_string().to_lowercase();
    said.contains("certificaterequired") || said.contains("badcertificate")
}

/// Worth another try: refused, reset or timed out; 429 and 5xx.
fn retryable_status(s: u16) -> bool {
    s == 429 || s == 500 || s == 502 || s == 503 || s == 504
}

impl Client {
    /// A client with these settings.
    pub fn new(settings: Settings) -> Client {
        Client {
            inner: Arc::new(Inner {
                settings,
                agents: Mutex::new(HashMap::new()),
                bases: Mutex::new(HashMap::new()),
                auth: Mutex::new(HashMap::new()),
                system_roots: OnceLock::new(),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn roots_for(&self, host: &str) -> Vec<Certificate<'static>> {
        let s = &self.inner.settings;
        let mut roots = self
            .inner
            .system_roots
            .get_or_init(|| {
                s.ca_bundle
                    .as_ref()
                    .and_then(|b| std::fs::read(b).ok())
                    .map(|b| pem_certs(&b))
                    .unwrap_or_default()
            })
            .clone();
        for dir in &s.certs_dirs {
            let Ok(entries) = std::fs::read_dir(dir.join(host)) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "crt") {
                    match std::fs::read(&p) {
                        Ok(b) => roots.extend(pem_certs(&b)),
                        Err(e) => tracing::warn!("cannot read {}: {e}", p.display()),
                    }
                }
            }
        }
        roots
    }

    /// The client certificate for `host`: the first `NAME.cert` (by
    /// name) in a `CERTS_DIR/HOST/` that has its `NAME.key`. A pair that
    /// does not parse is an error naming it, not a silent anonymous TLS.
    fn client_cert_for(&self, host: &str) -> Result<Option<ClientCert>> {
        for dir in &self.inner.settings.certs_dirs {
            let Ok(entries) = std::fs::read_dir(dir.join(host)) else {
                continue;
            };
            let mut certs: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cert"))
                .collect();
            certs.sort();
            if let Some(cert) = certs.into_iter().next() {
                let key = cert.with_extension("key");
                if !key.exists() {
                    return Err(Error::new(
                        ErrorKind::InvalidArgument,
                        cert.display(),
                        format!(
                            "a client certificate without its key; put it in {}",
                            key.display()
                        ),
                    ));
                }
                let bad = |what: &Path, e: &dyn std::fmt::Display| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        what.display(),
                        format!("not a PEM client certificate or key ({e})"),
                    )
                };
                let cert_pem = std::fs::read(&cert).map_err(|e| Error::io(cert.display(), e))?;
                let key_pem = std::fs::read(&key).map_err(|e| Error::io(key.display(), e))?;
                let chain = pem_certs(&cert_pem);
                if chain.is_empty() {
                    return Err(bad(&cert, &"no certificate in it"));
                }
                let private = PrivateKey::from_pem(&key_pem).map_err(|e| bad(&key, &e))?;
                return Ok(Some(ClientCert::new_with_certs(&chain, private)));
            }
        }
        Ok(None)
    }

    /// The agent for `host` (its own TLS roots).
    fn agent(&self, host: &str) -> Result<Agent> {
        let mut agents = self.inner.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = agents.get(host) {
            return Ok(a.clone());
        }
        let client_cert = self.client_cert_for(host)?;
        let s = &self.inner.settings;
        let roots = self.roots_for(host);
        let roots = if roots.is_empty() {
            RootCerts::WebPki
        } else {
            RootCerts::new_with_certs(&roots)
        };
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(s.connect_timeout))
            .timeout_recv_response(Some(s.read_timeout))
            .timeout_per_read(Some(s.read_timeout))
            .accept_encoding("identity")
            .user_agent(concat!("thinbox/", env!("CARGO_PKG_VERSION")))
            .tls_config(
                TlsConfig::builder()
                    .root_certs(roots)
                    .client_cert(client_cert)
                    .build(),
            )
            .build();
        let a = Agent::new_with_config(config);
        agents.insert(host.to_owned(), a.clone());
        Ok(a)
    }

    fn plain_allowed(&self, host: &str) -> bool {
        is_loopback(host) || self.inner.settings.insecure.iter().any(|h| h == host)
    }

    /// Where `registry` answers: https, or http for an insecure one whose
    /// https fails. Asked once per host.
    pub fn endpoint(&self, registry: &str) -> Result<Endpoint> {
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_API.to_owned()
        } else {
            registry.to_owned()
        };
        if let Some(b) = self
            .inner
            .bases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
        {
            return Ok(Endpoint {
                base: b.clone(),
                host: host.clone(),
                mirror: false,
            });
        }
        let https = format!("https://{host}");
        let base = if self.plain_allowed(&host) {
            match self.agent(&host)?.get(format!("{https}/v2/")).call() {
                Ok(_) => https,
                // It speaks TLS with a certificate not trusted here: say
                // so on the request rather than go around it.
                Err(e) if is_certificate_error(&e) => https,
                Err(e) => {
                    tracing::debug!("{https}: {e}; trying plain http");
                    format!("http://{host}")
                }
            }
        } else {
            https
        };
        self.inner
            .bases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.clone(), base.clone());
        Ok(Endpoint {
            base,
            host,
            mirror: false,
        })
    }

    /// The mirrors of `registry`, then the registry itself.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>> {
        let mut out = Vec::new();
        for m in self
            .inner
            .settings
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
        {
            let m = m.trim_end_matches('/');
            let host = m
                .strip_prefix("https://")
                .or_else(|| m.strip_prefix("http://"))
                .unwrap_or(m);
            let host = host.split('/').next().unwrap_or(host).to_owned();
            let base = if m.contains("://") {
                m.to_owned()
            } else {
                format!("https://{m}")
            };
            out.push(Endpoint {
                base,
                host,
                mirror: true,
            });
        }
        out.push(self.endpoint(registry)?);
        Ok(out)
    }

    fn credentials(&self, host: &str) -> Result<Option<Credentials>> {
        let key = if host == DOCKER_HUB_API {
            DOCKER_HUB
        } else {
            host
        };
        find_credentials(&self.inner.settings.auth_files, key)
    }

    /// Answers a challenge: the Authorization value to send.
    fn authenticate(&self, ep: &Endpoint, challenge: &Challenge, scope: &str) -> Result<String> {
        let creds = self.credentials(&ep.host)?;
        match challenge {
            Challenge::Basic => creds.map(|c| c.basic()).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthorized,
                    &ep.host,
                    "the registry wants a user name and password; log in with `podman login` or `docker login` (thinbox reads their auth files)",
                )
            }),
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let mut req = self.agent(&ep.host)?.get(realm);
                if let Some(s) = service {
                    req = req.query("service", s);
                }
                req = req.query("scope", asked.as_deref().unwrap_or(scope));
                if let Some(c) = &creds {
                    req = req.header("Authorization", c.basic());
                }
                let mut resp = req.call().map_err(|e| transport(realm, e))?;
                match resp.status().as_u16() {
                    200 => {}
                    401 | 403 => {
                        return Err(Error::new(
                            ErrorKind::Unauthorized,
                            &ep.host,
                            if creds.is_some() {
                                "the token service refused the credentials in the auth file; log in again"
                            } else {
                                "the token service wants credentials; log in with `podman login` or `docker login`"
                            },
                        ))
                    }
                    s => {
                        return Err(Error::new(
                            ErrorKind::InvalidResponse,
                            realm,
                            format!("the token service answered {s}"),
                        ))
                    }
                }
                let answer: TokenAnswer = serde_json::from_slice(&read_small(&mut resp, realm, 1 << 20)?)
                    .map_err(|e| Error::new(ErrorKind::InvalidResponse, realm, format!("not a token answer: {e}")))?;
                let token = answer.token.or(answer.access_token).ok_or_else(|| {
                    Error::new(ErrorKind::InvalidResponse, realm, "the answer has no token")
                })?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// Sends a request to `ep` (`path` from `/v2/`), answering an auth
    /// challenge for `scope` once and retrying refused connections, 429
    /// and 5xx with backoff. Any other status is the caller's to read.
    pub fn send(
        &self,
        ep: &Endpoint,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        scope: &str,
        body: Option<&[u8]>,
    ) -> Result<Response<Body>> {
        let url = format!("{}{path}", ep.base);
        let key = (ep.host.clone(), scope.to_owned());
        let agent = self.agent(&ep.host)?;
        let mut tries = 0;
        let mut authenticated = false;
        loop {
            let mut b = http::Request::builder().method(method.clone()).uri(&url);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let auth = self
                .inner
                .auth
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            if let Some(a) = &auth {
                b = b.header("Authorization", a);
            }
            let r = match body {
                Some(data) => agent.run(b.body(data.to_vec()).map_err(|e| bad_request(&url, e))?),
                None => agent.run(b.body(()).map_err(|e| bad_request(&url, e))?),
            };
            let resp = match r {
                Ok(r) => r,
                Err(e) if tries < self.inner.settings.retries && !is_certificate_error(&e) => {
                    tries += 1;
                    tracing::debug!("{url}: {e}; try {tries}");
                    backoff(tries, None);
                    continue;
                }
                Err(e) => return Err(transport(&url, e)),
            };
            let status = resp.status().as_u16();
            if status == 401 && !authenticated {
                let challenge = resp
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(Challenge::parse);
                let Some(challenge) = challenge else {
                    return Err(Error::new(
                        ErrorKind::Unauthorized,
                        &url,
                        "401 without a challenge this client speaks (Basic or Bearer)",
                    ));
                };
                let value = self.authenticate(ep, &challenge, scope)?;
                self.inner
                    .auth
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), value);
                authenticated = true;
                continue;
            }
            if status == 401 {
                return Err(Error::new(
                    ErrorKind::Unauthorized,
                    &ep.host,
                    "the registry refused the credentials in the auth file; log in again (`podman login` or `docker login`)",
                ));
            }
            if retryable_status(status) && tries < self.inner.settings.retries {
                tries += 1;
                let after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                tracing::debug!("{url}: {status}; try {tries}");
                backoff(tries, after);
                continue;
            }
            return Ok(resp);
        }
    }
}

fn bad_request(url: &str, e: http::Error) -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        url,
        format!("cannot make a request: {e}"),
    )
}

/// 0.2 s, 0.4 s, 0.8 s …, or what Retry-After says (at most 10 s).
fn backoff_delay(tries: u32, retry_after: Option<u64>) -> Duration {
    match retry_after {
        Some(s) => Duration::from_secs(s.min(10)),
        None => Duration::from_millis(200u64 << tries.clamp(1, 6).saturating_sub(1)),
    }
}

fn backoff(tries: u32, retry_after: Option<u64>) {
    std::thread::sleep(backoff_delay(tries, retry_after));
}

/// Reads a small answer (a manifest, a token) whole, at most `limit` bytes.
pub(crate) fn read_small(resp: &mut Response<Body>, what: &str, limit: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(what, e))?;
    if out.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidResponse,
            what,
            format!("the answer is larger than {limit} bytes"),
        ));
    }
    Ok(out)
}

/// The error for an unexpected status, with the registry's own message.
pub(crate) fn status_error(mut resp: Response<Body>, what: &str, fix: &str) -> Error {
    let status = resp.status().as_u16();
    let body = read_small(&mut resp, what, 64 << 10).unwrap_or_default();
    let said = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let kind = match status {
        404 => ErrorKind::NotFound,
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Denied,
        _ => ErrorKind::InvalidResponse,
    };
    Error::new(
        kind,
        what,
        format!("the registry answered {status}{said}; {fix}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_may_be_plain() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:80",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["quay.io", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
        let c = Client::new(Settings {
            insecure: vec!["reg.lan:5000".into()],
            ..Settings::default()
        });
        assert!(c.plain_allowed("reg.lan:5000"));
        assert!(!c.plain_allowed("reg.lan"));
    }

    #[test]
    fn mirrors_come_first() {
        let c = Client::new(Settings {
            mirrors: [(
                "docker.io".to_owned(),
                vec!["http://127.0.0.1:5001/".to_owned(), "mirror.lan".to_owned()],
            )]
            .into(),
            ..Settings::default()
        });
        let eps = c.endpoints("docker.io").unwrap();
        assert_eq!(eps[0].base, "http://127.0.0.1:5001");
        assert_eq!(eps[0].host, "127.0.0.1:5001");
        assert_eq!(eps[1].base, "https://mirror.lan");
        assert_eq!(eps[2].base, "https://registry-1.docker.io");
        assert!(eps[0].mirror && !eps[2].mirror);
    }

    #[test]
    fn backoff_doubles_and_heeds_retry_after() {
        let ms = |t, a| backoff_delay(t, a).as_millis();
        assert_eq!((ms(1, None), ms(2, None), ms(3, None)), (200, 400, 800));
        assert_eq!(ms(40, None), 6400, "capped");
        assert_eq!((ms(1, Some(3)), ms(1, Some(600))), (3000, 10_000));
    }
}

//! A real registry for tests: Debian's docker-registry on 127.0.0.1
//! (plain, TLS from a CA of its own, htpasswd or token auth), skopeo to
//! push into it, its access log to count requests; and a token service
//! for its `auth.token`.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixtures::{run, temp_dir, Reap};

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A TCP port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address of this machine that is not loopback as thinbox sees it
/// (not 127.0.0.0/8): `ADDR/32` added to `lo` for as long as it lives, so
/// a registry there is one only `[registry] insecure` may reach over
/// plain http.
#[derive(Debug)]
pub struct LocalAddress(pub std::net::Ipv4Addr);

impl LocalAddress {
    /// Adds `addr` (from a documentation range, 198.51.100.0/24) to `lo`.
    pub fn add(addr: std::net::Ipv4Addr) -> LocalAddress {
        run(
            "ip",
            &["addr", "replace", &format!("{addr}/32"), "dev", "lo"],
        );
        LocalAddress(addr)
    }
}

impl Drop for LocalAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .status();
    }
}

/// A docker-registry on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct Registry {
    /// Its directory: config, storage (`data/`), access log, certificates.
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The registry process.
    pub _proc: Reap,
    /// With TLS: the `certs.d` directory holding `HOST/ca.crt`.
    pub tls: Option<PathBuf>,
    /// Pushing needs `pusher:secret`.
    pub creds: bool,
}

/// How [`Registry::start`] sets the registry up.
#[derive(Debug, Default)]
pub struct RegistryOptions {
    /// Serve https with a certificate from a CA of its own.
    pub tls: bool,
    /// htpasswd basic auth for this user and password.
    pub user: Option<(&'static str, &'static str)>,
    /// Token auth: the token service's realm and the certificate it signs with.
    pub token: Option<(String, PathBuf)>,
    /// With `tls`: TLS client authentication, a certificate from the same
    /// CA required; the pair is `certs.d/HOST/client.cert` and `.key`.
    pub client_certs: bool,
    /// Listen on this IPv4 address instead of 127.0.0.1.
    pub address: Option<std::net::Ipv4Addr>,
}

impl Registry {
    /// Starts one as `o` says, waiting until it accepts connections.
    pub fn start(o: RegistryOptions) -> Registry {
        let dir = temp_dir();
        let port = free_port();
        let host = match o.address {
            Some(a) => format!("{a}:{port}"),
            None => format!("127.0.0.1:{port}"),
        };
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: thinbox-test\n",
            s(&dir.path().join("data"))
        );
        let mut tls = None;
        if o.tls {
            let d = dir.path();
            self_signed(&d.join("ca"), "thinbox test CA");
            signed_by_ca(
                d,
                "/CN=127.0.0.1",
                &format!("subjectAltName=IP:{}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n", host.split(':').next().unwrap_or("127.0.0.1")),
                &d.join("server.key"),
                &d.join("server.crt"),
            );
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                s(&d.join("server.crt")),
                s(&d.join("server.key"))
            ));
            // certs.d/HOST/ca.crt, as podman and docker read it.
            let certs = d.join("certs.d").join(&host);
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::copy(d.join("ca.crt"), certs.join("ca.crt")).unwrap();
            if o.client_certs {
                cfg.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    s(&d.join("ca.crt"))
                ));
                signed_by_ca(
                    d,
                    "/CN=thinbox test client",
                    "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
                    &certs.join("client.key"),
                    &certs.join("client.cert"),
                );
            }
            tls = Some(d.join("certs.d"));
        }
        if let Some((u, p)) = o.user {
            let line = run("htpasswd", &["-Bbn", u, p]);
            std::fs::write(dir.path().join("htpasswd"), line.trim()).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: thinbox-test\n    path: {}\n",
                s(&dir.path().join("htpasswd"))
            ));
        }
        if let Some((realm, cert)) = &o.token {
            cfg.push_str(&format!("auth:\n  token:\n    realm: {realm}\n    service: thinbox-test\n    issuer: thinbox-test-issuer\n    rootcertbundle: {}\n", s(cert)));
        }
        let creds = o.user.is_some() || o.token.is_some();
        std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let proc = Reap(
            Command::new("docker-registry")
                .args(["serve", s(&dir.path().join("config.yml"))])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry (Debian's docker-registry package)"),
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the registry did not start: {}",
                std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            dir,
            host,
            _proc: proc,
            tls,
            creds,
        }
    }

    /// Its log so far (access log and its own lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines of thinbox's GETs of `blob` (any blob when None) so far.
    pub fn blob_gets(&self, blob: Option<&str>) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("\"GET /v2/") && l.contains("/blobs/sha256:") && l.contains("\"thinbox/")
            })
            .filter(|l| blob.is_none_or(|b| l.contains(b)))
            .map(str::to_owned)
            .collect()
    }

    /// Pushes the OCI layout `dir` as `repo:tag` with skopeo.
    pub fn push(&self, dir: &Path, name: &str, all: bool) {
        let dest = format!("docker://{}/{name}", self.host);
        let mut c = Command::new("skopeo");
        c.args(["--insecure-policy", "copy", "--quiet"]);
        if all {
            c.arg("--all");
        }
        match &self.tls {
            Some(certs) => c.args(["--dest-cert-dir", s(&certs.join(&self.host))]),
            None => c.arg("--dest-tls-verify=false"),
        };
        if self.creds {
            c.args(["--dest-creds", "pusher:secret"]);
        }
        let out = c
            .arg(format!("oci:{}", s(dir)))
            .arg(&dest)
            .output()
            .expect("skopeo (Debian's skopeo package)");
        assert!(
            out.status.success(),
            "skopeo copy to {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `skopeo inspect` of `name`: its JSON, or None when skopeo finds
    /// no such image.
    pub fn inspect(&self, name: &str) -> Option<serde_json::Value> {
        let mut c = Command::new("skopeo");
        c.args(["--insecure-policy", "inspect", "--tls-verify=false"]);
        if let Some(certs) = &self.tls {
            c.args(["--cert-dir", s(&certs.join(&self.host))]);
        }
        if self.creds {
            c.args(["--creds", "pusher:secret"]);
        }
        let out = c
            .arg(format!("docker://{}/{name}", self.host))
            .output()
            .expect("skopeo (Debian's skopeo package)");
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("skopeo's JSON"))
    }

    /// `skopeo inspect` of `name`: the manifest digest.
    pub fn digest(&self, name: &str) -> String {
        let v = self
            .inspect(name)
            .unwrap_or_else(|| panic!("skopeo inspect {name}: no such image in {}", self.host));
        v["Digest"].as_str().expect("a digest").to_owned()
    }
}

/// Makes `key` and a certificate `cert` for `subject` with extensions
/// `ext`, signed by the CA in `dir` (`ca.crt`, `ca.key`).
fn signed_by_ca(dir: &Path, subject: &str, ext: &str, key: &Path, cert: &Path) {
    let csr = dir.join("req.csr");
    let cnf = dir.join("req.cnf");
    std::fs::write(&cnf, ext).unwrap();
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            s(key),
            "-out",
            s(&csr),
        ],
    );
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            s(&csr),
            "-CA",
            s(&dir.join("ca.crt")),
            "-CAkey",
            s(&dir.join("ca.key")),
            "-CAcreateserial",
            "-extfile",
            s(&cnf),
            "-out",
            s(cert),
        ],
    );
}

/// Makes a key and a self-signed certificate for `cn`: `PREFIX.key`,
/// `PREFIX.crt`.
fn self_signed(prefix: &Path, cn: &str) {
    let (key, crt) = (prefix.with_extension("key"), prefix.with_extension("crt"));
    let subject = format!("/CN={cn}");
    let args = [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subject,
        "-keyout",
        s(&key),
        "-out",
        s(&crt),
    ];
    run("openssl", &args);
}

/// An auth file (podman's and docker's format) in `dir` with `user` and
/// `password` for `host`.
pub fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join(format!("auth-{user}-{password}.json"));
    std::fs::write(
        &path,
        json!({ "auths": { host: { "auth": b64 } } }).to_string(),
    )
    .unwrap();
    path
}

/// A token service for the registry's `auth.token` (the distribution
/// token protocol), for user `pusher`/`secret`: each `GET /token` with
/// those credentials gets a JWT for the scopes asked, signed (RS256, by
/// `openssl dgst`) with the key whose certificate the registry trusts.
/// Anyone else gets a 401. Test code: the registry checking the JWTs is
/// the real one.
#[derive(Debug)]
pub struct TokenServer {
    /// Its URL, for the registry's `auth.token.realm`.
    pub realm: String,
    /// The certificate whose key signs the tokens.
    pub cert: PathBuf,
    /// Requests served so far.
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl TokenServer {
    /// Starts one on 127.0.0.1 with a key and certificate made in `dir`.
    pub fn start(dir: &Path) -> TokenServer {
        use base64::Engine as _;
        use std::io::{BufRead, BufReader};
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        self_signed(&dir.join("token"), "thinbox test token issuer");
        let der = Command::new("openssl")
            .args(["x509", "-in", s(&cert), "-outform", "DER"])
            .output()
            .unwrap()
            .stdout;
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("pusher:secret")
        );
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") && v.trim() == good {
                            authorized = true;
                        }
                    }
                }
                let target = first.split_whitespace().nth(1).unwrap_or("");
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let mut access = Vec::new();
                let mut service = String::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let v = percent_decode(v);
                    match k {
                        "service" => service = v,
                        "scope" => {
                            for one in v.split(' ') {
                                let parts: Vec<&str> = one.splitn(3, ':').collect();
                                if let [kind, name, actions] = parts[..] {
                                    access.push(json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                let response = if authorized {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = json!({ "typ": "JWT", "alg": "RS256", "x5c": [x5c] });
                    let claims = json!({
                        "iss": "thinbox-test-issuer", "sub": "pusher", "aud": service,
                        "exp": now + 600, "nbf": now - 60, "iat": now,
                        "jti": format!("{now}-{}", counted.load(std::sync::atomic::Ordering::Relaxed)),
                        "access": access,
                    });
                    let signing = format!(
                        "{}.{}",
                        b64url(header.to_string().as_bytes()),
                        b64url(claims.to_string().as_bytes())
                    );
                    let mut sign = Command::new("openssl")
                        .args(["dgst", "-sha256", "-binary", "-sign", s(&key)])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .unwrap();
                    sign.stdin
                        .take()
                        .unwrap()
                        .write_all(signing.as_bytes())
                        .unwrap();
                    let sig = sign.wait_with_output().unwrap().stdout;
                    let body = json!({ "token": format!("{signing}.{}", b64url(&sig)), "expires_in": 600 }).to_string();
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_owned()
                };
                let _ = conn.write_all(response.as_bytes());
            }
        });
        TokenServer {
            realm,
            cert,
            requests,
        }
    }
}

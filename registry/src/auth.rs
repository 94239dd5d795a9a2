//! Credentials and challenges.
//!
//! Credentials come from the files podman and docker write, first match
//! wins: `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`, `~/.docker/config.json`; each holds
//! `{"auths": {"HOST": {"auth": base64("user:password")}}}`. In a file
//! that names credential helpers, as docker reads it: `credHelpers.HOST`
//! first, else `credsStore` for every registry, else `auths`; a helper is
//! `docker-credential-NAME get` on `$PATH`, given the registry on stdin
//! and answering `{"Username": …, "Secret": …}` (docker's protocol, which
//! podman's helpers speak too).
//!
//! A registry asks for credentials with `WWW-Authenticate` (RFC 7235):
//! `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`, the
//! latter answered by a token from the realm (the distribution spec's
//! token protocol).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::reference::DOCKER_HUB;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or personal access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// The `Authorization: Basic …` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The auth files looked at, in order, for this process's environment.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        files.push(Path::new(&h).join(".config/containers/auth.json"));
        files.push(Path::new(&h).join(".docker/config.json"));
    }
    files
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

/// What a credential helper answers to `get`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://h:5000/x` → `h:5000`.
fn host_of_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// The credentials for `registry` in the first of `files` that has them.
/// A missing file is skipped; a file that does not parse is an error
/// naming it.
pub fn find_credentials(files: &[PathBuf], registry: &str) -> Result<Option<Credentials>> {
    for f in files {
        let text = match std::fs::read(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(f.display(), e)),
        };
        let parsed: AuthFile = serde_json::from_slice(&text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                f.display(),
                format!("not an auth file ({e}); it is JSON with an \"auths\" object, as `podman login` and `docker login` write it"),
            )
        })?;
        let helper = parsed
            .cred_helpers
            .iter()
            .find(|(k, _)| host_of_key(k) == registry)
            .map(|(_, v)| v)
            .or(parsed.creds_store.as_ref())
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper {
            match run_helper(helper, registry, f)? {
                Some(c) => return Ok(Some(c)),
                None => continue,
            }
        }
        let entry = parsed
            .auths
            .iter()
            .find(|(k, _)| host_of_key(k) == registry)
            .map(|(_, v)| v);
        let Some(entry) = entry else { continue };
        if let Some(auth) = &entry.auth {
            let bad = || {
                Error::new(
                    ErrorKind::InvalidArgument,
                    f.display(),
                    format!(
                        "the \"auth\" of {registry} is not base64 of USER:PASSWORD; log in again"
                    ),
                )
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let raw = String::from_utf8(raw).map_err(|_| bad())?;
            let (u, p) = raw.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials {
                username: u.to_owned(),
                password: p.to_owned(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }));
        }
    }
    Ok(None)
}

/// Asks credential helper `docker-credential-NAME` for `registry`'s
/// credentials (None when it has none). `file` named it.
fn run_helper(name: &str, registry: &str, file: &Path) -> Result<Option<Credentials>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let program = format!("docker-credential-{name}");
    if name.contains('/') {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            file.display(),
            format!("credential helper {name:?} is not a name; helpers are docker-credential-NAME programs on $PATH"),
        ));
    }
    // Docker Hub's credentials are stored under its v1 URL.
    let server = if registry == DOCKER_HUB {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                file.display(),
                format!("cannot run credential helper {program} ({e}); install it, or take \"{name}\" out of credsStore/credHelpers"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading its stdin says so below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(&program, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The protocol's answer for a registry it has nothing for.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let said = format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return Err(Error::new(
            ErrorKind::Unauthorized,
            registry,
            format!(
                "credential helper {program} failed ({}): {}",
                out.status,
                said.trim()
            ),
        ));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            registry,
            format!("credential helper {program} answered something other than {{\"Username\", \"Secret\"}} ({e})"),
        )
    })?;
    if answer.username == "<token>" {
        return Err(Error::new(
            ErrorKind::Unauthorized,
            registry,
            format!("credential helper {program} holds an identity token, which thinbox cannot use yet; log in with a password or access token"),
        ));
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send the user name and password.
    Basic,
    /// Fetch a token from `realm` for `service` and `scope`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service the token is for.
        service: Option<String>,
        /// The scope asked for (`repository:NAME:pull`).
        scope: Option<String>,
    },
}

/// `key="value", key=value` pairs (RFC 7235 auth-params).
fn params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    out
}

impl Challenge {
    /// Parses one challenge; None for a scheme this client does not speak.
    pub fn parse(header: &str) -> Option<Challenge> {
        let h = header.trim();
        let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => Some(Challenge::Basic),
            "bearer" => {
                let mut p = params(rest);
                Some(Challenge::Bearer {
                    realm: p.remove("realm")?,
                    service: p.remove("service"),
                    scope: p.remove("scope"),
                })
            }
            _ => None,
        }
    }
}

/// A token endpoint's answer.
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            Challenge::parse("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/busybox:pull\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse("bearer realm=http://h/t, scope=\"a:b:pull,push\""),
            Some(Challenge::Bearer {
                realm: "http://h/t".into(),
                service: None,
                scope: Some("a:b:pull,push".into()),
            })
        );
        assert_eq!(Challenge::parse("Bearer service=\"x\""), None, "no realm");
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn credentials_from_the_first_file_that_has_them() {
        let d = tempfile::tempdir().unwrap();
        let podman = d.path().join("auth.json");
        let docker = d.path().join("config.json");
        std::fs::write(&podman, r#"{"auths":{"quay.io":{"auth":"cTpx"}}}"#).unwrap();
        std::fs::write(
            &docker,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},"127.0.0.1:5000":{"username":"u","password":"p"}}}"#,
        )
        .unwrap();
        let files = vec![
            d.path().join("missing.json"),
            podman.clone(),
            docker.clone(),
        ];
        let hub = find_credentials(&files, "docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(hub.basic(), "Basic dXNlcjpwYTpzcw==");
        assert_eq!(
            find_credentials(&files, "quay.io")
                .unwrap()
                .unwrap()
                .username,
            "q"
        );
        assert_eq!(
            find_credentials(&files, "127.0.0.1:5000")
                .unwrap()
                .unwrap()
                .password,
            "p"
        );
        assert_eq!(find_credentials(&files, "ghcr.io").unwrap(), None);
        assert!(
            !format!("{hub:?}").contains("pa:ss"),
            "passwords are not printed"
        );

        std::fs::write(&podman, "{not json").unwrap();
        let e = find_credentials(&files, "x").unwrap_err();
        assert!(
            e.to_string().contains("auth.json") && e.to_string().contains("podman login"),
            "{e}"
        );
        std::fs::write(&podman, r#"{"auths":{"x":{"auth":"!!"}}}"#).unwrap();
        let e = find_credentials(&files, "x").unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
    }
}

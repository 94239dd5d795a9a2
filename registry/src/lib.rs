//! The OCI distribution API from the client's side, synchronously (a
//! library thread blocks on its sockets; the daemon calls it from blocking
//! threads like the rest of the engine).
//!
//! A pull goes: a [`Reference`] (`busybox`, `host:5000/ns/app:tag`,
//! `…@sha256:…`) → [`Client::resolve`]: the manifest from the first mirror
//! that has it, else the registry, checked against its digest, an index
//! or manifest list resolved to one [`Platform`] → [`Client::fetch_blob`]
//! for the config and each layer, streamed to a file while hashed,
//! resumed with a Range after a break, named by its digest only once it
//! matches. Applying the layers is the image store's
//! ([`snapshotter::image::Images::import_gated`]).
//!
//! A push goes blob by blob ([`Client::push_blob`]: skipped when the
//! repository has it, mounted from another repository that has it, else
//! one PUT or PATCH chunks), then [`Client::push_manifest`].
//!
//! Auth and transport are what docker and podman users have configured:
//! their auth files, `certs.d` CA directories, insecure registries and
//! mirrors ([`Settings`]); Bearer tokens and Basic auth answered from a
//! `WWW-Authenticate` challenge ([`auth`]); retries with backoff on
//! refused connections, 429 and 5xx.
//!
//! HTTP and TLS are ureq's (rustls, no OpenSSL); nothing here speaks HTTP
//! by hand.

pub mod auth;
mod blob;
mod client;
pub mod error;
mod manifest;
pub mod reference;
mod upload;

pub use blob::{partial_path, Blob};
pub use client::{Client, Endpoint, Settings};
pub use error::{Error, ErrorKind, Result};
pub use manifest::{
    Descriptor, Platform, Resolved, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
pub use reference::Reference;
pub use upload::Uploaded;

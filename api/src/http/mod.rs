//! HTTP/1.1 on a Unix socket, the way Firecracker's API speaks it: JSON bodies, 204 for a
//! successful PUT/PATCH, 200 + JSON for a GET, 400 + `{"fault_message": "..."}` for errors.
//!
//! - [`parse`]: a pure request parser (request line and headers by `httparse`, the body by
//!   `Content-Length`), used by the server, the unit tests and the `api_http` fuzz target.
//! - [`Response`]: a status and an optional JSON body, serialized with the few headers
//!   clients need.
//! - [`Server`]: binds the socket (replacing a stale one, as Firecracker does) and runs
//!   a single non-blocking epoll loop over at most [`MAX_CONNECTIONS`] connections, so one
//!   slow or hostile client never blocks another, or the VM.
//! - [`spawn`]: runs a server on its own thread, `kiln-api`, behind a setup step (where the
//!   seccomp filter goes) and a stop event.

mod conn;
mod parse;
mod response;
mod server;
mod socket;
mod thread;

#[cfg(test)]
mod server_tests;

use std::io;
use std::path::PathBuf;

pub use parse::{parse, Method, Parsed, Request};
pub use response::Response;
pub use server::Server;
pub use thread::{spawn, ApiThread, THREAD_NAME};

/// Firecracker's default request payload limit (`--http-api-max-payload-size`), in bytes.
pub const DEFAULT_MAX_PAYLOAD: usize = 51200;
/// The longest request line plus header section accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 8192;
/// The most header lines accepted in one request.
pub const MAX_HEADERS: usize = 32;
/// The most connections served at once (see [`Server`] for what happens to more).
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may sit on a partial request, on unread output, or before its
/// first request (the default of [`Server::with_idle_timeout`]).
pub const DEFAULT_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors from binding or running the API server. Each names the socket path or the
/// step, and the fix.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket path exists and is something else than a socket.
    #[error("cannot use {} as the API socket: it exists and is not a socket: remove it or choose another --api-sock", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket file could not be removed.
    #[error("cannot replace the old API socket {}: {source}: remove it by hand or choose another --api-sock", path.display())]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `bind(2)` failed; the message explains the usual causes.
    #[error("cannot bind API socket {}: {}", path.display(), bind_hint(source))]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// An epoll, eventfd or socket set-up step of the server failed.
    #[error("API server: {what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// The message for a failed bind: the cause in words and the fix.
fn bind_hint(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "the directory does not exist: create it or choose another --api-sock".to_string()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied: choose a directory Kiln may create files in (--api-sock)"
                .to_string()
        }
        io::ErrorKind::AddrInUse => {
            "the address is in use (another process bound it just now): stop it or choose another --api-sock".to_string()
        }
        io::ErrorKind::InvalidInput => format!(
            "{e} (a Unix socket path holds at most 107 bytes): choose a shorter --api-sock"
        ),
        _ => format!("{e}: choose another --api-sock"),
    }
}

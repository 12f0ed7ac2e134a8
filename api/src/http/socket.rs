//! The socket file: bound in place of a stale one (as Firecracker does, but never in
//! place of something that is not a socket), and removed only while it is still ours.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::HttpError;

/// The path of a socket this process bound, and the identity of the file bound there,
/// so removing it never removes a socket someone else bound at the same path since.
#[derive(Debug, Clone)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Binds a listening socket at `path` (close-on-exec, non-blocking), first removing a
    /// socket file left there (by a previous run).
    pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile), HttpError> {
        let owned = || path.to_path_buf();
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(HttpError::RemoveStale {
                        path: owned(),
                        source,
                    })
                }
            },
            Ok(_) => return Err(HttpError::NotASocket { path: owned() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(HttpError::Bind {
                    path: owned(),
                    source,
                })
            }
        }
        // std binds with SOCK_CLOEXEC.
        let listener = UnixListener::bind(path).map_err(|source| HttpError::Bind {
            path: owned(),
            source,
        })?;
        let file = SocketFile::identify(path).map_err(|source| HttpError::Bind {
            path: owned(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| HttpError::Io {
                what: "making the API socket non-blocking",
                source,
            })?;
        Ok((listener, file))
    }

    fn identify(path: &Path) -> io::Result<SocketFile> {
        let m = fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// The path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket file if it is still the one bound here; `Ok(false)` when it is
    /// gone or was replaced. Idempotent.
    pub(crate) fn remove(&self) -> io::Result<bool> {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                match fs::remove_file(&self.path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`SocketFile::remove`], logging a failure (removal runs on exit paths that have
    /// no one to report to).
    pub(crate) fn remove_logged(&self) {
        if let Err(e) = self.remove() {
            log::warn!("cannot remove the API socket {}: {e}", self.path.display());
        }
    }
}

//! Opening sockets inside another network namespace: a helper thread enters
//! the namespace, opens the socket and exits; the socket stays bound to the
//! namespace it was opened in, while the calling thread never moves.

use std::os::fd::AsFd;
use std::path::Path;

/// The namespace could not be entered or the helper failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot enter network namespace {path}: {message}")]
pub struct NetnsError {
    /// Its path, e.g. /run/netns/<name>.
    pub path: String,
    /// What failed.
    pub message: String,
}

/// Runs `open` on a helper thread inside the network namespace at `path`.
pub fn open_in<T, E>(
    path: &Path,
    open: impl FnOnce() -> Result<T, E> + Send,
) -> Result<Result<T, E>, NetnsError>
where
    T: Send,
    E: Send,
{
    let fail = |message: String| NetnsError {
        path: path.display().to_string(),
        message,
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| fail(e.to_string()))?;
                Ok(open())
            })
            .join()
            .map_err(|_| fail("helper thread panicked".into()))?
    })
}

//! The accept loop and one connection's request loop, over any
//! [`Listener`]: AF_VSOCK in the guest ([`crate::vsock`]), a Unix socket in
//! the tests (this host has no vsock transport to a guest).

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::{respond, LineError, LineReader, Next, Reply};
use crate::system::System;

/// An accepted stream the server can talk over.
pub trait Connection: Read + Write + Send + 'static {
    /// Makes reads and writes fail once they wait longer than `timeout`.
    fn set_idle_timeout(&self, timeout: Duration) -> io::Result<()>;
}

/// A listening socket.
pub trait Listener {
    /// What it accepts.
    type Conn: Connection;
    /// Waits for the next connection.
    fn accept(&self) -> io::Result<Self::Conn>;
}

impl Connection for UnixStream {
    fn set_idle_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;

    fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).map(|(stream, _)| stream)
    }
}

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; one more is answered `ERR busy` and
    /// closed.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: crate::IDLE_TIMEOUT,
            max_connections: 8,
        }
    }
}

/// Accepts connections forever, each served on its own thread. Failed
/// accepts are logged and retried a little later.
pub fn serve<L: Listener>(listener: &L, system: Arc<dyn System>, config: Config) -> ! {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut conn = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("mecvisor-guest: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
            active.fetch_sub(1, Ordering::AcqRel);
            // Best effort: the connection is dropped either way.
            let _ = conn.set_idle_timeout(config.idle_timeout);
            let _ = conn.write_all(b"ERR busy\n");
            continue;
        }
        let system = Arc::clone(&system);
        let active = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || {
                if let Err(e) = handle(conn, system.as_ref(), &config) {
                    if !is_idle(&e) {
                        eprintln!("mecvisor-guest: connection: {e}");
                    }
                }
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            eprintln!("mecvisor-guest: cannot start a connection thread: {e}");
        }
    }
}

/// A read or write that ran into the idle timeout.
fn is_idle(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Serves one connection until the peer closes it, it stays idle for
/// `config.idle_timeout`, a line is refused, or the guest powers off.
pub fn handle<C: Connection>(conn: C, system: &dyn System, config: &Config) -> io::Result<()> {
    conn.set_idle_timeout(config.idle_timeout)?;
    let mut reader = LineReader::new(conn);
    loop {
        let reply = match reader.next_line()? {
            Next::End => return Ok(()),
            Next::TooLong => respond(Err(LineError::TooLong), Ok(Duration::ZERO)),
            Next::Line(line) => respond(Ok(&line), system.uptime()),
        };
        let out = reader.get_mut();
        out.write_all(reply.line().as_bytes())?;
        out.flush()?;
        match reply {
            Reply::Continue(_) => {}
            Reply::Close(_) => return Ok(()),
            Reply::PowerOff(_) => {
                let e = system.power_off();
                return Err(io::Error::new(e.kind(), format!("power off failed: {e}")));
            }
        }
    }
}

//! `mecvisor-guest`: the guest agent of mecvisor's microVMs (see the
//! library's documentation for the protocol).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use mecvisor_guest::server::{self, Config};
use mecvisor_guest::system::Linux;
use mecvisor_guest::vsock::{self, VsockListener};
use mecvisor_guest::{IDLE_TIMEOUT, MAX_LINE, PORT};

/// Parsed command line.
struct Options {
    port: u32,
    ready: Option<PathBuf>,
}

fn usage() -> String {
    format!(
        "mecvisor-guest {version}: the guest agent of a mecvisor microVM.

Listens on virtio-vsock port {PORT} (any local CID) and answers the host one
line at a time:
  HEALTH     ->  OK <guest uptime in seconds>
  POWEROFF   ->  OK, then sync and power off
  anything else, or a line over {MAX_LINE} bytes  ->  ERR <reason>, and close
A connection idle for {idle} s is closed.

Usage: mecvisor-guest [--port N] [--ready FILE]
  --port N       listen on vsock port N instead of {PORT}
  --ready FILE   write FILE (\"<cid> <port>\") once listening
  -h, --help     print this help
  -V, --version  print the version

Exits 1 when the guest has no vsock device or the port cannot be bound.",
        version = env!("CARGO_PKG_VERSION"),
        idle = IDLE_TIMEOUT.as_secs(),
    )
}

/// `Ok(None)` when the program should print something and stop.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        port: PORT,
        ready: None,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("mecvisor-guest {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--port" => {
                let value = args.next().ok_or("--port needs a number")?;
                options.port = value
                    .parse()
                    .map_err(|_| format!("--port {value:?} is not a port number"))?;
            }
            "--ready" => {
                options.ready = Some(args.next().ok_or("--ready needs a file")?.into());
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mecvisor-guest: {e}");
            return ExitCode::from(2);
        }
    };
    let cid = match vsock::local_cid() {
        Ok(Some(cid)) => cid,
        Ok(None) => {
            eprintln!("mecvisor-guest: no vsock device in this guest (no local CID)");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("mecvisor-guest: {e} (is the vsock module loaded?)");
            return ExitCode::FAILURE;
        }
    };
    let listener = match VsockListener::bind(options.port) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "mecvisor-guest: cannot listen on vsock port {}: {e}",
                options.port
            );
            return ExitCode::FAILURE;
        }
    };
    if let Some(ready) = &options.ready {
        if let Err(e) = std::fs::write(ready, format!("{cid} {}\n", options.port)) {
            eprintln!("mecvisor-guest: cannot write {}: {e}", ready.display());
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "mecvisor-guest: listening on vsock port {} (guest CID {cid})",
        options.port
    );
    server::serve(&listener, Arc::new(Linux), Config::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_the_command_line() {
        let defaults = parse(&[]).expect("parse").expect("options");
        assert_eq!((defaults.port, defaults.ready), (PORT, None));
        let set = parse(&["--port", "5000", "--ready", "/run/r"])
            .expect("parse")
            .expect("options");
        assert_eq!(set.port, 5000);
        assert_eq!(set.ready, Some(PathBuf::from("/run/r")));
        assert!(parse(&["--help"]).expect("help").is_none());
        assert!(parse(&["--port"]).is_err());
        assert!(parse(&["--port", "-1"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(usage().contains("HEALTH"));
    }
}

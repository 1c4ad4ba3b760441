//! A mosquitto broker for the benchmarks: on a free loopback port, plain or
//! with TLS and required client certificates, with TCP_NODELAY on (the
//! setting a latency-sensitive deployment uses; see README).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{free_port, wait_for, Lifetime, Proc};
use mecvisor_e2e::TestCerts;

/// Starts mosquitto in `dir`; with `tls`, it requires client certificates
/// signed by the PKI's CA. Returns it once it accepts TCP connections.
pub fn start(dir: &Path, tls: Option<&TestCerts>) -> Result<(Proc, u16)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = free_port()?;
    let conf = dir.join("mosquitto.conf");
    let mut conf_text = format!(
        "# written by cargo xtask bench\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         set_tcp_nodelay true\n\
         # stay root so files in this private temp dir stay readable\n\
         user root\n\
         log_type all\n\
         log_dest file {}\n",
        log_path(dir).display()
    );
    if let Some(pki) = tls {
        conf_text += &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        );
    }
    std::fs::write(&conf, conf_text).with_context(|| format!("writing {}", conf.display()))?;
    let mut broker = Proc::spawn(
        "mosquitto",
        Command::new("mosquitto").arg("-c").arg(&conf),
        &dir.join("mosquitto.log"),
        Lifetime::TiedToXtask,
    )?;
    wait_for(
        "mosquitto to listen",
        Duration::from_secs(10),
        Duration::from_millis(50),
        |note| {
            broker.ensure_running()?;
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => Ok(Some(())),
                Err(err) => {
                    *note = err.to_string();
                    Ok(None)
                }
            }
        },
    )?;
    Ok((broker, port))
}

/// mosquitto's own log file (its stdout only carries start-up warnings).
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("mosquitto-broker.log")
}

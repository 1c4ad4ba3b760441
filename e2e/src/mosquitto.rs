//! A real mosquitto broker on a loopback port, plain or TLS.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::certs::TestCerts;
use crate::process::{free_port, wait_until, Child};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A mosquitto process listening on 127.0.0.1; stopped when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    /// Listening port.
    pub port: u16,
    config: PathBuf,
}

impl Mosquitto {
    /// Whether mosquitto is installed; tests skip with a reason when not.
    pub fn available() -> bool {
        Path::new(MOSQUITTO).exists()
    }

    /// Starts a plain broker in `dir` on a free port.
    pub fn start(dir: &Path) -> Self {
        Self::start_on_free_port(dir, None)
    }

    /// Starts a TLS broker requiring client certificates signed by `certs`' CA.
    pub fn start_tls(dir: &Path, certs: &TestCerts) -> Self {
        Self::start_on_free_port(dir, Some(certs))
    }

    /// A port free a moment ago may be taken by another test's outgoing
    /// connection before mosquitto binds it: then try another.
    fn start_on_free_port(dir: &Path, tls: Option<&TestCerts>) -> Self {
        for _ in 0..3 {
            if let Some(broker) = Self::try_start_on(dir, free_port(), tls) {
                return broker;
            }
        }
        panic!("mosquitto could not listen on a free port in 3 tries");
    }

    /// Starts a broker on a given port.
    pub fn start_on(dir: &Path, port: u16, tls: Option<&TestCerts>) -> Self {
        Self::try_start_on(dir, port, tls)
            .unwrap_or_else(|| panic!("mosquitto did not listen on port {port}"))
    }

    fn try_start_on(dir: &Path, port: u16, tls: Option<&TestCerts>) -> Option<Self> {
        let config = dir.join(format!("mosquitto-{port}.conf"));
        // As root, mosquitto drops to the `mosquitto` user unless told to stay,
        // and that user cannot read the test's private temp dir.
        let user = if is_root() { "user root\n" } else { "" };
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nmax_inflight_messages 100\nmax_queued_messages 100000\n{user}"
        );
        if let Some(certs) = tls {
            text += &format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
                certs.ca.display(),
                certs.server_cert.display(),
                certs.server_key.display()
            );
        }
        std::fs::write(&config, text).expect("write mosquitto config");
        let mut broker = Mosquitto {
            child: None,
            port,
            config,
        };
        broker.try_restart().then_some(broker)
    }

    /// Stops the broker (SIGKILL: no goodbye to clients, like a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the broker again on the same port with the same config.
    pub fn restart(&mut self) {
        assert!(
            self.try_restart(),
            "mosquitto did not listen on port {}",
            self.port
        );
    }

    /// Starts the process; true once it listens, false if it exits first
    /// (e.g. the port is taken) or does not listen within 10 s.
    fn try_restart(&mut self) -> bool {
        self.stop();
        let child = Child::spawn(
            "mosquitto",
            Command::new(MOSQUITTO)
                .arg("-c")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        self.child = Some(child);
        let port = self.port;
        let listening = wait_until(Duration::from_secs(10), || {
            if self.child.as_mut().is_some_and(|c| !c.is_running()) {
                return Some(false);
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
        });
        // Connecting proves something listens; still running proves it is us.
        std::thread::sleep(Duration::from_millis(50));
        listening == Some(true) && self.child.as_mut().is_some_and(Child::is_running)
    }

    /// `mqtt://127.0.0.1:<port>` or `mqtts://127.0.0.1:<port>`.
    pub fn url(&self, tls: bool) -> String {
        let scheme = if tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

fn is_root() -> bool {
    extern "C" {
        fn geteuid() -> u32;
    }
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    unsafe { geteuid() == 0 }
}

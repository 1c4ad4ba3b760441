//! A throw-away PKI made with the openssl CLI: a CA, a broker certificate for
//! 127.0.0.1 and client certificates.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Paths of the generated PEM files.
pub struct TestCerts {
    /// CA certificate.
    pub ca: PathBuf,
    /// Broker certificate (SAN IP:127.0.0.1, DNS:localhost).
    pub server_cert: PathBuf,
    /// Broker key.
    pub server_key: PathBuf,
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCerts {
    /// Makes a CA and a broker certificate in `dir`.
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("cert dir");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=mecvisor test CA",
            ],
        );
        let certs = TestCerts {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir: dir.to_path_buf(),
        };
        certs.issue("server", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        certs
    }

    /// Issues a client certificate with common name `name`; returns (cert, key).
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        self.issue(name, "extendedKeyUsage=clientAuth")
    }

    fn issue(&self, name: &str, extension: &str) -> (PathBuf, PathBuf) {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), format!("{extension}\n")).expect("ext file");
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (self.dir.join(pem), self.dir.join(key))
    }
}

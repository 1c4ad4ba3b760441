//! A throwaway PKI made with the `openssl` CLI: one CA, a server certificate
//! for 127.0.0.1 and client certificates, all ECDSA P-256 in PKCS#8 / PEM.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::shell;

/// A certificate and its private key (PEM files).
pub struct CertPair {
    /// Certificate path.
    pub cert: PathBuf,
    /// Private key path.
    pub key: PathBuf,
}

/// A CA plus the certificates it signed.
pub struct Pki {
    /// CA certificate path.
    pub ca: PathBuf,
    ca_key: PathBuf,
    dir: PathBuf,
}

impl Pki {
    /// Creates a self-signed CA in `dir`.
    pub fn new(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_key = new_key(dir, "ca")?;
        let ca = dir.join("ca.pem");
        shell::output(
            Command::new("openssl")
                .args(["req", "-x509", "-new", "-sha256", "-days", "2", "-subj"])
                .arg("/CN=mecvisor bench CA")
                .arg("-key")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca)
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        )?;
        Ok(Pki {
            ca,
            ca_key,
            dir: dir.to_path_buf(),
        })
    }

    /// A server certificate valid for 127.0.0.1 and localhost.
    pub fn server(&self, name: &str) -> Result<CertPair> {
        self.issue(
            name,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
    }

    /// A client certificate whose common name is `name`.
    pub fn client(&self, name: &str) -> Result<CertPair> {
        self.issue(name, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, name: &str, extra_ext: &str) -> Result<CertPair> {
        let key = new_key(&self.dir, name)?;
        let csr = self.dir.join(format!("{name}.csr"));
        shell::output(
            Command::new("openssl")
                .args(["req", "-new", "-sha256", "-subj"])
                .arg(format!("/CN={name}"))
                .arg("-key")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        )?;
        let ext = self.dir.join(format!("{name}.ext"));
        let ext_text = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{extra_ext}"
        );
        std::fs::write(&ext, ext_text).with_context(|| format!("writing {}", ext.display()))?;
        let cert = self.dir.join(format!("{name}.pem"));
        shell::output(
            Command::new("openssl")
                .args(["x509", "-req", "-sha256", "-days", "2", "-set_serial"])
                .arg(serial(name))
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&self.ca)
                .arg("-CAkey")
                .arg(&self.ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        )?;
        Ok(CertPair { cert, key })
    }
}

/// Generates a P-256 key as PKCS#8 PEM at `<dir>/<name>.key`.
fn new_key(dir: &Path, name: &str) -> Result<PathBuf> {
    let key = dir.join(format!("{name}.key"));
    shell::output(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key),
    )?;
    Ok(key)
}

/// A distinct positive serial per certificate name (FNV-1a of the name).
fn serial(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{}", h >> 1)
}

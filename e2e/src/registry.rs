//! A real OCI registry on a loopback port: Debian's `docker-registry`
//! (distribution 2.8) with a temp storage dir, plain HTTP or HTTPS with a
//! test CA, optionally behind basic auth (htpasswd, bcrypt) or token auth
//! (distribution's `auth: token`, with a small token server of our own on
//! another loopback port, see [`Registry::start_with_token_auth`]).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Agent;

use crate::certs::TestCerts;
use crate::process::{free_port, wait_until, Child};

/// How long a (re)started registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest body [`Registry::get`] reads (test images are a few MB).
const MAX_BODY: u64 = 1 << 30;

/// What kind of registry to start.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require HTTP basic auth with this (user, password).
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate for 127.0.0.1 signed by a test CA
    /// (see [`Registry::ca_pem`]).
    pub tls: bool,
}

/// A `docker-registry` process on 127.0.0.1; killed, and its storage
/// removed, when dropped.
pub struct Registry {
    child: Option<Child>,
    program: PathBuf,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    ca: Option<PathBuf>,
    /// Server certificate and key (TLS only).
    tls: Option<(PathBuf, PathBuf)>,
    basic_auth: Option<(String, String)>,
    /// The token server (token auth only); stopped when dropped.
    token: Option<TokenServer>,
    agent: Agent,
    /// Dropped last (fields drop in order), after the process is killed.
    dir: TempDir,
}

impl Registry {
    /// Starts a registry on a free port and waits until it answers
    /// `GET /v2/`. `None` (after printing `SKIPPED: <why>`) when
    /// `docker-registry` (or, for basic auth, `htpasswd`) is not installed.
    pub fn start(options: RegistryOptions) -> Option<Registry> {
        Registry::start_inner(options, None)
    }

    /// Starts a registry like [`Registry::start`] that requires bearer
    /// tokens (distribution's `auth: token`). The tokens come from a token
    /// server this registry runs on another loopback port (the challenge's
    /// realm, `http://127.0.0.1:<port>/token`): it wants HTTP basic auth
    /// with `token_auth` = (user, password) and grants exactly the scopes
    /// asked for, as an RS256 JWT carrying its certificate in `x5c`.
    /// `options.basic_auth` must be `None` (distribution takes one auth
    /// scheme). `None` (after printing `SKIPPED: <why>`) when
    /// `docker-registry` or `openssl` is not installed.
    pub fn start_with_token_auth(
        options: RegistryOptions,
        token_auth: (String, String),
    ) -> Option<Registry> {
        assert!(
            options.basic_auth.is_none(),
            "a registry takes basic auth or token auth, not both"
        );
        Registry::start_inner(options, Some(token_auth))
    }

    fn start_inner(
        options: RegistryOptions,
        token_auth: Option<(String, String)>,
    ) -> Option<Registry> {
        let program = find_program("docker-registry").or_else(|| {
            skipped("docker-registry is not installed (apt-get install docker-registry)")
        })?;
        if options.basic_auth.is_some() && find_program("htpasswd").is_none() {
            return skipped("htpasswd is not installed (apt-get install apache2-utils)");
        }
        if token_auth.is_some() && find_program("openssl").is_none() {
            return skipped("openssl is not installed (apt-get install openssl)");
        }
        let dir = tempfile::Builder::new()
            .prefix("mecvisor-registry-")
            .tempdir()
            .expect("create the registry's temp dir");
        let certs = options
            .tls
            .then(|| TestCerts::new(&dir.path().join("certs")));
        if let Some((user, password)) = &options.basic_auth {
            write_htpasswd(&dir.path().join("htpasswd"), user, password);
        }
        let token = token_auth
            .map(|(user, password)| TokenServer::start(&dir.path().join("token"), user, password));
        let mut registry = Registry {
            child: None,
            program,
            port: 0,
            config: dir.path().join("config.yml"),
            log: dir.path().join("registry.log"),
            agent: http_agent(certs.as_ref().map(|c| c.ca.as_path())),
            tls: certs
                .as_ref()
                .map(|c| (c.server_cert.clone(), c.server_key.clone())),
            ca: certs.map(|c| c.ca),
            basic_auth: options.basic_auth,
            token,
            dir,
        };
        registry.start_on_free_port();
        Some(registry)
    }

    /// A port free a moment ago may be taken before the registry binds it:
    /// then try another.
    fn start_on_free_port(&mut self) {
        for _ in 0..3 {
            self.port = free_port();
            std::fs::write(&self.config, self.config_yaml()).expect("write the registry config");
            if self.try_restart() {
                return;
            }
        }
        panic!(
            "docker-registry did not listen on a free port in 3 tries; log:\n{}",
            self.log_text()
        );
    }

    /// The generated `config.yml` (no access log: the log is for errors).
    fn config_yaml(&self) -> String {
        let storage = self.dir.path().join("storage");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage:?}\n  delete:\n    enabled: true\n\
             http:\n  addr: \"127.0.0.1:{port}\"\n  secret: \"mecvisor-test-{port}\"\n",
            storage = storage.display().to_string(),
            port = self.port,
        );
        if let Some((cert, key)) = &self.tls {
            yaml += &format!(
                "  tls:\n    certificate: {:?}\n    key: {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            );
        }
        if self.basic_auth.is_some() {
            let htpasswd = self.dir.path().join("htpasswd");
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: mecvisor-test\n    path: {:?}\n",
                htpasswd.display().to_string()
            );
        }
        if let Some(token) = &self.token {
            yaml += &format!(
                "auth:\n  token:\n    realm: {:?}\n    service: {:?}\n    issuer: {:?}\n    \
                 rootcertbundle: {:?}\n",
                token.realm(),
                TOKEN_SERVICE,
                TOKEN_ISSUER,
                token.issuer.cert.display().to_string()
            );
        }
        yaml
    }

    /// `127.0.0.1:<port>` (as in image references `127.0.0.1:<port>/repo:tag`).
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the registry's TLS certificate;
    /// `None` for a plain HTTP registry.
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// The (user, password) the registry requires, if any.
    pub fn basic_auth(&self) -> Option<(&str, &str)> {
        self.basic_auth
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    /// The (user, password) the token server wants before it issues a
    /// token, if the registry uses token auth.
    pub fn token_auth(&self) -> Option<(&str, &str)> {
        self.token
            .as_ref()
            .map(|t| (t.issuer.user.as_str(), t.issuer.password.as_str()))
    }

    /// The token server's URL (`http://127.0.0.1:<port>/token`, the realm
    /// of the registry's `Bearer` challenge), if the registry uses token
    /// auth.
    pub fn token_realm(&self) -> Option<String> {
        self.token.as_ref().map(TokenServer::realm)
    }

    /// How many tokens the token server issued so far (0 without token
    /// auth): shows a client went through the token flow.
    pub fn tokens_issued(&self) -> u64 {
        self.token
            .as_ref()
            .map_or(0, |t| t.issuer.issued.load(Ordering::SeqCst))
    }

    /// The credentials a client presents: the basic auth (user, password),
    /// or the token server's for token auth.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.basic_auth().or_else(|| self.token_auth())
    }

    /// Asks the realm of a `WWW-Authenticate: Bearer realm=…,service=…,
    /// scope=…` challenge for a token, with HTTP basic auth (`credentials`,
    /// if any), the way docker clients do. The token, or why not (the
    /// status and body of the realm's answer).
    pub fn fetch_token(
        &self,
        challenge: &str,
        credentials: Option<(&str, &str)>,
    ) -> Result<String, String> {
        let params = parse_bearer_challenge(challenge)
            .ok_or_else(|| format!("not a Bearer challenge: {challenge}"))?;
        let mut realm = None;
        let mut query = Vec::new();
        for (key, value) in params {
            match key.as_str() {
                "realm" => realm = Some(value),
                "service" => query.push(format!("service={}", percent_encode(&value))),
                // Several scopes in one challenge are separated by spaces.
                "scope" => query.extend(
                    value
                        .split(' ')
                        .filter(|s| !s.is_empty())
                        .map(|s| format!("scope={}", percent_encode(s))),
                ),
                _ => {}
            }
        }
        let realm = realm.ok_or_else(|| format!("no realm in challenge: {challenge}"))?;
        let url = if query.is_empty() {
            realm.clone()
        } else {
            let separator = if realm.contains('?') { '&' } else { '?' };
            format!("{realm}{separator}{}", query.join("&"))
        };
        let mut request = self.agent.get(&url);
        if let Some((user, password)) = credentials {
            request = request.header(
                "Authorization",
                format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            );
        }
        let response = read_response(request.call().map_err(|e| format!("GET {url}: {e}"))?);
        let body = String::from_utf8_lossy(response.body()).into_owned();
        if response.status() != 200 {
            return Err(format!("GET {url}: {}: {body}", response.status()));
        }
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}: {body}"))?;
        json["token"]
            .as_str()
            .or_else(|| json["access_token"].as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("GET {url}: no token in {body}"))
    }

    /// `http://127.0.0.1:<port><path>` or `https://…`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.host())
    }

    /// An HTTP client that trusts the registry's CA (if TLS) and returns
    /// every status as a response (no error for 4xx/5xx). It sends no
    /// credentials: add [`Registry::authorization`] yourself.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The `Authorization` header value (`Basic …`), if the registry
    /// requires basic auth. (A token-auth registry wants `Bearer <token>`:
    /// see [`Registry::fetch_token`].)
    pub fn authorization(&self) -> Option<String> {
        self.basic_auth().map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        })
    }

    /// `GET <path>` with the registry's credentials (a bearer token from
    /// the token server after a `Bearer` challenge) and an optional
    /// `Accept` header; the whole body is read. Panics when the registry
    /// cannot be reached.
    pub fn get(&self, path: &str, accept: Option<&str>) -> Response<Vec<u8>> {
        let url = self.url(path);
        Authorizer::new(self).send(&format!("GET {path}"), |auth| {
            let mut request = self.agent.get(&url);
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            request.call()
        })
    }

    /// Where the registry keeps the bytes of a blob (`sha256:<hex>`) on
    /// disk, for tests that corrupt or truncate what it serves.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Kills the registry (SIGKILL, like a crash); storage is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the registry again on the same port with the same storage and
    /// waits until it answers.
    pub fn restart(&mut self) {
        assert!(
            self.try_restart(),
            "docker-registry did not restart on port {}; log:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Starts the process; true once it answers `GET /v2/`, false if it
    /// exits first (e.g. the port is taken). Panics with its log when it
    /// neither answers nor exits within 10 s.
    fn try_restart(&mut self) -> bool {
        self.stop();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the registry log");
        let log_err = log.try_clone().expect("clone the registry log handle");
        self.child = Some(Child::spawn(
            "docker-registry",
            Command::new(&self.program)
                .arg("serve")
                .arg(&self.config)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err),
        ));
        let answered = wait_until(START_TIMEOUT, || {
            if self.child.as_mut().is_some_and(|c| !c.is_running()) {
                return Some(false);
            }
            self.answers_v2().then_some(true)
        });
        match answered {
            Some(answered) => answered,
            None => panic!(
                "docker-registry did not answer GET /v2/ on port {} within {START_TIMEOUT:?}; log:\n{}",
                self.port,
                self.log_text()
            ),
        }
    }

    /// Whether `GET /v2/` answers 200 (open) or 401 (basic or token auth).
    fn answers_v2(&self) -> bool {
        self.agent
            .get(self.url("/v2/"))
            .call()
            .is_ok_and(|r| matches!(r.status().as_u16(), 200 | 401))
    }

    /// What the registry printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prints why the registry is not started; always `None`.
fn skipped<T>(why: &str) -> Option<T> {
    eprintln!("SKIPPED: {why}");
    None
}

/// `name` in `$PATH` (or `/usr/bin`, `/usr/sbin`), if it exists.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Writes an htpasswd file with a bcrypt hash (the only scheme the registry
/// accepts), made by `htpasswd -Bbn`.
fn write_htpasswd(path: &Path, user: &str, password: &str) {
    let out = Command::new(find_program("htpasswd").expect("htpasswd"))
        .args(["-B", "-b", "-n", user, password])
        .output()
        .expect("run htpasswd");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path, out.stdout).expect("write htpasswd file");
}

/// A ureq agent that returns 4xx/5xx as responses and, given a CA, trusts
/// only that CA (rustls with the ring provider).
fn http_agent(ca: Option<&Path>) -> Agent {
    let mut config = Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("read the registry CA");
        let cert = Certificate::from_pem(&pem).expect("parse the registry CA PEM");
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&[cert]))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        config = config.tls_config(tls);
    }
    config.build().into()
}

/// Reads a whole response body (up to 1 GiB).
pub(crate) fn read_response(response: Response<ureq::Body>) -> Response<Vec<u8>> {
    let (parts, mut body) = response.into_parts();
    let bytes = body
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .expect("read a registry response body");
    Response::from_parts(parts, bytes)
}

// ---------------------------------------------------------------- clients

/// The `Authorization` a client sends to one registry: its basic auth
/// header to begin with, a bearer token once the registry answers 401 with
/// a `Bearer` challenge (fetched from the challenge's realm with the
/// registry's credentials, then kept for later requests).
pub(crate) struct Authorizer<'a> {
    registry: &'a Registry,
    header: Option<String>,
}

impl<'a> Authorizer<'a> {
    pub(crate) fn new(registry: &'a Registry) -> Authorizer<'a> {
        Authorizer {
            registry,
            header: registry.authorization(),
        }
    }

    /// Sends a request built by `send` with the current `Authorization`
    /// (if any) and reads the whole answer. On a 401 with a `Bearer`
    /// challenge: gets a token for it and sends once more. Panics (naming
    /// `what`) when the registry or the token server cannot be reached or
    /// the token server refuses.
    pub(crate) fn send(
        &mut self,
        what: &str,
        mut send: impl FnMut(Option<&str>) -> Result<Response<ureq::Body>, ureq::Error>,
    ) -> Response<Vec<u8>> {
        let mut call = |auth: Option<&str>| {
            read_response(
                send(auth)
                    .unwrap_or_else(|e| panic!("{what} (registry {}): {e}", self.registry.host())),
            )
        };
        let response = call(self.header.as_deref());
        if response.status() != 401 {
            return response;
        }
        let Some(challenge) = response
            .headers()
            .get("WWW-Authenticate")
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
        else {
            return response;
        };
        let token = self
            .registry
            .fetch_token(challenge, self.registry.credentials())
            .unwrap_or_else(|e| panic!("{what}: token for challenge {challenge:?}: {e}"));
        let header = format!("Bearer {token}");
        let response = call(Some(&header));
        self.header = Some(header);
        response
    }
}

/// The parameters of `Bearer k="v",k2="v2"`, if it is a Bearer challenge
/// (quoted values may hold commas: `scope="repository:a:pull,push"`).
fn parse_bearer_challenge(challenge: &str) -> Option<Vec<(String, String)>> {
    let challenge = challenge.trim();
    let (scheme, rest) = challenge.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some(params)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out += &format!("%{byte:02X}");
        }
    }
    out
}

/// Decodes a query component (`%XX`, `+` for space); bad escapes are kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match escaped {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (basic auth headers, `x5c`).
fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = u32::from_be_bytes([
            0,
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding (the parts of a JWT).
fn base64url(bytes: &[u8]) -> String {
    base64(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Decodes standard base64 (padding optional); `None` if it is not base64.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits = 0u32;
    let mut count = 0;
    for c in text.bytes() {
        let value = BASE64_ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------- tokens

/// `service` in the registry's token config and `aud` of the tokens.
const TOKEN_SERVICE: &str = "mecvisor-test-registry";
/// `issuer` in the registry's token config and `iss` of the tokens.
const TOKEN_ISSUER: &str = "mecvisor-test-token-server";
/// How long a token is valid (`expires_in`).
const TOKEN_LIFETIME_SECS: u64 = 300;

/// What the token server needs to issue tokens.
struct TokenIssuer {
    user: String,
    password: String,
    /// RSA private key (PEM) the tokens are signed with.
    key: PathBuf,
    /// Its self-signed certificate (PEM): the registry's `rootcertbundle`.
    cert: PathBuf,
    /// The certificate, base64 DER (the JWT header's `x5c`).
    cert_der_base64: String,
    issued: AtomicU64,
}

/// An HTTP token server on 127.0.0.1 in a thread, one request per
/// connection; stopped (thread joined) when dropped.
struct TokenServer {
    port: u16,
    issuer: Arc<TokenIssuer>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Makes an RSA key and self-signed certificate in `dir` (openssl CLI)
    /// and starts serving `GET /token`.
    fn start(dir: &Path, user: String, password: String) -> TokenServer {
        std::fs::create_dir_all(dir).expect("create the token server's dir");
        let key = dir.join("token.key");
        let cert = dir.join("token.pem");
        run_openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
            "-days",
            "2",
            "-subj",
            "/CN=mecvisor test token issuer",
        ]);
        let pem = std::fs::read_to_string(&cert).expect("read the token certificate");
        let cert_der_base64: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::trim)
            .collect();
        assert!(
            base64_decode(&cert_der_base64).is_some(),
            "the token certificate PEM is not base64"
        );
        let issuer = Arc::new(TokenIssuer {
            user,
            password,
            key,
            cert,
            cert_der_base64,
            issued: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let port = listener.local_addr().expect("token server address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let issuer = Arc::clone(&issuer);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("token-server".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        if let Ok(stream) = stream {
                            serve_token_request(stream, &issuer);
                        }
                    }
                })
                .expect("start the token server thread")
        };
        TokenServer {
            port,
            issuer,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>/token`.
    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept() so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request and answers it; the connection is then closed.
fn serve_token_request(mut stream: TcpStream, issuer: &TokenIssuer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if request.is_empty() {
        return;
    }
    let (status, extra_headers, body) = token_response(&String::from_utf8_lossy(&request), issuer);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

/// (status, extra header lines, JSON body) for one HTTP request.
fn token_response(request: &str, issuer: &TokenIssuer) -> (u16, String, String) {
    let error = |status: u16, headers: &str, message: &str| {
        let body = serde_json::json!({"errors": [{"message": message}]}).to_string();
        (status, headers.to_string(), body)
    };
    let mut lines = request.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/token" {
        return error(404, "", "not found");
    }
    if method != "GET" {
        return error(405, "", "GET only");
    }
    let authorization = lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_string());
    let expected = format!("{}:{}", issuer.user, issuer.password);
    let authorized = authorization
        .as_deref()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, credentials)| base64_decode(credentials))
        .is_some_and(|decoded| decoded == expected.as_bytes());
    if !authorized {
        return error(
            401,
            "WWW-Authenticate: Basic realm=\"mecvisor-test-token-server\"\r\n",
            "bad or missing credentials",
        );
    }
    let mut access = Vec::new();
    for (key, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        if key != "scope" {
            continue;
        }
        // One scope per parameter, or several separated by spaces.
        for scope in percent_decode(value).split(' ').filter(|s| !s.is_empty()) {
            let Some((rest, actions)) = scope.rsplit_once(':') else {
                return error(400, "", &format!("bad scope {scope:?}"));
            };
            let Some((kind, name)) = rest.split_once(':') else {
                return error(400, "", &format!("bad scope {scope:?}"));
            };
            access.push(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>(),
            }));
        }
    }
    match issue_token(issuer, access) {
        Ok((jwt, issued_at)) => {
            let body = serde_json::json!({
                "token": jwt,
                "access_token": jwt,
                "expires_in": TOKEN_LIFETIME_SECS,
                "issued_at": issued_at,
            });
            (200, String::new(), body.to_string())
        }
        Err(e) => error(500, "", &e),
    }
}

/// Signs a JWT granting `access` (RS256 with `openssl dgst -sha256
/// -sign`, the certificate in `x5c`); returns it and its RFC 3339 issue
/// time.
fn issue_token(
    issuer: &TokenIssuer,
    access: Vec<serde_json::Value>,
) -> Result<(String, String), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let n = issuer.issued.load(Ordering::SeqCst);
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5c": [issuer.cert_der_base64],
    });
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER,
        "sub": issuer.user,
        "aud": TOKEN_SERVICE,
        "exp": now + TOKEN_LIFETIME_SECS,
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("mecvisor-{now}-{n}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new(find_program("openssl").ok_or("openssl is not installed")?)
        .args(["dgst", "-sha256", "-sign"])
        .arg(&issuer.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run openssl dgst: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(signing_input.as_bytes())
        .map_err(|e| format!("write to openssl dgst: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("openssl dgst: {e}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    issuer.issued.fetch_add(1, Ordering::SeqCst);
    Ok((
        format!("{signing_input}.{}", base64url(&out.stdout)),
        rfc3339(now),
    ))
}

/// Runs the openssl CLI; panics with its stderr when it fails.
fn run_openssl(args: &[&str]) {
    let out = Command::new(find_program("openssl").expect("openssl"))
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RFC 3339 (UTC) for seconds since the epoch, as token answers carry it.
fn rfc3339(secs: u64) -> String {
    containers::logs::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
            assert_eq!(base64url(plain.as_bytes()), encoded.trim_end_matches('='));
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64_decode("not base64!"), None);
    }

    #[test]
    fn bearer_challenges_and_query_components() {
        let params = parse_bearer_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a/b:pull,push""#,
        )
        .expect("a Bearer challenge");
        assert_eq!(
            params,
            [
                ("realm".into(), "http://127.0.0.1:1/token".into()),
                ("service".into(), "svc".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        assert_eq!(parse_bearer_challenge(r#"Basic realm="x""#), None);
        let scope = "repository:a/b:pull,push";
        assert_eq!(percent_encode(scope), "repository%3Aa%2Fb%3Apull%2Cpush");
        assert_eq!(percent_decode(&percent_encode(scope)), scope);
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20.000Z");
    }
}

//! The config file (DESIGN §5): its types, loading and validation. `Config::load` runs on the
//! main thread at start and on reload (SIGHUP, `POST /reload`); the returned `Config` is owned
//! by the caller and shared read-only with workers. Every error names file, line, column and
//! the field path, and all errors of a document are reported together.
//!
//! Extensions beyond DESIGN §5 (all optional, defaults in brackets), in `[[target_group]]`:
//! `connect_timeout` [3s], `response_timeout` [60s, time to the first response byte],
//! `keepalive_timeout` [4s, idle pooled upstream connections are closed after this],
//! `max_idle_per_target` [256, per worker]. Relative paths (certificates, `ca_file`,
//! `access_log`) are resolved against the directory of the config file.

pub(crate) mod document;
mod group;
mod listener;
mod reader;
pub mod traffic;
mod units;
mod validate;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use listener::DEFAULT_BACKLOG;
pub use units::{parse_duration, parse_size, Matcher};

/// Largest config file accepted, so a wrong path (a disk image, /dev/zero) cannot eat memory.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (as given to `load`/`parse`).
    pub path: PathBuf,
    pub runtime: RuntimeConfig,
    /// `None` when the `[admin]` table is absent: no admin endpoint.
    pub admin: Option<AdminConfig>,
    pub listeners: Vec<ListenerConfig>,
    pub target_groups: Vec<TargetGroupConfig>,
}

/// `[runtime]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// 0 = one per CPU in the process's affinity mask.
    pub workers: usize,
    pub pin: bool,
    pub io: IoBackend,
    pub drain_timeout: Duration,
    /// "system" or "ip:port" of a DNS server.
    pub resolver: String,
    /// Extension: open client connections per worker; beyond it new connections get 503 and are
    /// closed while the open ones keep being served.
    pub max_connections: usize,
}

/// Default per-worker cap on open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Largest accepted `runtime.max_connections`.
pub const MAX_MAX_CONNECTIONS: usize = 10_000_000;

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 0,
            pin: true,
            io: IoBackend::Auto,
            drain_timeout: Duration::from_secs(30),
            resolver: "system".to_string(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    Auto,
    Uring,
    Epoll,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// `[[listener]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// Default http.
    pub protocol: ListenerProtocol,
    /// The default action: forward here.
    pub target_group: String,
    pub backlog: u32,
    /// "-" = stdout; otherwise a file path, resolved against the config directory.
    pub access_log: Option<String>,
    pub accept_proxy_protocol: bool,
    /// Extension: TCP congestion control of accepted connections (`None`: the host default).
    pub congestion_control: Option<String>,
    /// Extension: `TCP_DEFER_ACCEPT` (nginx's `deferred`, HAProxy's `defer-accept`): a
    /// connection is accepted once the client's first bytes have arrived. Default false.
    pub defer_accept: bool,
    /// Present exactly when `protocol` is https.
    pub tls: Option<ListenerTls>,
    pub limits: Limits,
    /// Sorted by ascending priority (first match wins).
    pub rules: Vec<RuleConfig>,
    /// HTTP/2 to clients: h2 by ALPN on https (default on), h2c by prior knowledge on http
    /// (default off). Always false on tcp listeners.
    pub http2: bool,
    /// `[listener.http2]`.
    pub http2_settings: Http2Settings,
    /// The request id field (lower case): generated when a request lacks it, forwarded, returned
    /// and logged. `None` (`request_id = ""`): off.
    pub request_id: Option<String>,
    /// Fields set on or removed from requests before they are forwarded.
    pub request_headers: HeaderRewrite,
    /// Fields set on or removed from responses before they reach the client.
    pub response_headers: HeaderRewrite,
}

/// `request_headers` / `response_headers`: names lower case, values as given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRewrite {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderRewrite {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// A target group's session stickiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stickiness {
    /// ringlb's own cookie names the target.
    LbCookie { duration: Duration },
    /// Requests carrying the application's cookie `cookie` go to the target that set it
    /// (through a companion cookie ringlb sets beside it).
    AppCookie { cookie: String, duration: Duration },
}

impl Stickiness {
    pub fn duration(&self) -> Duration {
        match self {
            Stickiness::LbCookie { duration } | Stickiness::AppCookie { duration, .. } => *duration,
        }
    }
}

/// When a failed attempt is retried on another target (bounded by `retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// The connect failed or timed out (any request: nothing was sent).
    pub connect_failure: bool,
    /// The connection closed or reset before any response byte (idempotent requests whose
    /// body was whole in ringlb's buffer).
    pub reset: bool,
    /// No response byte within `response_timeout` (idempotent requests, as for reset).
    pub timeout: bool,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            connect_failure: true,
            reset: false,
            timeout: false,
        }
    }
}

/// `[listener.http2]`: limits of one client's HTTP/2 connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
}

/// Default `max_concurrent_streams` (as nginx and ALB).
pub const DEFAULT_H2_STREAMS: u32 = 128;
/// Largest `max_concurrent_streams`.
pub const MAX_H2_STREAMS: i64 = 10_000;

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            max_concurrent_streams: DEFAULT_H2_STREAMS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    Http,
    Https,
    Tcp,
}

/// `[listener.tls]`: at least one certificate; the first is the default (no SNI match).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub certificates: Vec<CertificateFiles>,
    /// Mutual TLS: whether clients must present a certificate that chains to `client_ca`.
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs client certificates must chain to (set when `client_auth` is on).
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs checked against client certificates (re-read on every reload).
    pub client_crl: Vec<PathBuf>,
    pub cipher_preference: CipherPreference,
}

/// `client_auth`: whether clients must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Off = 0,
    /// Asked for, verified when presented; a client without one is served (rules may tell).
    Optional = 1,
    Required = 2,
}

/// `cipher_preference`: whose order picks the cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherPreference {
    /// ringlb's own order (rustls `ignore_client_order`): what scanners expect.
    Server = 0,
    Client = 1,
}

/// PEM files of one certificate chain and its key (checked when the config is read), and the
/// DER OCSP response to staple with it.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ocsp: Option<PathBuf>,
}

/// `[listener.limits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0 = off.
    pub max_connections_per_ip: u32,
    /// 0 = off.
    pub requests_per_second_per_ip: u32,
    /// When non-empty, only these may connect.
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections_per_ip: 0,
            requests_per_second_per_ip: 0,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// `[[listener.rule]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    pub priority: u32,
    pub conditions: Conditions,
    pub action: Action,
    /// Applied after the listener's (forward rules only).
    pub request_headers: HeaderRewrite,
    pub response_headers: HeaderRewrite,
}

/// A rule matches when every non-empty condition holds; a condition holds when any of its
/// values matches. `header` and `query` pairs are each a condition of their own (all must
/// hold). Host and path values may contain `*` and `?` wildcards.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conditions {
    pub host: Vec<String>,
    pub path: Vec<String>,
    pub method: Vec<String>,
    pub header: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub source_ip: Vec<ipnet::IpNet>,
    /// Globs on the verified client certificate's RFC 4514 subject (mutual TLS).
    pub client_cert_subject: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Vec<WeightedGroup>),
    Redirect(Redirect),
    FixedResponse(FixedResponse),
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedGroup {
    pub target_group: String,
    pub weight: u32,
}

/// Unset parts keep the request's own value.
#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    /// "http" or "https".
    pub protocol: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub query: Option<String>,
    /// 301, 302, 307 or 308.
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FixedResponse {
    pub status: u16,
    pub body: String,
    pub content_type: String,
}

/// `[[target_group]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroupConfig {
    pub name: String,
    /// Default http.
    pub protocol: GroupProtocol,
    /// Default round_robin.
    pub algorithm: Algorithm,
    pub targets: Vec<TargetSpec>,
    pub retries: u32,
    pub fail_open: bool,
    /// 0 = off.
    pub passive_failures: u32,
    pub deregistration_delay: Duration,
    pub proxy_protocol: ProxyProtocol,
    /// Only for https groups.
    pub tls: Option<GroupTls>,
    /// What ringlb speaks to the targets [http1].
    pub protocol_version: ProtocolVersion,
    /// Session stickiness (`None`: off).
    pub stickiness: Option<Stickiness>,
    /// A target turning healthy ramps to its weight over this time (zero: off).
    pub slow_start: Duration,
    /// Requests in flight per target per worker (0: no limit); more wait in a FIFO queue.
    pub max_connections: u32,
    /// Longest wait in that queue; then 503.
    pub queue_timeout: Duration,
    pub retry_on: RetryOn,
    /// `None`: targets are healthy at once.
    pub health_check: Option<HealthCheckConfig>,
    /// Extension: time allowed to connect to a target [3s].
    pub connect_timeout: Duration,
    /// Extension: time to the first response byte [60s].
    pub response_timeout: Duration,
    /// Extension: idle pooled upstream connections are closed after this [4s].
    pub keepalive_timeout: Duration,
    /// Extension: idle pooled connections kept per target, per worker [256].
    pub max_idle_per_target: usize,
    /// Extension: TCP congestion control of upstream connections (`None`: the host default).
    pub congestion_control: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastOutstanding,
    PowerOfTwo,
    SourceHash,
}

/// One entry of `targets`.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    Static {
        address: SocketAddr,
        weight: u32,
    },
    /// Re-resolved every `refresh` (default 10s) through `runtime.resolver`.
    Dns {
        host: String,
        port: u16,
        refresh: Duration,
        weight: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

/// `[target_group.tls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupTls {
    /// `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// `None`: the target's host.
    pub server_name: Option<String>,
}

/// `[target_group.health_check]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub protocol: HealthProtocol,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
    /// grpc checks: the service named in `HealthCheckRequest` ("" = the server as a whole).
    pub grpc_service: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthProtocol {
    Http,
    Tcp,
    /// `grpc.health.v1.Health/Check` over HTTP/2; healthy when SERVING.
    Grpc,
}

/// What ringlb speaks to a group's targets (DESIGN §9 `protocol_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolVersion {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2: h2c to http targets, h2 by ALPN to https targets.
    Http2,
    /// HTTP/2, and ringlb's own answers to gRPC calls are gRPC statuses.
    Grpc,
}

impl ProtocolVersion {
    /// True when requests go to the targets over HTTP/2.
    pub fn is_h2(self) -> bool {
        self != ProtocolVersion::Http1
    }
}

/// One problem in a config file. `line`/`column` are 1-based; `line == 0` means the whole
/// file (it could not be read) and is displayed without line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", location(file, *line, *column))]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every error found in one config file, in document order; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join_lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn location(file: &Path, line: usize, column: usize) -> String {
    if line == 0 {
        file.display().to_string()
    } else {
        format!("{}:{line}:{column}", file.display())
    }
}

fn join_lines(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let whole_file = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message,
            }])
        };
        let file = std::fs::File::open(path)
            .map_err(|e| whole_file(format!("cannot open config file: {e}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| whole_file(format!("cannot read config file: {e}")))?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(whole_file(format!(
                "config file is larger than {MAX_CONFIG_BYTES} bytes; is this the right file?"
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            whole_file(format!(
                "config file is not valid UTF-8 (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is used in messages and to resolve relative file
    /// paths (against its directory).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        document::parse(text, path)
    }

    /// The target group called `name`.
    pub fn target_group(&self, name: &str) -> Option<&TargetGroupConfig> {
        self.target_groups.iter().find(|g| g.name == name)
    }

    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

/// A complete, valid, commented example config (no https listener, so it needs no files).
pub fn example() -> &'static str {
    include_str!("config/example.toml")
}

#[cfg(test)]
mod tests;

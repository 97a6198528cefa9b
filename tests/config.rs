//! Integration tests of `Config::load` over real files in a private temp directory: the
//! DESIGN §5 example, certificate and CA files (present, missing, relative), and unreadable
//! config files. Each test owns its directory and removes it at the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ringlb::config::{
    Action, Algorithm, Config, GroupProtocol, HealthProtocol, IoBackend, ListenerProtocol,
    ProxyProtocol, TargetSpec, WeightedGroup,
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ringlb-config-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).unwrap();
    text[..at].matches('\n').count() + 1
}

/// DESIGN §5, with the two changes its own rules require (the listener and the group carry
/// `tls`, so they are https) and the `api` group its rule forwards to.
const DESIGN: &str = r#"[runtime]
workers = 0              # 0 = one per CPU in the process's affinity mask (taskset/cpusets respected)
pin = true               # worker i on the i-th allowed CPU
io = "auto"              # auto | uring | epoll
drain_timeout = "30s"    # SIGTERM: finish in-flight work for at most this long
resolver = "system"      # or "127.0.0.1:53": where dns targets are resolved

[admin]
bind = "127.0.0.1:9901"  # omit the table to disable
# token = "secret"       # when set, required as "Authorization: Bearer secret" on every endpoint

[[listener]]
name = "web"
bind = "0.0.0.0:8080"
protocol = "https"       # http | https | tcp
target_group = "app"     # the default action: forward here
backlog = 4096
access_log = "/var/log/ringlb/web.log"   # optional; "-" = stdout; one JSON object a line, per-worker buffered
accept_proxy_protocol = false            # true: a PROXY v1/v2 header from a balancer in front gives the client
  [listener.tls]         # https only
  certificates = [{ cert = "site.crt", key = "site.key" }]   # SNI picks by certificate names; first = default
  [listener.limits]      # defaults shown
  max_header_bytes = "16KiB"    # 431 beyond
  max_headers = 100             # 431 beyond
  max_uri_bytes = "8KiB"        # 414 beyond
  max_body_bytes = "10MiB"      # 413 beyond
  header_timeout = "10s"        # 408 when the head is not complete in time (slowloris)
  idle_timeout = "60s"
  max_connections_per_ip = 0    # 0 = off
  requests_per_second_per_ip = 0  # token bucket, 0 = off; 429 beyond
  allow = []                    # CIDRs; when non-empty, only these may connect
  deny = []                     # CIDRs refused at accept
  [[listener.rule]]             # first match by ascending priority wins
  priority = 10
  host = ["api.example.com", "*.example.org"]   # conditions: any value matches; all conditions must hold;
  path = ["/api/*"]                             # also method = [..], header = { name = "v" },
                                                # query = { key = "v" }, source_ip = ["10.0.0.0/8"]
  forward = "api"               # or: forward = [{ target_group = "a", weight = 90 }, { target_group = "b", weight = 10 }]

[[target_group]]
name = "app"
protocol = "https"             # http | https (re-encrypt) | tcp
algorithm = "round_robin"      # round_robin | least_outstanding | power_of_two | source_hash
targets = ["127.0.0.1:3000", { address = "127.0.0.1:3001", weight = 2 }]
                               # also { dns = "app.internal:3000", refresh = "10s" }: re-resolved targets
retries = 2                    # other targets tried when a connect fails or a reused connection dies first
fail_open = true               # all targets unhealthy: route to all (ALB); false: 503
passive_failures = 5           # consecutive live-traffic failures that mark a target unhealthy; 0 = off
deregistration_delay = "30s"
proxy_protocol = "off"         # off | v1 | v2: send a PROXY header to each target (tcp target groups)
  [target_group.tls]           # https target groups only
  ca_file = "backend-ca.pem"   # default: system roots
  server_name = "app.internal" # default: the target's host
  [target_group.health_check]  # omit: targets are healthy at once
  protocol = "http"            # http | tcp
  path = "/"
  interval = "5s"
  timeout = "2s"
  healthy_threshold = 3
  unhealthy_threshold = 2
  matcher = "200-399"

[[target_group]]
name = "api"
targets = [{ dns = "app.internal:3000", refresh = "10s" }]
"#;

fn design_dir() -> TempDir {
    let dir = TempDir::new("design");
    let (cert, key) = pem_pair();
    dir.write("site.crt", &cert);
    dir.write("site.key", &key);
    dir.write("backend-ca.pem", "-----BEGIN CERTIFICATE-----\n");
    dir
}

#[test]
fn design_example_loads_with_its_values() {
    let dir = design_dir();
    let path = dir.write("ringlb.toml", DESIGN);
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.path, path);
    assert_eq!(c.runtime.io, IoBackend::Auto);
    assert_eq!(c.runtime.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.admin.as_ref().unwrap().token, None);
    let web = &c.listeners[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.bind, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(web.protocol, ListenerProtocol::Https);
    assert_eq!(web.access_log.as_deref(), Some("/var/log/ringlb/web.log"));
    let certs = &web.tls.as_ref().unwrap().certificates;
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].cert, dir.0.join("site.crt"));
    assert_eq!(certs[0].key, dir.0.join("site.key"));
    assert_eq!(web.limits.max_body_bytes, 10 * 1024 * 1024);
    let rule = &web.rules[0];
    assert_eq!(rule.priority, 10);
    assert_eq!(rule.conditions.host, ["api.example.com", "*.example.org"]);
    assert_eq!(rule.conditions.path, ["/api/*"]);
    assert_eq!(
        rule.action,
        Action::Forward(vec![WeightedGroup {
            target_group: "api".into(),
            weight: 1
        }])
    );
    let app = c.target_group("app").unwrap();
    assert_eq!(app.protocol, GroupProtocol::Https);
    assert_eq!(app.algorithm, Algorithm::RoundRobin);
    assert_eq!(
        app.targets[1],
        TargetSpec::Static {
            address: "127.0.0.1:3001".parse().unwrap(),
            weight: 2
        }
    );
    assert_eq!(app.proxy_protocol, ProxyProtocol::Off);
    let tls = app.tls.as_ref().unwrap();
    assert_eq!(
        tls.ca_file.as_deref(),
        Some(dir.0.join("backend-ca.pem").as_path())
    );
    assert_eq!(tls.server_name.as_deref(), Some("app.internal"));
    let hc = app.health_check.as_ref().unwrap();
    assert_eq!(hc.protocol, HealthProtocol::Http);
    assert_eq!(
        (hc.interval, hc.timeout),
        (Duration::from_secs(5), Duration::from_secs(2))
    );
    assert!(hc.matcher.matches(302) && !hc.matcher.matches(500));
}

#[test]
fn design_example_with_http_protocols_is_refused_for_its_tls_tables() {
    let dir = design_dir();
    let text = DESIGN
        .replace(
            "protocol = \"https\"       #",
            "protocol = \"http\"        #",
        )
        .replace(
            "protocol = \"https\"             #",
            "protocol = \"http\"              #",
        );
    let path = dir.write("ringlb.toml", &text);
    let errs = Config::load(&path).unwrap_err();
    assert_eq!(errs.0.len(), 2, "{errs}");
    assert_eq!(errs.0[0].line, line_of(&text, "[listener.tls]"));
    assert!(
        errs.0[0]
            .message
            .contains("listener 'web': tls: only https listeners"),
        "{errs}"
    );
    assert_eq!(errs.0[1].line, line_of(&text, "[target_group.tls]"));
    assert!(
        errs.0[1]
            .message
            .contains("target_group 'app': tls: only https target groups"),
        "{errs}"
    );
}

#[test]
fn missing_certificate_files_are_named_with_their_line() {
    let dir = TempDir::new("missing-cert");
    dir.write("site.crt", "x");
    let text = DESIGN.replace("\"backend-ca.pem\"", "\"/nonexistent/ca.pem\"");
    let path = dir.write("ringlb.toml", &text);
    let errs = Config::load(&path).unwrap_err();
    let shown = errs.to_string();
    assert_eq!(errs.0.len(), 2, "{shown}");
    let key_line = line_of(&text, "certificates = [");
    assert_eq!(errs.0[0].line, key_line);
    assert!(
        errs.0[0]
            .message
            .starts_with("listener 'web': tls: certificates[0]: key: cannot read"),
        "{shown}"
    );
    assert!(
        errs.0[0]
            .message
            .contains(&dir.0.join("site.key").display().to_string()),
        "{shown}"
    );
    assert_eq!(errs.0[1].line, line_of(&text, "ca_file"));
    assert!(
        errs.0[1]
            .message
            .contains("ca_file: cannot read \"/nonexistent/ca.pem\""),
        "{shown}"
    );
    assert!(
        shown.starts_with(&format!("{}:{key_line}:", path.display())),
        "{shown}"
    );
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = TempDir::new("relative");
    std::fs::create_dir_all(dir.0.join("certs")).unwrap();
    let (cert, key) = pem_pair();
    dir.write("certs/a.crt", &cert);
    let abs_key = dir.write("a.key", &key);
    let text = format!(
        "[[listener]]\nname = \"s\"\nbind = \"127.0.0.1:8443\"\nprotocol = \"https\"\ntarget_group = \"g\"\n\
         access_log = \"logs/s.log\"\n\
         [listener.tls]\ncertificates = [{{ cert = \"certs/a.crt\", key = \"{}\" }}]\n\
         [[target_group]]\nname = \"g\"\ntargets = [\"127.0.0.1:1\"]\n",
        abs_key.display()
    );
    let path = dir.write("lb.toml", &text);
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let cert = &c.listeners[0].tls.as_ref().unwrap().certificates[0];
    assert_eq!(cert.cert, dir.0.join("certs/a.crt"));
    assert_eq!(cert.key, abs_key);
    assert_eq!(
        c.listeners[0].access_log.as_deref().map(Path::new),
        Some(dir.0.join("logs/s.log").as_path())
    );
    // The same text parsed as if it lived elsewhere no longer finds the relative file.
    let errs = Config::parse(&text, Path::new("/nonexistent/lb.toml")).unwrap_err();
    assert!(
        errs.to_string().contains("/nonexistent/certs/a.crt"),
        "{errs}"
    );
}

#[test]
fn unreadable_config_files_give_one_clear_error() {
    let dir = TempDir::new("unreadable");
    let missing = dir.0.join("nope.toml");
    let errs = Config::load(&missing).unwrap_err();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].line, 0);
    assert!(
        errs.to_string()
            .starts_with(&format!("{}: cannot open config file", missing.display())),
        "{errs}"
    );

    let bin = dir.0.join("bin.toml");
    std::fs::write(&bin, b"name = \"\xff\xfe\"\n").unwrap();
    let errs = Config::load(&bin).unwrap_err();
    assert!(
        errs.to_string()
            .contains("not valid UTF-8 (first bad byte at offset 8)"),
        "{errs}"
    );

    let errs = Config::load(&dir.0).unwrap_err();
    assert!(
        errs.to_string().contains("cannot read config file"),
        "{errs}"
    );
}

#[test]
fn example_file_loads_from_disk() {
    let dir = TempDir::new("example");
    let path = dir.write("ringlb.toml", ringlb::config::example());
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.target_groups.len(), 3);
}

/// A real self-signed certificate and its key, as PEM (certificate files are checked at load).
fn pem_pair() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["site.example".to_string()]).unwrap();
    (c.cert.pem(), c.key_pair.serialize_pem())
}

//! `scenario FILE.toml`: starts the backends and subjects a TOML file describes (pinned with
//! taskset), runs the load matrix in-process (connections × keep-alive/close × http/https ×
//! subjects, subjects alternating within each round, rounds repeated), samples each subject's CPU
//! from /proc, and writes per-run JSON, `report.md` and `latency.svg` into the output folder.
//! Runs on the main thread, which owns every child process (`procs::Proc`, stopped on drop).

mod procs;
mod rates;
mod summary;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::client::Target;
use crate::load::{self, Edge, LoadOpts};
use crate::procstat::Cpu;
use crate::report::{self, RunJson};
use procs::Proc;

/// Most runs one scenario may ask for (rounds × cells × subjects).
const MAX_RUNS: usize = 10_000;
/// Pause between runs so sockets in TIME_WAIT and queues settle.
const BETWEEN_RUNS: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {why}")]
    Spec { file: String, why: String },
    #[error(transparent)]
    Proc(#[from] procs::ProcError),
    #[error("backend {0}")]
    Backend(String),
    #[error("load for {run} failed: {err}")]
    Load { run: String, err: load::LoadError },
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Svg(#[from] crate::svg::SvgError),
    #[error("cannot write {path}: {err}")]
    Write { path: String, err: std::io::Error },
}

/// The template variables of `Spec::defer_accept`, with their text when it is on.
pub const DEFER_ACCEPT_VARS: [(&str, &str); 3] = [
    ("ringlb_defer_accept", "defer_accept = true"),
    ("haproxy_defer_accept", " defer-accept"),
    ("nginx_defer_accept", " deferred"),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    #[serde(default = "default_duration")]
    pub duration: String,
    #[serde(default = "default_warmup")]
    pub warmup: String,
    #[serde(default = "one")]
    pub rounds: u32,
    pub connections: Vec<usize>,
    #[serde(default = "default_modes")]
    pub modes: Vec<Mode>,
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Proto>,
    /// Load threads.
    #[serde(default = "one_usize")]
    pub threads: usize,
    /// https runs: no TLS session resumption, so "close" runs are full handshakes.
    #[serde(default)]
    pub no_resume: bool,
    /// Every subject defers accept (TCP_DEFER_ACCEPT) until the client's first bytes arrive:
    /// config templates take it from `{{ringlb_defer_accept}}` (a `defer_accept = true` line),
    /// `{{haproxy_defer_accept}}` (` defer-accept` after a bind) and `{{nginx_defer_accept}}`
    /// (` deferred` in a listen); all three are empty when off.
    #[serde(default)]
    pub defer_accept: bool,
    /// Open-loop cells at these offered request rates, per mode (`[rates]`; see `rates.rs`).
    #[serde(default)]
    pub rates: rates::Rates,
    /// Subject i listens on base_port + 2i (http) and base_port + 2i + 1 (https).
    #[serde(default = "default_base_port")]
    pub base_port: u16,
    #[serde(default)]
    pub cpus: Cpus,
    /// Certificate and key (relative to the scenario file); generated with openssl if absent.
    pub cert: Option<String>,
    pub key: Option<String>,
    #[serde(rename = "backend")]
    pub backends: Vec<BackendSpec>,
    #[serde(rename = "subject")]
    pub subjects: Vec<SubjectSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpus {
    pub subjects: Option<String>,
    pub backends: Option<String>,
    pub load: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    pub bind: String,
    #[serde(default = "default_body")]
    pub body_bytes: usize,
    #[serde(default = "one_usize")]
    pub workers: usize,
    pub cpus: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectSpec {
    pub name: String,
    pub kind: Kind,
    /// Config (ringlb) or config template (haproxy/nginx), relative to the scenario file.
    pub config: Option<String>,
    /// Whether the subject also serves https on its https port.
    #[serde(default)]
    pub tls: bool,
    pub cpus: Option<String>,
    /// ringlb subjects: another ringlb build to run (relative to the scenario file), for
    /// build-vs-build comparisons in one run; default `$RINGLB_BIN` or the one next to this binary.
    pub binary: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ringlb,
    Haproxy,
    Nginx,
    Direct,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Keepalive,
    Close,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Http,
    Https,
}

fn default_duration() -> String {
    "5s".into()
}
fn default_warmup() -> String {
    "1s".into()
}
fn one() -> u32 {
    1
}
fn one_usize() -> usize {
    1
}
fn default_body() -> usize {
    12
}
fn default_base_port() -> u16 {
    18080
}
fn default_modes() -> Vec<Mode> {
    vec![Mode::Keepalive]
}
fn default_protocols() -> Vec<Proto> {
    vec![Proto::Http]
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub conns: usize,
    pub mode: Mode,
    pub proto: Proto,
    /// Offered requests/s in total (open loop); `None`: closed loop.
    pub rate: Option<u64>,
}

impl Cell {
    pub fn label(&self) -> String {
        let m = match self.mode {
            Mode::Keepalive => "keepalive",
            Mode::Close => "close",
        };
        let p = match self.proto {
            Proto::Http => "http",
            Proto::Https => "https",
        };
        match self.rate {
            None => format!("{p} {m} c{}", self.conns),
            Some(r) => format!("{p} {m} c{} {r}rps", self.conns),
        }
    }
}

/// A subject that is up (or direct), with where to send load.
struct Running {
    name: String,
    kind: Kind,
    /// ringlb's worker count (from its config, or its CPUs when the config says one per CPU).
    workers: Option<usize>,
    config: String,
    proc: Option<Proc>,
    http: SocketAddr,
    https: Option<SocketAddr>,
}

/// Parses and checks a scenario file.
pub fn parse(file: &Path, text: &str) -> Result<Spec, ScenarioError> {
    let spec_err = |why: String| ScenarioError::Spec {
        file: file.display().to_string(),
        why,
    };
    let spec: Spec = toml::from_str(text).map_err(|e| spec_err(e.to_string()))?;
    for (what, v) in [("duration", &spec.duration), ("warmup", &spec.warmup)] {
        crate::parse_duration(v).map_err(|e| spec_err(format!("{what}: {e}")))?;
    }
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(spec_err(
            "name must be non-empty letters, digits, '-', '_' or '.'".into(),
        ));
    }
    if spec.backends.is_empty() {
        return Err(spec_err("at least one [[backend]] is needed".into()));
    }
    if spec.subjects.is_empty() {
        return Err(spec_err("at least one [[subject]] is needed".into()));
    }
    if spec.connections.is_empty() || spec.connections.contains(&0) || spec.rounds == 0 {
        return Err(spec_err(
            "connections must list positive numbers and rounds must be ≥ 1".into(),
        ));
    }
    // A repeated entry would make two cells of one label: their runs' files would overwrite
    // each other and their medians count every run twice.
    fn repeated<T: PartialEq>(list: &[T]) -> bool {
        list.iter().enumerate().any(|(i, x)| list[..i].contains(x))
    }
    for (what, dup) in [
        ("connections", repeated(&spec.connections)),
        ("modes", repeated(&spec.modes)),
        ("protocols", repeated(&spec.protocols)),
    ] {
        if dup {
            return Err(spec_err(format!("{what} lists an entry twice")));
        }
    }
    spec.rates.check(&spec.modes).map_err(spec_err)?;
    let loads: usize = spec
        .modes
        .iter()
        .map(|&m| spec.rates.for_mode(m).len())
        .sum();
    let runs = spec.rounds as usize
        * spec.connections.len()
        * loads
        * spec.protocols.len()
        * spec.subjects.len();
    if runs > MAX_RUNS {
        return Err(spec_err(format!(
            "{runs} runs is more than the limit of {MAX_RUNS}"
        )));
    }
    for b in &spec.backends {
        b.bind
            .parse::<SocketAddr>()
            .map_err(|_| spec_err(format!("backend bind '{}' is not IP:PORT", b.bind)))?;
    }
    let mut names = std::collections::HashSet::new();
    for s in &spec.subjects {
        if !names.insert(&s.name) || s.name.is_empty() {
            return Err(spec_err(format!(
                "subject name '{}' is empty or repeated",
                s.name
            )));
        }
        if s.kind != Kind::Direct && s.config.is_none() {
            return Err(spec_err(format!(
                "subject '{}' needs a config file",
                s.name
            )));
        }
    }
    for c in [&spec.cpus.subjects, &spec.cpus.backends, &spec.cpus.load]
        .into_iter()
        .chain(spec.subjects.iter().map(|s| &s.cpus))
        .chain(spec.backends.iter().map(|b| &b.cpus))
        .flatten()
    {
        crate::parse_cpus(c).map_err(spec_err)?;
    }
    Ok(spec)
}

/// Runs the scenario in `file`; returns the output folder.
pub fn run(file: &Path, out: Option<&Path>) -> Result<PathBuf, ScenarioError> {
    let text = std::fs::read_to_string(file).map_err(|e| ScenarioError::Spec {
        file: file.display().to_string(),
        why: format!("cannot read it: {e}"),
    })?;
    let spec = parse(file, &text)?;
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new("bench-out").join(&spec.name));
    std::fs::create_dir_all(&out).map_err(|err| ScenarioError::Write {
        path: out.display().to_string(),
        err,
    })?;
    let out = out.canonicalize().map_err(|err| ScenarioError::Write {
        path: out.display().to_string(),
        err,
    })?;
    let mut notes = Vec::new();

    // Certificates, when any https cell will run.
    let wants_tls = spec.protocols.contains(&Proto::Https) && spec.subjects.iter().any(|s| s.tls);
    let (cert, key, pem) = match (&spec.cert, &spec.key) {
        (Some(c), Some(k)) => {
            let (c, k) = (base.join(c), base.join(k));
            let both = out.join("cert+key.pem");
            procs::combine_pem(&c, &k, &both)?;
            (c, k, both)
        }
        _ if wants_tls => procs::make_cert(&out)?,
        _ => Default::default(),
    };

    // Backends.
    let exe = std::env::current_exe().map_err(|e| ScenarioError::Backend(e.to_string()))?;
    let mut backends = Vec::new();
    for (i, b) in spec.backends.iter().enumerate() {
        let addr: SocketAddr = b
            .bind
            .parse()
            .map_err(|_| ScenarioError::Backend(b.bind.clone()))?;
        let args = vec![
            "backend".into(),
            "--bind".into(),
            b.bind.clone(),
            "--body-bytes".into(),
            b.body_bytes.to_string(),
            "--workers".into(),
            b.workers.to_string(),
        ];
        let cpus = b.cpus.as_deref().or(spec.cpus.backends.as_deref());
        let name = format!("backend{}", i + 1);
        procs::ensure_free(&name, addr)?;
        let mut p = Proc::start(&name, &exe, &args, cpus, out.join(format!("{name}.log")))?;
        p.wait_listening(addr)?;
        backends.push((addr, p));
    }
    let backend_addr = |i: usize| {
        backends
            .get(i)
            .or(backends.first())
            .map(|(a, _)| a.to_string())
            .unwrap_or_default()
    };

    // Subjects.
    let mut running = Vec::new();
    for (i, s) in spec.subjects.iter().enumerate() {
        let http_port = spec.base_port.saturating_add((2 * i) as u16);
        let tls_port = http_port.saturating_add(1);
        let mut vars = BTreeMap::new();
        vars.insert("listen_port", http_port.to_string());
        vars.insert("tls_port", tls_port.to_string());
        for (var, on) in DEFER_ACCEPT_VARS {
            let text = if spec.defer_accept { on } else { "" };
            vars.insert(var, text.to_string());
        }
        vars.insert("backend1", backend_addr(0));
        vars.insert("backend2", backend_addr(1));
        vars.insert("cert", cert.display().to_string());
        vars.insert("key", key.display().to_string());
        vars.insert("pem", pem.display().to_string());
        vars.insert("dir", out.display().to_string());
        vars.insert(
            "pidfile",
            out.join(format!("{}.pid", s.name)).display().to_string(),
        );
        match start_subject(s, &base, &out, &vars, &spec) {
            Ok(r) => running.push(r),
            Err(note) => {
                eprintln!("note: {note}");
                notes.push(note);
            }
        }
    }

    // The matrix.
    let duration = crate::parse_duration(&spec.duration).map_err(|why| ScenarioError::Spec {
        file: file.display().to_string(),
        why,
    })?;
    let warmup = crate::parse_duration(&spec.warmup).unwrap_or(Duration::from_secs(1));
    let load_cpus = spec
        .cpus
        .load
        .as_deref()
        .and_then(|c| crate::parse_cpus(c).ok());
    let mut cells = Vec::new();
    for &proto in &spec.protocols {
        for &mode in &spec.modes {
            for &conns in &spec.connections {
                for rate in spec.rates.for_mode(mode) {
                    cells.push(Cell {
                        conns,
                        mode,
                        proto,
                        rate,
                    });
                }
            }
        }
    }
    let mut results: Vec<summary::RunRecord> = Vec::new();
    for round in 1..=spec.rounds {
        for cell in &cells {
            // Alternate subjects within the round, rotating who goes first each round.
            let n = running.len();
            for k in 0..n {
                let subj = &running[(k + round as usize - 1) % n];
                let addr = match cell.proto {
                    Proto::Http => subj.http,
                    Proto::Https => match subj.https {
                        Some(a) => a,
                        None => continue,
                    },
                };
                let scheme = if cell.proto == Proto::Https {
                    "https"
                } else {
                    "http"
                };
                let url = format!("{scheme}://{addr}/");
                let run_name = format!("{} {} round {round}", subj.name, cell.label());
                println!("run: {run_name}");
                let target =
                    Target::parse(&url).map_err(|e| ScenarioError::Backend(e.to_string()))?;
                let opts = LoadOpts {
                    target,
                    connections: cell.conns,
                    duration,
                    threads: spec.threads,
                    rate: cell.rate.map(|r| r as f64),
                    close: cell.mode == Mode::Close,
                    insecure: true,
                    no_resume: spec.no_resume,
                    headers: Vec::new(),
                    warmup,
                    timeout: Duration::from_secs(5),
                    cpus: load_cpus.clone(),
                    progress: false,
                    http2: false,
                    streams: 1,
                };
                let pid = subj.proc.as_ref().map(Proc::pid);
                let mut cpu = (None, None);
                let res = load::run(&opts, &mut |edge| {
                    let now = pid.and_then(crate::procstat::tree_cpu);
                    match edge {
                        Edge::WindowStart => cpu.0 = now,
                        Edge::WindowEnd => cpu.1 = now,
                    }
                })
                .map_err(|err| ScenarioError::Load {
                    run: run_name.clone(),
                    err,
                })?;
                print!("{}", report::summary(&res));
                let mut j = RunJson::from_result(&res);
                j.subject = Some(subj.name.clone());
                j.config = Some(subj.config.clone());
                j.round = Some(round);
                j.cell = Some(cell.label());
                let per_req = match cpu {
                    (Some(a), Some(b)) => Cpu::per_request(a, b, res.requests),
                    _ => None,
                };
                j.subject_cpu_us_per_req = Some(per_req.map(|(whole, _)| whole));
                j.subject_sys_us_per_req = Some(per_req.map(|(_, sys)| sys));
                let fname = format!(
                    "{}_{}_r{round}.json",
                    subj.name,
                    cell.label().replace(' ', "_")
                );
                report::write_json(&out.join(&fname), &j)?;
                results.push(summary::RunRecord {
                    subject: subj.name.clone(),
                    kind: subj.kind,
                    workers: subj.workers,
                    cell: *cell,
                    json: j,
                    hist: res.hist,
                });
                std::thread::sleep(BETWEEN_RUNS);
            }
        }
    }
    for c in &cells {
        if c.proto == Proto::Https {
            for s in running.iter().filter(|s| s.https.is_none()) {
                let note = format!(
                    "{}: skipped in https cells (no TLS listener: set tls = true)",
                    s.name
                );
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
        }
    }
    drop(running);
    drop(backends);
    summary::write_report(&out, &spec, &cells, &results, &notes)?;
    Ok(out)
}

/// Starts one subject (or resolves "direct"); `Err` is a note for the report (subject skipped).
fn start_subject(
    s: &SubjectSpec,
    base: &Path,
    out: &Path,
    vars: &BTreeMap<&str, String>,
    spec: &Spec,
) -> Result<Running, String> {
    let port = |k: &str| vars.get(k).and_then(|v| v.parse::<u16>().ok()).unwrap_or(0);
    let http: SocketAddr = ([127, 0, 0, 1], port("listen_port")).into();
    let https: SocketAddr = ([127, 0, 0, 1], port("tls_port")).into();
    if s.kind == Kind::Direct {
        let b = vars
            .get("backend1")
            .and_then(|v| v.parse().ok())
            .ok_or("no backend")?;
        return Ok(Running {
            name: s.name.clone(),
            kind: s.kind,
            workers: None,
            config: "direct".into(),
            proc: None,
            http: b,
            https: None,
        });
    }
    let cfg_rel = s.config.as_deref().unwrap_or_default();
    let cfg_path = base.join(cfg_rel);
    let template = std::fs::read_to_string(&cfg_path)
        .map_err(|e| format!("{}: cannot read config {}: {e}", s.name, cfg_path.display()))?;
    if spec.defer_accept {
        // A template without its placeholder would run this subject without deferral while
        // the report says every subject deferred.
        let var = match s.kind {
            Kind::Ringlb => DEFER_ACCEPT_VARS[0].0,
            Kind::Haproxy => DEFER_ACCEPT_VARS[1].0,
            _ => DEFER_ACCEPT_VARS[2].0,
        };
        if !procs::uses(&template, var) {
            return Err(format!(
                "{}: the scenario sets defer_accept = true, but config {} has no {{{{{var}}}}}; add it where the listening address is",
                s.name,
                cfg_path.display()
            ));
        }
    }
    let rendered = procs::render(&template, vars)
        .map_err(|e| format!("{}: config {}: {e}", s.name, cfg_path.display()))?;
    let ext = cfg_path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("conf");
    let cfg_out = out.join(format!("{}.{ext}", s.name));
    std::fs::write(&cfg_out, &rendered)
        .map_err(|e| format!("{}: cannot write {}: {e}", s.name, cfg_out.display()))?;
    let cfg = cfg_out.display().to_string();
    let (prog, args): (Option<PathBuf>, Vec<String>) = match s.kind {
        Kind::Ringlb => (
            match &s.binary {
                Some(b) => Some(base.join(b)).filter(|p| p.is_file()),
                None => ringlb_bin(),
            },
            vec!["run".into(), "--config".into(), cfg.clone()],
        ),
        Kind::Haproxy => (
            procs::which("haproxy"),
            vec!["-f".into(), cfg.clone(), "-db".into()],
        ),
        Kind::Nginx => (
            procs::which("nginx"),
            vec![
                "-e".into(),
                "stderr".into(),
                "-c".into(),
                cfg.clone(),
                "-g".into(),
                "daemon off;".into(),
            ],
        ),
        Kind::Direct => unreachable!("handled above"),
    };
    let prog =
        prog.ok_or_else(|| format!("{}: {:?} binary not installed, skipped", s.name, s.kind))?;
    let cpus = s.cpus.as_deref().or(spec.cpus.subjects.as_deref());
    let workers = match s.kind {
        Kind::Ringlb => ringlb_workers(&rendered, cpus),
        _ => None,
    };
    for addr in [
        Some(http),
        (s.tls && spec.protocols.contains(&Proto::Https)).then_some(https),
    ]
    .into_iter()
    .flatten()
    {
        procs::ensure_free(&s.name, addr).map_err(|e| format!("{}: skipped: {e}", s.name))?;
    }
    let mut p = Proc::start(
        &s.name,
        &prog,
        &args,
        cpus,
        out.join(format!("{}.log", s.name)),
    )
    .map_err(|e| format!("{}: {e}", s.name))?;
    p.wait_listening(http)
        .map_err(|e| format!("{}: skipped: {e}", s.name))?;
    let https = if s.tls && spec.protocols.contains(&Proto::Https) {
        p.wait_listening(https)
            .map_err(|e| format!("{}: skipped: {e}", s.name))?;
        Some(https)
    } else {
        None
    };
    Ok(Running {
        name: s.name.clone(),
        kind: s.kind,
        workers,
        config: cfg_rel.to_string(),
        proc: Some(p),
        http,
        https,
    })
}

/// The worker count of a ringlb config: `runtime.workers`, or with 0 (one per CPU) the number
/// of CPUs the subject is pinned to; None when neither says.
fn ringlb_workers(config: &str, cpus: Option<&str>) -> Option<usize> {
    #[derive(Deserialize)]
    struct Top {
        runtime: Option<Runtime>,
    }
    #[derive(Deserialize)]
    struct Runtime {
        workers: Option<usize>,
    }
    let top: Top = toml::from_str(config).ok()?;
    match top.runtime.and_then(|r| r.workers).unwrap_or(0) {
        0 => cpus
            .and_then(|c| crate::parse_cpus(c).ok())
            .map(|c| c.len()),
        n => Some(n),
    }
}

/// The ringlb binary: $RINGLB_BIN, else `ringlb` next to this executable.
fn ringlb_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RINGLB_BIN") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let p = std::env::current_exe().ok()?.parent()?.join("ringlb");
    p.is_file().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peers' templates as `defer_accept` renders them, on and off.
    fn rendered(file: &str, defer: bool) -> String {
        rendered_with(file, defer, Path::new("/tmp/x"))
    }

    /// As [`rendered`], with the certificate, key and scratch files under `files`.
    fn rendered_with(file: &str, defer: bool, files: &Path) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("bench")
            .join(file);
        let template = std::fs::read_to_string(&path).expect("template");
        let mut vars = BTreeMap::new();
        vars.insert("listen_port", "18080".to_string());
        vars.insert("tls_port", "18443".to_string());
        vars.insert("backend1", "127.0.0.1:19001".to_string());
        vars.insert("backend2", "127.0.0.1:19002".to_string());
        for (k, name) in [
            ("cert", "cert.pem"),
            ("key", "key.pem"),
            ("pem", "both.pem"),
            ("pidfile", "pid"),
        ] {
            vars.insert(k, files.join(name).display().to_string());
        }
        vars.insert("dir", files.display().to_string());
        for (var, on) in DEFER_ACCEPT_VARS {
            vars.insert(var, if defer { on } else { "" }.to_string());
        }
        procs::render(&template, &vars).expect("renders")
    }

    /// Every scenario the repository ships parses, and every ringlb subject's template renders
    /// into a config ringlb accepts; where a subject is given CPUs, it has one per worker (a
    /// scaling run whose workers shared a CPU would measure the sharing).
    #[test]
    fn every_shipped_scenario_parses_and_its_ringlb_configs_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scenarios");
        let files = std::env::temp_dir().join(format!("ringlb-scenarios-{}", std::process::id()));
        std::fs::create_dir_all(&files).expect("scratch dir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        std::fs::write(files.join("cert.pem"), cert.cert.pem()).expect("cert.pem");
        std::fs::write(files.join("key.pem"), cert.key_pair.serialize_pem()).expect("key.pem");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("bench/scenarios") {
            let path = entry.expect("entry").path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("scenario");
            let spec = parse(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for s in spec.subjects.iter().filter(|s| s.kind == Kind::Ringlb) {
                let rel = format!("scenarios/{}", s.config.as_deref().expect("config"));
                let text = rendered_with(&rel, spec.defer_accept, &files);
                ringlb::config::Config::parse(&text, Path::new(&rel))
                    .unwrap_or_else(|e| panic!("{}: subject {}: {e}", path.display(), s.name));
                if let Some(cpus) = &s.cpus {
                    let n = crate::parse_cpus(cpus).expect("cpus").len();
                    assert_eq!(
                        ringlb_workers(&text, Some(cpus)),
                        Some(n),
                        "{}: subject {} does not have one worker per CPU of {cpus}",
                        path.display(),
                        s.name
                    );
                }
            }
            seen += 1;
        }
        let _ = std::fs::remove_dir_all(&files);
        assert!(
            seen >= 12,
            "only {seen} scenarios found in {}",
            dir.display()
        );
        let scaling = std::fs::read_to_string(dir.join("scaling.toml")).expect("scaling.toml");
        let spec = parse(&dir.join("scaling.toml"), &scaling).expect("scaling parses");
        let names: Vec<&str> = spec.subjects.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["ringlb-1w", "ringlb-2w", "ringlb-4w", "ringlb-8w", "direct"]
        );
    }

    #[test]
    fn defer_accept_reaches_every_peers_listening_socket_and_only_when_asked() {
        let ringlb = |defer| {
            let text = rendered("scenarios/configs/round_robin.toml", defer);
            ringlb::config::Config::parse(&text, Path::new("round_robin.toml"))
                .expect("a valid ringlb config")
                .listeners[0]
                .defer_accept
        };
        assert!(ringlb(true));
        assert!(!ringlb(false));
        let haproxy = rendered("peers/haproxy.cfg", true);
        assert!(
            haproxy.contains("bind 127.0.0.1:18080 defer-accept\n"),
            "{haproxy}"
        );
        assert!(!rendered("peers/haproxy.cfg", false).contains("defer-accept"));
        let nginx = rendered("peers/nginx.conf", true);
        assert!(
            nginx.contains("listen 127.0.0.1:18080 deferred;"),
            "{nginx}"
        );
        assert!(!rendered("peers/nginx.conf", false).contains("deferred"));
    }
}

//! `ringlb-bench`: the load generator, demo backend, result comparison and scenario runner.
//! Runs on the main thread: parses the CLI (clap) and dispatches to a subcommand; each subcommand
//! owns the threads it starts. Exit codes: 0 success, 1 the run completed but requests failed (or a
//! subcommand failed at run time), 2 bad usage (unparsable URL, bad flag value, unreadable file).

mod backend;
mod client;
mod compare;
mod h2load;
mod h2origin;
mod http;
mod io;
mod load;
mod procstat;
mod report;
mod scenario;
mod svg;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code when the run completed but some requests failed.
const EXIT_ERRORS: u8 = 1;
/// Exit code for bad usage: unparsable URL, bad flag value, unreadable input file.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "ringlb-bench",
    version,
    about = "Load benchmark for ringlb (and any HTTP server)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send HTTP/1.1 (or, with --http2, HTTP/2) load to URL and report throughput and latency.
    Load(LoadArgs),
    /// Serve a fixed response, fast (the origin for benchmarks and tests).
    Backend(BackendArgs),
    /// Compare result JSON files side by side (markdown table, optional SVG plot).
    Compare(CompareArgs),
    /// Run a benchmark scenario described by a TOML file.
    Scenario(ScenarioArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Target, e.g. http://127.0.0.1:8080/ or https://host:8443/path
    url: String,
    /// Connections in total, spread over the threads.
    #[arg(short = 'c', long = "connections", default_value_t = 10)]
    connections: usize,
    /// Measured duration, e.g. 10s, 500ms, 1m.
    #[arg(short = 'd', long = "duration", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Client threads, each pinned to one CPU.
    #[arg(short = 't', long = "threads", default_value_t = 1)]
    threads: usize,
    /// Open loop: requests per second in total (latency counted from the intended send time).
    #[arg(long)]
    rate: Option<f64>,
    /// Open a new TCP (and TLS) connection per request.
    #[arg(long)]
    close: bool,
    /// Accept any server certificate (https).
    #[arg(long)]
    insecure: bool,
    /// https: never resume TLS sessions, so `--close` measures full handshakes.
    #[arg(long = "no-resume")]
    no_resume: bool,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Write the result as JSON to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency percentile distribution (.hgrm, ms) to FILE.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Warm-up before the measured window, excluded from the results.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Per-request timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// CPUs to pin the threads to, e.g. 1,2 or 2-3 (default: the i-th allowed CPU).
    #[arg(long, value_parser = parse_cpu_list)]
    cpus: Option<CpuList>,
    /// Speak HTTP/2: ALPN h2 over TLS for https://, h2c with prior knowledge for http://.
    /// Not with --close; --rate schedules each stream.
    #[arg(long)]
    http2: bool,
    /// With --http2: concurrent streams per connection, each a closed loop (like h2load -m).
    #[arg(short = 'm', long, default_value_t = 1)]
    streams: usize,
}

/// A `--cpus` value (a newtype so clap takes it as one value, not many).
#[derive(Clone, Debug)]
struct CpuList(Vec<usize>);

fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    parse_cpus(s).map(CpuList)
}

#[derive(clap::Args)]
struct BackendArgs {
    /// Address to listen on, e.g. 127.0.0.1:9001 (port 0: pick one; printed as `listening on ADDR`).
    #[arg(long)]
    bind: String,
    /// Response body size in bytes ("hello world\n" repeated/truncated).
    #[arg(long, default_value_t = 12)]
    body_bytes: usize,
    /// Worker threads, each pinned with its own SO_REUSEPORT listener.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Delay before each response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// CPUs to pin the workers to (default: the i-th allowed CPU).
    #[arg(long, value_parser = parse_cpu_list)]
    cpus: Option<CpuList>,
    /// Serve HTTP/2 with prior knowledge (h2c) instead of HTTP/1.x: gRPC POSTs
    /// (content-type application/grpc) get their message echoed and grpc-status 0 trailers,
    /// other requests 200 with the --body-bytes body.
    #[arg(long)]
    h2: bool,
    /// With --h2: SETTINGS_MAX_CONCURRENT_STREAMS advertised per connection.
    #[arg(
        long,
        default_value_t = 1024,
        requires = "h2",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_streams: u32,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Result JSON files written by `load --json` or a scenario; the first is the baseline.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// Write a percentile-spectrum plot to FILE.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ScenarioArgs {
    /// Scenario description (see bench/scenarios/*.toml).
    file: PathBuf,
    /// Output folder (default: bench-out/<scenario name>).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Load(a) => cmd_load(a),
        Cmd::Backend(a) => cmd_backend(a),
        Cmd::Compare(a) => match compare::run(&a.results, a.svg.as_deref()) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_USAGE, &e),
        },
        Cmd::Scenario(a) => match scenario::run(&a.file, a.out.as_deref()) {
            Ok(out) => {
                println!("scenario done: results in {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e @ scenario::ScenarioError::Spec { .. }) => fail(EXIT_USAGE, &e),
            Err(e) => fail(EXIT_ERRORS, &e),
        },
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ringlb-bench: {e}");
    ExitCode::from(code)
}

fn cmd_load(a: LoadArgs) -> ExitCode {
    let target = match client::Target::parse(&a.url) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    let mut headers = Vec::with_capacity(a.headers.len());
    for h in &a.headers {
        match client::parse_header(h) {
            Ok(kv) => headers.push(kv),
            Err(e) => return fail(EXIT_USAGE, &e),
        }
    }
    let opts = load::LoadOpts {
        target,
        connections: a.connections,
        duration: a.duration,
        threads: a.threads,
        rate: a.rate,
        close: a.close,
        insecure: a.insecure,
        no_resume: a.no_resume,
        headers,
        warmup: a.warmup,
        timeout: a.timeout,
        cpus: a.cpus.map(|c| c.0),
        progress: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        http2: a.http2,
        streams: a.streams,
    };
    let result = match load::run(&opts, &mut |_| {}) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_USAGE, &e),
    };
    print!("{}", report::summary(&result));
    let json = report::RunJson::from_result(&result);
    if let Some(path) = &a.json {
        if let Err(e) = report::write_json(path, &json) {
            return fail(EXIT_ERRORS, &e);
        }
    }
    if let Some(path) = &a.hgrm {
        if let Err(e) = std::fs::write(path, report::hgrm(&result.hist)) {
            return fail(
                EXIT_ERRORS,
                &format!("cannot write {}: {e}", path.display()),
            );
        }
    }
    if result.errors.total() > 0 {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    }
}

fn cmd_backend(a: BackendArgs) -> ExitCode {
    let opts = backend::BackendOpts {
        bind: a.bind,
        body_bytes: a.body_bytes,
        workers: a.workers,
        delay: Duration::from_millis(a.delay_ms),
        cpus: a.cpus.map(|c| c.0),
        h2: a.h2,
        max_streams: a.max_streams,
    };
    match backend::run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ backend::BackendError::BadBind { .. }) => fail(EXIT_USAGE, &e),
        Err(e) => fail(EXIT_ERRORS, &e),
    }
}

/// Parses "10s", "250ms", "1m", "1.5s", "2us" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration '{s}': expected e.g. 10s, 250ms, 1m"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => {
            return Err(format!(
                "bad duration unit '{u}' in '{s}': use us, ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration '{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a CPU list such as "1,2" or "0-3" or "1,4-5".
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list '{s}': expected e.g. 1,2 or 0-3");
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if b < a || b - a > 4096 {
                return Err(bad());
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().map_err(|_| bad())?);
        }
    }
    if out.is_empty() {
        return Err(format!("empty CPU list '{s}'"));
    }
    Ok(out)
}

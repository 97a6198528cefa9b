//! End-to-end tests of `ringlb-bench`: the built-in backend, `load` (keep-alive, close, rate,
//! JSON/hgrm output, bad URL, unreachable target, HTTP/2 over h2c and TLS against an in-process
//! `h2` server), `compare` and a small "direct" scenario.
//! Real sockets on 127.0.0.1 with ephemeral ports; every run is bounded in time. In-process
//! servers run on background threads and live until the test process exits.

#[path = "common/testdir.rs"]
mod testdir;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::Value;

/// `load --http2` against an in-process `h2` server (tests/bench/http2.rs).
#[path = "bench/http2.rs"]
mod http2;

const BIN: &str = env!("CARGO_BIN_EXE_ringlb-bench");

/// A backend child process, killed on drop.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start(extra: &[&str]) -> Backend {
        let mut child = Command::new(BIN)
            .args(["backend", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Backend { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = crate::testdir::test_path(&format!("bench-test-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run ringlb-bench")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("json file")).expect("valid json")
}

fn decode(b64: &str) -> Histogram<u64> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .expect("V2 histogram")
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("field {k} missing in {v}"))
}

#[test]
fn a_second_backend_on_a_taken_port_refuses_to_start_and_names_the_holder() {
    // A backend left over from an earlier run still holds the port: a new one must not join its
    // SO_REUSEPORT group (the load would be split between them without a word).
    let first = Backend::start(&[]);
    let bind = first.addr.to_string();
    let mut second = Command::new(BIN)
        .args(["backend", "--bind", &bind])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start second backend");
    // Generous: on a loaded host the refusal may take a while, and a backend that started
    // instead would run until killed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = second.try_wait().expect("wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second backend started and kept running on a taken port");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the second backend exited with success");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    let holder = format!("pid {} (", first.child.id());
    assert!(
        err.contains("already in use by") && err.contains(&holder),
        "stderr names the holder: {err}"
    );
    // The first one still serves, alone.
    let mut s = std::net::TcpStream::connect(first.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::io::Write::write_all(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).expect("read");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn load_keepalive_writes_consistent_json_and_hgrm() {
    let be = Backend::start(&[]);
    let dir = tmp_dir("keepalive");
    let (json, hgrm) = (dir.join("r.json"), dir.join("r.hgrm"));
    let out = run(&[
        "load",
        &be.url(),
        "-c",
        "4",
        "-d",
        "1s",
        "--warmup",
        "200ms",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("rps") && stdout.contains("p99.9"),
        "{stdout}"
    );

    let j = read_json(&json);
    assert_eq!(j["url"], be.url());
    assert_eq!(u(&j, "connections"), 4);
    assert_eq!(j["duration_s"].as_f64(), Some(1.0));
    let requests = u(&j, "requests");
    assert!(requests > 100, "{requests}");
    assert_eq!(u(&j, "errors"), 0);
    let rps = j["rps"].as_f64().unwrap();
    assert!(
        (rps - requests as f64).abs() < 1.0,
        "rps {rps} vs {requests} in 1s"
    );
    let l = &j["latency_us"];
    let (p50, p90, p99, p999, max) = (
        u(l, "p50"),
        u(l, "p90"),
        u(l, "p99"),
        u(l, "p999"),
        u(l, "max"),
    );
    assert!(0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max);

    // The histogram round-trips: same count and percentiles as the JSON fields.
    let h = decode(j["histogram"].as_str().unwrap());
    assert_eq!(h.len(), requests);
    assert_eq!(h.value_at_quantile(0.5), p50);
    assert_eq!(h.value_at_quantile(0.99), p99);
    assert_eq!(h.max(), max);

    // The .hgrm table parses and its 50th percentile row matches p50 (values in ms).
    let text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(text.contains("Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(text.contains(&format!("Total count    = {requests:>12}]")));
    let rows: Vec<(f64, f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect();
    assert!(rows.len() > 10);
    assert_eq!(rows.last().unwrap().2, requests);
    let p50_row = rows.iter().find(|r| r.1 >= 0.5).unwrap();
    assert!(
        ((p50_row.0 * 1000.0) - p50 as f64).abs() <= 1.0,
        "{p50_row:?} vs {p50}"
    );
}

/// A tiny keep-alive origin that counts the connections it accepts.
fn counting_origin() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(r).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[test]
fn load_close_mode_opens_a_connection_per_request() {
    let (addr, accepted) = counting_origin();
    let dir = tmp_dir("close");
    let json = dir.join("r.json");
    let url = format!("http://{addr}/");
    let args = [
        "-c", "2", "-d", "1s", "--warmup", "0s", "-t", "2", "--cpus", "0",
    ];
    let out = run(&[
        &["load", &url, "--close"],
        &args[..],
        &["--json", json.to_str().unwrap()],
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = read_json(&json);
    let requests = u(&j, "requests");
    assert!(requests > 20);
    assert_eq!(u(&j, "errors"), 0);
    assert_eq!(j["mode"], "close");
    // "uring" here; "epoll" where the kernel or container refuses io_uring.
    assert!(j["io"] == "uring" || j["io"] == "epoll", "{}", j["io"]);
    assert_eq!(u(&j, "threads"), 2);
    let conns = accepted.load(Ordering::SeqCst) as u64;
    assert!(
        conns >= requests,
        "{conns} connections for {requests} requests"
    );

    // Keep-alive on the same origin reuses its 2 connections.
    let before = accepted.load(Ordering::SeqCst);
    let out = run(&[&["load", &url], &args[..]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(accepted.load(Ordering::SeqCst) - before, 2);
}

#[test]
fn load_rate_holds_the_requested_rate() {
    let be = Backend::start(&[]);
    let dir = tmp_dir("rate");
    let json = dir.join("r.json");
    let out = run(&[
        "load",
        &be.url(),
        "-c",
        "10",
        "-d",
        "3s",
        "--warmup",
        "300ms",
        "--rate",
        "2000",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = read_json(&json);
    let rps = j["rps"].as_f64().unwrap();
    assert!((1900.0..=2100.0).contains(&rps), "rate 2000 gave {rps}");
    assert_eq!(j["rate"].as_f64(), Some(2000.0));
}

#[test]
fn load_with_malformed_url_exits_2_with_a_message() {
    for bad in ["not-a-url", "ftp://127.0.0.1/", "http://127.0.0.1:99999/"] {
        let out = run(&["load", bad, "-d", "1s"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad URL") && err.contains(bad), "{err}");
    }
}

#[test]
fn load_against_unreachable_target_counts_errors_and_exits_1() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tmp_dir("unreachable");
    let json = dir.join("r.json");
    let url = format!("http://127.0.0.1:{port}/");
    let out = run(&[
        "load",
        &url,
        "-c",
        "2",
        "-d",
        "500ms",
        "--warmup",
        "0s",
        "--json",
        json.to_str().unwrap(),
    ]);
    // Documented: exit 1 when requests failed.
    assert_eq!(out.status.code(), Some(1));
    let j = read_json(&json);
    assert_eq!(u(&j, "requests"), 0);
    let refused = u(&j["errors_by_kind"], "refused");
    assert!(refused > 0);
    assert_eq!(u(&j, "errors"), refused);
    assert!(String::from_utf8_lossy(&out.stdout).contains("refused="));
}

#[test]
fn backend_handles_pipelining_bodies_http10_and_close() {
    let be = Backend::start(&["--body-bytes", "30"]);
    let mut s = TcpStream::connect(be.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
          GET /c HTTP/1.0\r\n\r\n",
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 4, "{all}");
    assert_eq!(
        all.matches("hello world\nhello world\nhello ").count(),
        4,
        "{all}"
    );
    assert!(
        all.ends_with("Connection: close\r\n\r\nhello world\nhello world\nhello "),
        "{all}"
    );
}

fn fixture(dir: &Path, name: &str, rps: f64, base_us: u64, subject: Option<&str>) -> PathBuf {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for v in 1..=1000 {
        h.record(base_us + v).unwrap();
    }
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(&h, &mut bytes)
        .unwrap();
    let mut j = serde_json::json!({
        "url": "http://x/", "connections": 8, "duration_s": 1.0,
        "requests": rps as u64, "errors": 0, "rps": rps,
        "latency_us": {
            "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
            "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max()
        },
        "histogram": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    if let Some(s) = subject {
        j["subject"] = s.into();
    }
    let p = dir.join(format!("{name}.json"));
    std::fs::write(&p, j.to_string()).unwrap();
    p
}

#[test]
fn compare_prints_ratios_and_draws_one_line_per_run() {
    let dir = tmp_dir("compare");
    let a = fixture(&dir, "baseline", 1000.0, 1000, None);
    let b = fixture(&dir, "other", 2000.0, 3000, Some("fast-proxy"));
    let svg = dir.join("cmp.svg");
    let out = run(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("| run | rps |"));
    // baseline: p99 = 1990us; other: p99 = 3990us -> ratio 3990/1990 = 2.01.
    assert!(
        lines[2].starts_with("| baseline | 1000.0 | 0 | 1.500 |"),
        "{}",
        lines[2]
    );
    assert!(lines[2].ends_with("| 1.00 | 1.00 |"), "{}", lines[2]);
    assert!(
        lines[3].starts_with("| fast-proxy | 2000.0 |"),
        "{}",
        lines[3]
    );
    assert!(lines[3].ends_with("| 2.00 | 2.01 |"), "{}", lines[3]);

    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("baseline") && s.contains("fast-proxy"));
    assert!(s.contains("99.9%") && s.contains("Latency (ms)"));
    // One data line per run (many points), plus one legend sample per run (axes are 1px wide).
    let series: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("stroke-width=\"2\" points="))
        .collect();
    assert_eq!(series.len(), 4, "{s}");
    let data_lines = series
        .iter()
        .filter(|l| l.matches(',').count() > 10)
        .count();
    assert_eq!(data_lines, 2, "{s}");

    let out = run(&["compare", dir.join("missing.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));
}

#[test]
fn scenario_direct_end_to_end_writes_report_svg_and_json() {
    let dir = tmp_dir("scenario");
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"tiny\"\nduration = \"1s\"\nwarmup = \"200ms\"\nrounds = 1\n\
             connections = [4]\nmodes = [\"keepalive\"]\n\
             [rates]\nkeepalive = [0, 2000]\n\
             [[backend]]\nbind = \"127.0.0.1:{port}\"\n\
             [[subject]]\nname = \"direct\"\nkind = \"direct\"\n"
        ),
    )
    .unwrap();
    let out_dir = dir.join("out");
    let out = Command::new(BIN)
        .args([
            "scenario",
            file.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains("| http keepalive c4 | direct |"),
        "{report}"
    );
    // The open-loop cell ran at the offered rate, and says so.
    assert!(
        report.contains("| http keepalive c4 2000rps | direct |"),
        "{report}"
    );
    assert!(!report.contains("did not keep up"), "{report}");
    let paced = read_json(&out_dir.join("direct_http_keepalive_c4_2000rps_r1.json"));
    assert_eq!(paced["rate"].as_f64(), Some(2000.0), "{paced}");
    // Served within the report's tolerance (97% of the rate), as no note was written.
    let rps = paced["rps"].as_f64().unwrap();
    assert!(
        (1940.0..=2200.0).contains(&rps),
        "offered 2000/s, served {rps}"
    );
    let svg = std::fs::read_to_string(out_dir.join("latency.svg")).unwrap();
    // Each series' label is a text line of its own.
    assert!(svg.contains("direct http keepalive c4\n"), "{svg}");
    assert!(svg.contains("direct http keepalive c4 2000rps\n"), "{svg}");
    let j = read_json(&out_dir.join("direct_http_keepalive_c4_r1.json"));
    assert!(j["rate"].is_null(), "the closed-loop cell has no rate: {j}");
    assert_eq!(j["subject"], "direct");
    assert_eq!(j["config"], "direct");
    assert!(
        j["subject_cpu_us_per_req"].is_null() && j["subject_sys_us_per_req"].is_null(),
        "direct has no subject process: {j}"
    );
    assert!(!report.contains("User space and kernel"), "{report}");
    assert_eq!(u(&j, "round"), 1);
    assert!(u(&j, "requests") > 0);
    assert_eq!(u(&j, "errors"), 0);
    // The backend the scenario started is gone. (Looked up by its command line rather than by
    // connecting: a parallel test may be handed the freed port and listen on it.)
    let bind_arg = format!("127.0.0.1:{port}");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| {
            c.split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| c.contains(" backend ") && c.split(' ').any(|a| a == bind_arg))
        .collect();
    assert!(left.is_empty(), "backend still running: {left:?}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nconnections = []\n").unwrap();
    let out = run(&["scenario", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}

/// A scenario with ringlb itself as the subject: its CPU per request comes from /proc, split
/// into user space and kernel in the JSON and in the report.
#[test]
fn scenario_with_ringlb_reports_its_cpu_split_into_user_space_and_kernel() {
    let dir = tmp_dir("scenario-ringlb");
    let free_port = || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (b1, b2, base) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.join("rr.toml"),
        "[runtime]\nworkers = 1\n[[listener]]\nname = \"bench\"\n\
         bind = \"127.0.0.1:{{listen_port}}\"\nprotocol = \"http\"\ntarget_group = \"app\"\n\
         [[target_group]]\nname = \"app\"\ntargets = [\"{{backend1}}\", \"{{backend2}}\"]\n",
    )
    .unwrap();
    let file = dir.join("s.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"split\"\nduration = \"1s\"\nwarmup = \"200ms\"\nrounds = 1\n\
             connections = [4]\nmodes = [\"close\"]\nbase_port = {base}\n\
             [[backend]]\nbind = \"127.0.0.1:{b1}\"\n[[backend]]\nbind = \"127.0.0.1:{b2}\"\n\
             [[subject]]\nname = \"lb\"\nkind = \"ringlb\"\nconfig = \"rr.toml\"\n\
             binary = \"{}\"\n",
            env!("CARGO_BIN_EXE_ringlb")
        ),
    )
    .unwrap();
    let out_dir = dir.join("out");
    let out = run(&[
        "scenario",
        file.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = read_json(&out_dir.join("lb_http_close_c4_r1.json"));
    assert_eq!(u(&j, "errors"), 0, "{j}");
    let whole = j["subject_cpu_us_per_req"].as_f64().expect("cpu figure");
    let sys = j["subject_sys_us_per_req"].as_f64().expect("kernel figure");
    // A new connection per request is mostly the kernel's work (accept, TCP, close), so the
    // kernel's part is there, and never more than the whole.
    assert!(whole > 0.0 && sys > 0.0 && sys <= whole, "{j}");
    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let section = report
        .split("## User space and kernel")
        .nth(1)
        .unwrap_or_else(|| panic!("no kernel section: {report}"));
    assert!(section.contains("| http close c4 | lb | "), "{report}");
}

#[test]
fn epoll_fallback_serves_and_loads() {
    let mut child = Command::new(BIN)
        .args(["backend", "--bind", "127.0.0.1:0"])
        .env("RINGLB_BENCH_IO", "epoll")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start backend");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let be = Backend {
        child,
        addr: line
            .trim()
            .trim_start_matches("listening on ")
            .parse()
            .unwrap(),
    };
    let dir = tmp_dir("epoll");
    let json = dir.join("r.json");
    let out = Command::new(BIN)
        .args([
            "load",
            &be.url(),
            "-c",
            "4",
            "-d",
            "500ms",
            "--warmup",
            "100ms",
        ])
        .args(["--json", json.to_str().unwrap()])
        .env("RINGLB_BENCH_IO", "epoll")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .matches("warning: using epoll")
            .count(),
        1
    );
    let j = read_json(&json);
    assert_eq!(j["io"], "epoll");
    assert!(u(&j, "requests") > 50);
    assert_eq!(u(&j, "errors"), 0);
}

#[test]
fn load_counts_timeouts_against_a_silent_server() {
    // Accepts connections (kernel backlog) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let dir = tmp_dir("timeout");
    let json = dir.join("r.json");
    let started = std::time::Instant::now();
    let out = run(&[
        "load",
        &url,
        "-c",
        "2",
        "-d",
        "1s",
        "--warmup",
        "0s",
        "--timeout",
        "200ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the run must end on time"
    );
    assert_eq!(out.status.code(), Some(1));
    let j = read_json(&json);
    assert_eq!(u(&j, "requests"), 0);
    // 2 connections × ~1s / 200ms each.
    let timeouts = u(&j["errors_by_kind"], "timeout");
    assert!((6..=12).contains(&timeouts), "{timeouts}");
}

#[test]
fn backend_delays_responses_and_rejects_garbage() {
    let be = Backend::start(&["--delay-ms", "150"]);
    let mut s = TcpStream::connect(be.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = std::time::Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");

    let mut s = TcpStream::connect(be.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
}

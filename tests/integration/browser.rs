//! A real browser through ringlb: headless Chromium (Debian's `chromium`, installed by `.ci/run`)
//! loads a page and its script from `python3 -m http.server` through an https listener, over
//! HTTP/2 chosen by ALPN, and runs the script; the access log shows each request as HTTP/2.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use crate::tls::{cert_list, Pki};

const PAGE: &str = "<!doctype html><html><head><title>ringlb</title>\
    <script src=\"/app.js\"></script></head><body><p id=\"x\">static</p>\
    <script>document.getElementById('x').textContent = window.fromApp + '-ran';</script>\
    </body></html>";

/// Runs `cmd` to its end, killing it after `limit`; returns its stdout.
fn run_with_limit(mut cmd: Command, limit: Duration) -> String {
    let mut child = KillOnDrop(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium is installed (.ci/run installs it)"),
    );
    let started = Instant::now();
    loop {
        if let Ok(Some(_)) = child.0.try_wait() {
            break;
        }
        assert!(
            started.elapsed() < limit,
            "chromium did not finish in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    if let Some(mut o) = child.0.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    out
}

#[test]
fn headless_chromium_loads_a_page_over_http2() {
    let dir = crate::testdir::test_path("browser");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("dir");
    std::fs::write(www.join("page.html"), PAGE).expect("page");
    std::fs::write(www.join("app.js"), "window.fromApp = 'script-over-h2';").expect("js");
    let port = crate::cli::free_port();
    let _py = KillOnDrop(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&www)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is installed"),
    );
    crate::cli::wait_port(port);

    let pki = Pki::new("browser");
    let leaf = pki.leaf("site", &["localhost"]);
    let log = dir.join("access.log");
    let toml = format!(
        "[runtime]\nworkers = 1\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
         protocol = \"https\"\ntarget_group = \"site\"\naccess_log = \"{}\"\n\
         \x20 [listener.tls]\n  certificates = [{}]\n\n\
         [[target_group]]\nname = \"site\"\ntargets = [\"127.0.0.1:{port}\"]\n",
        log.display(),
        cert_list(&[&leaf])
    );
    let p = Proxy::start(&toml);

    let profile = dir.join("profile");
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--ignore-certificate-errors",
        &format!("--user-data-dir={}", profile.display()),
        "--dump-dom",
        &format!("https://localhost:{}/page.html", p.addr.port()),
    ]);
    let dom = run_with_limit(cmd, Duration::from_secs(60));
    assert!(
        dom.contains("script-over-h2-ran"),
        "the page and its script came through ringlb and ran:\n{dom}"
    );

    wait_for(
        Duration::from_secs(3),
        "the page and script in the access log",
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/app.js")),
    );
    let text = std::fs::read_to_string(&log).expect("log");
    for path in ["/page.html", "/app.js"] {
        let line = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .find(|v| v["path"] == path)
            .unwrap_or_else(|| panic!("{path} in the access log:\n{text}"));
        assert_eq!(line["protocol"], "HTTP/2", "{line}");
        assert_eq!(line["status"], 200, "{line}");
    }
}

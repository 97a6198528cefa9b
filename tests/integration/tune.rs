//! `ringlb tune` on this host, and the tuning/ examples (ringlb.toml is accepted and served).

use std::process::Command;

use crate::support::*;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringlb")
}

/// Every check `ringlb tune` runs, by its name.
const CHECKS: [&str; 14] = [
    "io_uring",
    "kernel",
    "nofile",
    "memlock",
    "somaxconn",
    "tcp_max_syn_backlog",
    "ip_local_port_range",
    "tcp_tw_reuse",
    "netdev_max_backlog",
    "cpus",
    "cpu_governor",
    "nic_irq_affinity",
    "ktls",
    "congestion_control",
];

fn tune(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .arg("tune")
        .args(args)
        .output()
        .expect("run ringlb tune");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tune_on_this_host_exits_0_and_reports_every_check() {
    let (code, out, err) = tune(&[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    for check in CHECKS {
        assert!(
            out.contains(&format!("] {check}: ")),
            "no {check} finding in:\n{out}"
        );
    }
    assert!(out.starts_with("ringlb tune: "), "{out}");
}

#[test]
fn tune_json_is_an_array_of_findings_with_their_fields() {
    let (code, out, err) = tune(&["--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    let items = v.as_array().expect("a JSON array");
    let names: Vec<&str> = items.iter().filter_map(|f| f["check"].as_str()).collect();
    for check in CHECKS {
        assert!(names.contains(&check), "{check} missing from {names:?}");
    }
    for f in items {
        assert!(
            matches!(f["status"].as_str(), Some("ok" | "warn" | "info")),
            "{f}"
        );
        for field in ["observed", "recommendation", "fix"] {
            assert!(f[field].is_string(), "{field} missing in {f}");
        }
        assert!(!f["observed"].as_str().unwrap_or("").is_empty(), "{f}");
        if f["status"] == "warn" {
            assert!(
                !f["fix"].as_str().unwrap_or("").is_empty(),
                "a warning without fix: {f}"
            );
        }
    }
}

#[test]
fn tune_compares_somaxconn_with_the_configs_backlog() {
    let dir = crate::testdir::test_path("tune");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("tune.toml");
    std::fs::write(
        &cfg,
        "[[listener]]\nname = \"edge\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\
         backlog = 54321\n\n[[target_group]]\nname = \"app\"\ntargets = [\"127.0.0.1:3000\"]\n",
    )
    .unwrap();
    let (code, out, err) = tune(&["--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let f = v
        .as_array()
        .and_then(|a| a.iter().find(|f| f["check"] == "somaxconn"))
        .expect("somaxconn finding")
        .clone();
    let observed = f["observed"].as_str().unwrap_or("");
    assert!(
        observed.contains("54321") && observed.contains("'edge'"),
        "{f}"
    );
    let host: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    if host < 54321 {
        assert_eq!(f["status"], "warn", "{f}");
        assert!(
            f["fix"]
                .as_str()
                .unwrap_or("")
                .contains("sysctl -w net.core.somaxconn="),
            "{f}"
        );
    } else {
        assert_eq!(f["status"], "ok", "{f}");
    }

    // A config with errors is reported, not audited against.
    std::fs::write(&cfg, "[[listener]]\nname = 1\n").unwrap();
    let (code, _, err) = tune(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("tune.toml"), "{err}");
}

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/ringlb.toml")
}

#[test]
fn the_production_example_passes_check() {
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(example())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example uses only features `ringlb run` serves today: started (on loopback, ephemeral
/// ports), it answers the admin API.
#[test]
fn the_production_example_is_served() {
    let mut c = ringlb::config::Config::load(&example()).expect("the example loads");
    c.runtime.workers = 1;
    for l in &mut c.listeners {
        l.bind = "127.0.0.1:0".parse().unwrap();
    }
    if let Some(a) = &mut c.admin {
        a.bind = "127.0.0.1:0".parse().unwrap();
    }
    if std::env::var("RINGLB_TEST_IO").as_deref() == Ok("epoll") {
        c.runtime.io = ringlb::config::IoBackend::Epoll;
    }
    let server = ringlb::runtime::Server::start(c).expect("ringlb run accepts the example");
    let admin = server.admin_addr.expect("the example has an admin API");
    let token = server
        .shared
        .snapshot()
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.clone());
    let r = admin_request(admin, "GET", "/health", None, token.as_deref());
    assert_eq!(r.status, 200);
    assert!(server.drain(std::time::Duration::from_secs(2)));
}

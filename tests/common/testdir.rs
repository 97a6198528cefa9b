//! Folders for tests' files (configs, certificates, logs): each test process keeps them under
//! its own root in the system temp dir, `ringlb-tests-PID`, and removes the roots of test
//! processes that have ended when it makes its own, so runs (a killed one too) leave at most
//! their own folders behind, not one more set per run.
//!
//! Test-only code, shared by the integration tests, `tests/bench.rs` and the library's unit
//! tests (each includes this file); the root is made once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The prefix of every test process's root.
const ROOT_PREFIX: &str = "ringlb-tests-";

/// This process's root, made on first use after the sweep of ended processes' roots.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        sweep(&tmp);
        let root = tmp.join(format!("{ROOT_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("test root dir");
        root
    })
}

/// Removes the roots under `tmp` whose process is gone (no `/proc/PID`).
fn sweep(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(ROOT_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// An empty folder `name` under this process's root (emptied if a test made it before).
pub fn test_dir(name: &str) -> PathBuf {
    let d = root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("test dir");
    d
}

/// The path `name` under this process's root, not created (for a test that makes it itself).
#[allow(dead_code)]
pub fn test_path(name: &str) -> PathBuf {
    root().join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_removes_roots_of_ended_processes_only() {
        let base = test_dir("sweep");
        // A process that has ended: its root goes. This process and a live one keep theirs.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("run true");
        let ended = child.id();
        child.wait().expect("wait for true");
        let live = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("run sleep");
        let names = [
            format!("{ROOT_PREFIX}{ended}"),
            format!("{ROOT_PREFIX}{}", live.id()),
            format!("{ROOT_PREFIX}{}", std::process::id()),
            "ringlb-other".to_string(),
        ];
        for n in &names {
            std::fs::create_dir_all(base.join(n).join("inner")).expect("make root");
        }
        sweep(&base);
        let left: Vec<bool> = names.iter().map(|n| base.join(n).exists()).collect();
        let mut live = live;
        let _ = live.kill();
        let _ = live.wait();
        assert_eq!(left, [false, true, true, true], "{names:?}");
    }
}

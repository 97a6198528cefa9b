//! The processes a scenario starts — backends (this binary's `backend`), subjects (ringlb,
//! HAProxy, nginx) — pinned with `taskset`, plus config-template rendering and the test
//! certificate (openssl CLI). Owned by the scenario's main thread; every `Proc` is stopped (its
//! whole process tree) when dropped, so no process outlives the scenario.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started process may take to accept connections.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes of a failed process's log quoted in errors.
const LOG_TAIL: usize = 600;

/// A started process; stopped (SIGTERM, then SIGKILL to its tree) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

/// Why a process could not be started or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot start {name} ({cmd}): {err}")]
    Spawn {
        name: String,
        cmd: String,
        err: std::io::Error,
    },
    /// `detail`: the address waited for, the exit status and the end of the log.
    #[error("{name} exited before listening: {detail}")]
    Exited { name: String, detail: String },
    #[error("{name} did not listen on {addr} within {secs}s; see {log}")]
    NoListen {
        name: String,
        addr: SocketAddr,
        secs: u64,
        log: String,
    },
    #[error(
        "{name}: {addr} is already in use by {holder}; a process left from an earlier run would \
         answer in its place (or, with SO_REUSEPORT, share its connections): stop it first"
    )]
    Taken {
        name: String,
        addr: SocketAddr,
        holder: String,
    },
    #[error("cannot create {path}: {err}")]
    File { path: String, err: std::io::Error },
    #[error("openssl failed to make a test certificate: {0} (install openssl or set cert/key in the scenario)")]
    Cert(String),
}

/// Finds `prog` on $PATH (or as given when it contains a '/').
pub fn which(prog: &str) -> Option<PathBuf> {
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

impl Proc {
    /// Starts `prog args` pinned to `cpus` (when taskset exists), output to `log`.
    pub fn start(
        name: &str,
        prog: &Path,
        args: &[String],
        cpus: Option<&str>,
        log: PathBuf,
    ) -> Result<Proc, ProcError> {
        let taskset = cpus.and_then(|c| which("taskset").map(|t| (t, c)));
        let mut cmd = match &taskset {
            Some((t, c)) => {
                let mut cmd = Command::new(t);
                cmd.arg("-c").arg(c).arg(prog);
                cmd
            }
            None => Command::new(prog),
        };
        cmd.args(args);
        let shown = format!("{:?}", cmd);
        let out = File::create(&log).map_err(|err| ProcError::File {
            path: log.display().to_string(),
            err,
        })?;
        let err_out = out.try_clone().map_err(|err| ProcError::File {
            path: log.display().to_string(),
            err,
        })?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err_out));
        // SAFETY: only async-signal-safe calls (prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // If this scenario dies, the child is told to stop too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|err| ProcError::Spawn {
            name: name.to_string(),
            cmd: shown,
            err,
        })?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts TCP connections, failing early if the process exits. Call
    /// [`ensure_free`] before starting the process: a connection here proves only that
    /// something listens.
    pub fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), ProcError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ProcError::Exited {
                    name: self.name.clone(),
                    detail: format!(
                        "waited for {addr}, {status}; its log {} ends with:\n{}",
                        self.log.display(),
                        log_tail(&self.log)
                    ),
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ProcError::NoListen {
                    name: self.name.clone(),
                    addr,
                    secs: START_TIMEOUT.as_secs(),
                    log: self.log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id();
        let tree = crate::procstat::descendants(pid);
        // SAFETY: plain kill(2) on processes this scenario started.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in tree {
            // Stragglers (e.g. nginx workers) of the tree recorded above.
            // SAFETY: as above.
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut start = text.len().saturating_sub(LOG_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim().to_string()
}

/// Replaces every `{{name}}` in `template` with its value; unknown placeholders are an error.
pub fn render(template: &str, vars: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let j = after
            .find("}}")
            .ok_or_else(|| "an unclosed '{{' placeholder".to_string())?;
        let key = after[..j].trim();
        let v = vars.get(key).ok_or_else(|| {
            let known: Vec<&str> = vars.keys().copied().collect();
            format!(
                "unknown placeholder {{{{{key}}}}} (known: {})",
                known.join(", ")
            )
        })?;
        out.push_str(v);
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `template` has the placeholder `{{name}}` (spaces inside the braces allowed).
pub fn uses(template: &str, name: &str) -> bool {
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            return false;
        };
        if after[..j].trim() == name {
            return true;
        }
        rest = &after[j + 2..];
    }
    false
}

/// Makes an ECDSA P-256 self-signed certificate for localhost/127.0.0.1 with the openssl CLI;
/// returns (cert, key, cert+key in one file).
pub fn make_cert(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), ProcError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let both = dir.join("cert+key.pem");
    let openssl = which("openssl").ok_or_else(|| ProcError::Cert("openssl not found".into()))?;
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "30", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ProcError::Cert(e.to_string()))?;
    if !out.status.success() {
        return Err(ProcError::Cert(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    combine_pem(&cert, &key, &both)?;
    Ok((cert, key, both))
}

/// Writes cert then key into `both` (HAProxy's `crt` format).
pub fn combine_pem(cert: &Path, key: &Path, both: &Path) -> Result<(), ProcError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|err| ProcError::File {
            path: p.display().to_string(),
            err,
        })
    };
    let mut all = read(cert)?;
    if !all.ends_with(b"\n") {
        all.push(b'\n');
    }
    all.extend(read(key)?);
    std::fs::write(both, all).map_err(|err| ProcError::File {
        path: both.display().to_string(),
        err,
    })
}

/// Fails when another process already listens on `addr`, which `name` is about to take: its
/// connect-probe in [`Proc::wait_listening`] would find the old listener instead.
pub fn ensure_free(name: &str, addr: SocketAddr) -> Result<(), ProcError> {
    match ringlb::listener::owner::listening_holder(addr) {
        Some(holder) => Err(ProcError::Taken {
            name: name.to_string(),
            addr,
            holder: holder.to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_placeholders_and_rejects_unknown_ones() {
        let mut v = BTreeMap::new();
        v.insert("listen_port", "18080".to_string());
        v.insert("backend1", "127.0.0.1:1".to_string());
        let s = render("bind :{{listen_port}}\nserver a {{ backend1 }}\n", &v).unwrap();
        assert_eq!(s, "bind :18080\nserver a 127.0.0.1:1\n");
        let e = render("x {{nope}}", &v).unwrap_err();
        assert!(e.contains("{{nope}}") && e.contains("listen_port"), "{e}");
        assert!(render("x {{listen_port", &v).is_err());
        assert!(uses(
            "bind :{{listen_port}}{{ haproxy_defer_accept }}\n",
            "haproxy_defer_accept"
        ));
        assert!(!uses("bind :{{listen_port}}\n", "haproxy_defer_accept"));
    }

    #[test]
    fn a_port_something_listens_on_is_refused_before_a_process_starts() {
        // A listener already on the port (here this test's own): the connect-probe of
        // `wait_listening` would take it for the new process, so the scenario refuses first.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let e = ensure_free("backend1", addr).expect_err("taken");
        let msg = e.to_string();
        assert!(
            msg.contains("backend1")
                && msg.contains(&addr.to_string())
                && msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(l);
        ensure_free("backend1", addr).expect("free once the listener is gone");
    }
}

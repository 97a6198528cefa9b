//! Active health checks (http GET, tcp connect or a gRPC health call) and the recovery probe for
//! passively ejected targets.
//!
//! Runs on the one health thread (`ringlb-health`, a tokio current-thread runtime: not the data
//! path). The thread owns its per-target tasks and their rise/fall counters; the only shared state
//! it writes is each target's state atomic (`Target::transition`) and check counters in the shared
//! table ([`crate::target`]). It polls each group's membership version and starts or stops probe
//! tasks as targets are registered or removed (admin API), and stops when the server drains.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::config::{HealthCheckConfig, HealthProtocol};
use crate::target::{CheckOutcome, Group, Reason, State, Table, Target};
use crate::tls::UpstreamTls;

mod grpc;

/// How often the health thread looks for membership changes.
pub const MEMBERSHIP_POLL: Duration = Duration::from_millis(100);
/// How often a group without health checks looks for passively ejected targets.
pub const PASSIVE_POLL: Duration = Duration::from_millis(200);
/// First wait before probing a passively ejected target; doubled after each failed probe.
pub const PASSIVE_BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between recovery probes.
pub const PASSIVE_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A target ejected again within this time after it came back resumes its back-off.
pub const PASSIVE_RELAPSE: Duration = Duration::from_secs(60);
/// Time a recovery probe (tcp connect) may take.
pub const PASSIVE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response head a health check reads; bigger answers fail the check.
pub const MAX_PROBE_HEAD: usize = 16 * 1024;
/// Headers parsed in a health-check response.
pub const MAX_PROBE_HEADERS: usize = 64;

/// HAProxy's rise/fall counter for one target: `rise` consecutive passes make it healthy, `fall`
/// consecutive failures unhealthy. A pure state machine: the caller applies what it returns.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    passes: u32,
    failures: u32,
    /// The state this counter last saw or set. A different state seen later was set by someone
    /// else (passive ejection): the streaks restart from there.
    last: State,
}

impl RiseFall {
    pub fn new(rise: u32, fall: u32, start: State) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            passes: 0,
            failures: 0,
            last: start,
        }
    }

    /// Records one outcome for a target now in `current`; returns the transition to apply, if any.
    pub fn record(&mut self, current: State, outcome: CheckOutcome) -> Option<(State, Reason)> {
        if current != self.last {
            self.passes = 0;
            self.failures = 0;
            self.last = current;
        }
        if current == State::Draining {
            return None;
        }
        let next = if outcome == CheckOutcome::Pass {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            (current != State::Healthy && self.passes >= self.rise)
                .then_some((State::Healthy, Reason::None))
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            // Already unhealthy: keep the latest reason current (timeout vs. status mismatch).
            (self.failures >= self.fall || current == State::Unhealthy)
                .then_some((State::Unhealthy, outcome.reason()))
        };
        if let Some((s, _)) = next {
            self.last = s;
        }
        next
    }

    pub fn passes(&self) -> u32 {
        self.passes
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Starts the health thread. It runs until `drain` turns true.
/// `upstream_tls` (by group index) makes the http checks of https groups speak TLS.
pub fn spawn(
    table: Arc<Table>,
    drain: watch::Receiver<bool>,
    upstream_tls: Vec<Option<Arc<UpstreamTls>>>,
) -> std::io::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("ringlb-health".to_string())
        .spawn(move || rt.block_on(supervise(table, drain, upstream_tls)))
}

/// Keeps one probe task per target of every group, following membership changes.
async fn supervise(
    table: Arc<Table>,
    mut drain: watch::Receiver<bool>,
    upstream_tls: Vec<Option<Arc<UpstreamTls>>>,
) {
    let mut versions: Vec<u64> = vec![0; table.groups.len()];
    let mut tasks: HashMap<(usize, u64), AbortHandle> = HashMap::new();
    loop {
        if *drain.borrow_and_update() {
            break;
        }
        for (gi, group) in table.groups.iter().enumerate() {
            let v = group.version();
            if versions[gi] == v {
                continue;
            }
            versions[gi] = v;
            let members = group.members_full();
            tasks.retain(|&(g, id), handle| {
                let keep = g != gi || members.targets.iter().any(|t| t.id == id);
                if !keep {
                    handle.abort();
                }
                keep
            });
            for t in &members.targets {
                tasks.entry((gi, t.id)).or_insert_with(|| {
                    let (group, target) = (group.clone(), t.clone());
                    let tls = upstream_tls.get(gi).cloned().flatten();
                    match group.config.health_check.clone() {
                        Some(hc) => tokio::spawn(check_loop(target, hc, tls)).abort_handle(),
                        None => tokio::spawn(passive_loop(group, target)).abort_handle(),
                    }
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(MEMBERSHIP_POLL) => {}
            r = drain.changed() => if r.is_err() { break },
        }
    }
    for (_, h) in tasks {
        h.abort();
    }
}

/// Active checks of one target: the first at a random offset within the interval (so targets
/// are not probed in lockstep), then every `interval`.
async fn check_loop(target: Arc<Target>, hc: HealthCheckConfig, tls: Option<Arc<UpstreamTls>>) {
    let interval_ms = u64::try_from(hc.interval.as_millis()).unwrap_or(u64::MAX);
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..interval_ms.max(1)))).await;
    let mut ticks = tokio::time::interval(hc.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counter = RiseFall::new(hc.healthy_threshold, hc.unhealthy_threshold, target.state());
    // Each kind of check offers its own protocol by ALPN, whatever the group's data path speaks.
    let tls = tls.map(|t| {
        let alpn = match hc.protocol {
            HealthProtocol::Grpc => crate::tls::ALPN_H2,
            _ => crate::tls::ALPN_HTTP1,
        };
        Arc::new(t.with_alpn(alpn))
    });
    loop {
        ticks.tick().await;
        if target.state() == State::Draining {
            return;
        }
        let outcome = probe_with(target.addr, &hc, tls.as_deref()).await;
        target.count_check(outcome);
        if let Some((state, reason)) = counter.record(target.state(), outcome) {
            let before = target.state();
            if target.transition(state, reason) && before != state {
                tracing::info!(
                    target = %target.addr,
                    from = before.name(),
                    to = state.name(),
                    reason = reason.name(),
                    "target health changed"
                );
            }
        }
    }
}

/// One active check: its outcome, bounded by the check's `timeout`.
pub async fn probe(addr: SocketAddr, hc: &HealthCheckConfig) -> CheckOutcome {
    probe_with(addr, hc, None).await
}

/// One active check; with `tls` (an https group) the http check runs over TLS.
pub async fn probe_with(
    addr: SocketAddr,
    hc: &HealthCheckConfig,
    tls: Option<&UpstreamTls>,
) -> CheckOutcome {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        match hc.protocol {
            HealthProtocol::Tcp => Some(CheckOutcome::Pass),
            HealthProtocol::Grpc => grpc::check(s, addr, &hc.grpc_service, tls).await,
            HealthProtocol::Http => {
                let status = match tls {
                    None => http_status(&mut s, addr, &hc.path).await?,
                    Some(t) => https_status(s, t, addr, &hc.path).await?,
                };
                Some(if hc.matcher.matches(status) {
                    CheckOutcome::Pass
                } else {
                    CheckOutcome::ResponseCodeMismatch
                })
            }
        }
    };
    match tokio::time::timeout(hc.timeout, attempt).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => CheckOutcome::Failed,
        Err(_) => CheckOutcome::Timeout,
    }
}

fn check_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: ringlb-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    )
}

/// The status code of a response head, once `buf` holds all of it.
fn head_status(buf: &[u8]) -> Option<u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PROBE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => resp.code,
        _ => None,
    }
}

/// `http_status` over TLS (https target groups).
async fn https_status(
    s: TcpStream,
    tls: &UpstreamTls,
    addr: SocketAddr,
    path: &str,
) -> Option<u16> {
    let req = check_request(addr, path);
    let head = crate::tls::probe::exchange(
        s,
        tls.config.clone(),
        tls.name_for(addr),
        req.as_bytes(),
        MAX_PROBE_HEAD,
        |b| head_status(b).is_some(),
    )
    .await?;
    head_status(&head)
}

/// Sends `GET path` and reads the status code of the answer (`None`: closed early, malformed or
/// oversized head).
async fn http_status(s: &mut TcpStream, addr: SocketAddr, path: &str) -> Option<u16> {
    let req = check_request(addr, path);
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_PROBE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => return resp.code,
            Ok(httparse::Status::Partial) if buf.len() < MAX_PROBE_HEAD => {}
            _ => return None,
        }
        let room = MAX_PROBE_HEAD - buf.len();
        let n = (&mut *s).take(room as u64).read_buf(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
    }
}

/// Recovery for a group without active checks: when live traffic ejects the target
/// (`Reason::PassiveFailures`), probe it with a tcp connect after 1 s, 2 s, 4 s … (at most 30 s
/// apart) and mark it healthy again on the first success. A target ejected again soon after it
/// came back (one that accepts connections but does not answer passes a tcp connect) goes on
/// from the last wait instead of starting over, so it gets fewer and fewer requests.
async fn passive_loop(group: Arc<Group>, target: Arc<Target>) {
    if group.settings.passive_failures == 0 {
        return;
    }
    let mut last: Option<(Duration, std::time::Instant)> = None;
    loop {
        tokio::time::sleep(PASSIVE_POLL).await;
        match target.state() {
            State::Draining => return,
            State::Unhealthy if target.reason() == Reason::PassiveFailures => {}
            _ => continue,
        }
        let mut wait = match last {
            Some((w, back)) if back.elapsed() < PASSIVE_RELAPSE => next_backoff(w),
            _ => PASSIVE_BACKOFF_START,
        };
        loop {
            tokio::time::sleep(wait).await;
            if target.state() != State::Unhealthy {
                break;
            }
            let timeout = group.settings.connect_timeout.min(PASSIVE_PROBE_TIMEOUT);
            let ok = matches!(
                tokio::time::timeout(timeout, TcpStream::connect(target.addr)).await,
                Ok(Ok(_))
            );
            if ok {
                if target.transition(State::Healthy, Reason::None) {
                    tracing::info!(target = %target.addr, "target reachable again; back in rotation");
                }
                last = Some((wait, std::time::Instant::now()));
                break;
            }
            wait = next_backoff(wait);
        }
    }
}

/// The wait after `wait` in the recovery probe's back-off: doubled, capped at 30 s.
pub fn next_backoff(wait: Duration) -> Duration {
    (wait * 2).min(PASSIVE_BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckOutcome::*;

    #[test]
    fn rise_makes_an_initial_target_healthy() {
        let mut c = RiseFall::new(3, 2, State::Initial);
        assert_eq!(c.record(State::Initial, Pass), None);
        assert_eq!(c.record(State::Initial, Pass), None);
        assert_eq!(
            c.record(State::Initial, Pass),
            Some((State::Healthy, Reason::None))
        );
        // Staying healthy changes nothing.
        assert_eq!(c.record(State::Healthy, Pass), None);
    }

    #[test]
    fn a_failure_resets_the_rise_streak() {
        let mut c = RiseFall::new(2, 3, State::Initial);
        assert_eq!(c.record(State::Initial, Pass), None);
        assert_eq!(c.record(State::Initial, Timeout), None);
        assert_eq!(c.record(State::Initial, Pass), None, "streak restarted");
        assert_eq!(
            c.record(State::Initial, Pass),
            Some((State::Healthy, Reason::None))
        );
    }

    #[test]
    fn fall_makes_a_healthy_target_unhealthy_with_the_failure_reason() {
        let mut c = RiseFall::new(2, 2, State::Healthy);
        assert_eq!(c.record(State::Healthy, ResponseCodeMismatch), None);
        assert_eq!(c.record(State::Healthy, Pass), None, "a pass resets");
        assert_eq!(c.record(State::Healthy, Timeout), None);
        assert_eq!(
            c.record(State::Healthy, ResponseCodeMismatch),
            Some((State::Unhealthy, Reason::ResponseCodeMismatch))
        );
        // Still failing: the reason follows the latest failure.
        assert_eq!(
            c.record(State::Unhealthy, Timeout),
            Some((State::Unhealthy, Reason::Timeout))
        );
        assert_eq!(
            c.record(State::Unhealthy, Failed),
            Some((State::Unhealthy, Reason::FailedHealthChecks))
        );
        assert_eq!(c.record(State::Unhealthy, Pass), None);
        assert_eq!(
            c.record(State::Unhealthy, Pass),
            Some((State::Healthy, Reason::None))
        );
    }

    #[test]
    fn an_initial_target_that_keeps_failing_becomes_unhealthy() {
        let mut c = RiseFall::new(3, 2, State::Initial);
        assert_eq!(c.record(State::Initial, Failed), None);
        assert_eq!(
            c.record(State::Initial, Failed),
            Some((State::Unhealthy, Reason::FailedHealthChecks))
        );
    }

    #[test]
    fn a_state_set_elsewhere_restarts_the_streaks() {
        // Three passes in a row while healthy, then live traffic ejects the target: it needs a
        // full `rise` of fresh passes, not one.
        let mut c = RiseFall::new(2, 2, State::Healthy);
        for _ in 0..3 {
            assert_eq!(c.record(State::Healthy, Pass), None);
        }
        assert_eq!(c.record(State::Unhealthy, Pass), None);
        assert_eq!(c.passes(), 1);
        assert_eq!(
            c.record(State::Unhealthy, Pass),
            Some((State::Healthy, Reason::None))
        );
    }

    #[test]
    fn draining_is_never_left() {
        let mut c = RiseFall::new(1, 1, State::Healthy);
        assert_eq!(c.record(State::Draining, Pass), None);
        assert_eq!(c.record(State::Draining, Failed), None);
        assert_eq!(c.failures(), 0);
    }

    #[test]
    fn backoff_doubles_up_to_thirty_seconds() {
        let mut w = PASSIVE_BACKOFF_START;
        let mut seen = vec![w.as_secs()];
        for _ in 0..7 {
            w = next_backoff(w);
            seen.push(w.as_secs());
        }
        assert_eq!(seen, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    fn hc(protocol: HealthProtocol, matcher: &str) -> HealthCheckConfig {
        HealthCheckConfig {
            protocol,
            path: "/hc".to_string(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            matcher: crate::config::Matcher::parse(matcher).expect("matcher"),
            grpc_service: String::new(),
        }
    }

    /// A one-shot origin answering every connection with `answer` (after `delay`).
    async fn origin(answer: &'static str, delay: Duration) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn probe_outcomes() {
        let ok = origin("HTTP/1.1 204 No Content\r\n\r\n", Duration::ZERO).await;
        let err = origin(
            "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let slow = origin("HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(5)).await;
        let junk = origin("SSH-2.0-OpenSSH\r\n\r\n", Duration::ZERO).await;
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let http = hc(HealthProtocol::Http, "200,204");
        assert_eq!(probe(ok, &http).await, Pass);
        assert_eq!(probe(err, &http).await, ResponseCodeMismatch);
        assert_eq!(probe(slow, &http).await, Timeout);
        assert_eq!(probe(junk, &http).await, Failed);
        assert_eq!(probe(refused, &http).await, Failed);
        let tcp = hc(HealthProtocol::Tcp, "200");
        assert_eq!(probe(slow, &tcp).await, Pass, "tcp checks only connect");
        assert_eq!(probe(refused, &tcp).await, Failed);
    }

    /// CPU of the health thread probing 1,000 http targets every second (all served by one
    /// origin on 0.0.0.0, reached through 1,000 loopback addresses). Run with
    /// `cargo test --release --lib health::tests::cpu_of_1000_targets -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement (10 s), not a check"]
    fn cpu_of_1000_targets() {
        const TARGETS: usize = 1000;
        const SECONDS: u64 = 10;
        let origin = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = origin.local_addr().unwrap().port();
        origin.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(origin).unwrap();
                while let Ok((mut s, _)) = l.accept().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 2048];
                        let _ = s.read(&mut buf).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .await;
                    });
                }
            });
        });
        let targets: Vec<String> = (0..TARGETS)
            .map(|i| format!("\"127.0.{}.{}:{port}\"", i / 250, i % 250 + 1))
            .collect();
        let toml = format!(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\ntarget_group = \"app\"\n\n\
             [[target_group]]\nname = \"app\"\ntargets = [{}]\n\
             [target_group.health_check]\ninterval = \"1s\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\n",
            targets.join(", ")
        );
        let config = crate::config::Config::parse(&toml, std::path::Path::new("t.toml")).unwrap();
        let table = Arc::new(Table::build(&config, 1));
        let (tx, rx) = watch::channel(false);
        let thread = spawn(table.clone(), rx, Vec::new()).unwrap();
        std::thread::sleep(Duration::from_secs(SECONDS));
        let ticks = thread_cpu_ticks("ringlb-health").expect("health thread in /proc");
        let healthy = table.groups[0]
            .members()
            .targets
            .iter()
            .filter(|t| t.state() == State::Healthy)
            .count();
        let _ = tx.send(true);
        let _ = thread.join();
        let cpu_s = ticks as f64 / 100.0;
        println!(
            "health thread: {TARGETS} targets, 1 s interval, {SECONDS} s: {cpu_s:.2} s CPU ({:.1}% of a core); {healthy} healthy",
            cpu_s * 100.0 / SECONDS as f64
        );
        assert_eq!(healthy, TARGETS);
    }

    /// utime + stime (clock ticks) of this process's thread named `name`.
    fn thread_cpu_ticks(name: &str) -> Option<u64> {
        for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the ")" that closes the command name: state is field 3, utime 14.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            return Some(utime + stime);
        }
        None
    }
}

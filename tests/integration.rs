//! Integration tests: real sockets on 127.0.0.1, real backends, ringlb in-process or as a binary.
//! One test binary (modules under tests/integration/) so the suite links once.

#[path = "integration/support.rs"]
mod support;
#[path = "common/testdir.rs"]
mod testdir;

#[path = "integration/access_log.rs"]
mod access_log;
#[path = "integration/admin.rs"]
mod admin;
#[path = "integration/browser.rs"]
mod browser;
#[path = "integration/cli.rs"]
mod cli;
#[path = "integration/dashboard.rs"]
mod dashboard;
#[path = "integration/dns.rs"]
mod dns;
#[path = "integration/faults.rs"]
mod faults;
#[path = "integration/grpc.rs"]
mod grpc;
#[path = "integration/guard.rs"]
mod guard;
#[path = "integration/h2_upstream.rs"]
mod h2_upstream;
#[path = "integration/h2frames.rs"]
mod h2frames;
#[path = "integration/health.rs"]
mod health;
#[path = "integration/http2.rs"]
mod http2;
#[path = "integration/http2_abuse.rs"]
mod http2_abuse;
#[path = "integration/l4.rs"]
mod l4;
#[path = "integration/memory.rs"]
mod memory;
#[path = "integration/mtls.rs"]
mod mtls;
#[path = "integration/newuser.rs"]
mod newuser;
#[path = "integration/proxy.rs"]
mod proxy;
#[path = "integration/reload.rs"]
mod reload;
#[path = "integration/rules.rs"]
mod rules;
#[path = "integration/tls.rs"]
mod tls;
#[path = "integration/traffic.rs"]
mod traffic;
#[path = "integration/tune.rs"]
mod tune;
#[path = "integration/upgrade.rs"]
mod upgrade;
#[path = "integration/upstream.rs"]
mod upstream;

//! Config features this build parses and validates but does not serve yet.
//!
//! Runs on the main thread at start. Serving such a config silently (an https listener as plain
//! text, rules ignored, limits not enforced) would be worse than refusing it, so `Server::start`
//! refuses with the list of what is missing. Each entry goes away when its feature lands.

use crate::config::{Config, GroupProtocol, ListenerProtocol, TargetSpec};

/// Every config item that names a feature not yet served, as "where: what".
pub fn unsupported(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let at = format!("listener '{}'", l.name);
        if l.protocol == ListenerProtocol::Https {
            out.push(format!("{at}: protocol = \"https\" (TLS termination)"));
        }
        if l.access_log.is_some() {
            out.push(format!("{at}: access_log"));
        }
        let lim = &l.limits;
        if lim.max_connections_per_ip != 0 {
            out.push(format!("{at}: limits.max_connections_per_ip"));
        }
        if lim.requests_per_second_per_ip != 0 {
            out.push(format!("{at}: limits.requests_per_second_per_ip"));
        }
        if !lim.allow.is_empty() || !lim.deny.is_empty() {
            out.push(format!("{at}: limits.allow / limits.deny"));
        }
    }
    for g in &config.target_groups {
        let at = format!("target_group '{}'", g.name);
        if g.protocol == GroupProtocol::Https {
            out.push(format!("{at}: protocol = \"https\" (re-encryption)"));
        }
        if g.targets
            .iter()
            .any(|t| matches!(t, TargetSpec::Dns { .. }))
        {
            out.push(format!("{at}: dns targets"));
        }
    }
    out
}

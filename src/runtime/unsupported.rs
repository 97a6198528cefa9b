//! Config features this build parses and validates but does not serve yet.
//!
//! Runs on the main thread at start. Serving such a config silently (an https listener as plain
//! text, rules ignored, limits not enforced) would be worse than refusing it, so `Server::start`
//! refuses with the list of what is missing. Each entry goes away when its feature lands.

use crate::config::{Config, GroupProtocol, ListenerProtocol, ProxyProtocol};

/// Every config item that names a feature not yet served, as "where: what".
pub fn unsupported(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let at = format!("listener '{}'", l.name);
        if l.protocol == ListenerProtocol::Tcp {
            out.push(format!("{at}: protocol = \"tcp\" (layer-4 proxying)"));
        }
        if !l.rules.is_empty() {
            out.push(format!("{at}: [[listener.rule]] (routing rules)"));
        }
        if l.access_log.is_some() {
            out.push(format!("{at}: access_log"));
        }
        if l.accept_proxy_protocol {
            out.push(format!("{at}: accept_proxy_protocol"));
        }
    }
    for g in &config.target_groups {
        let at = format!("target_group '{}'", g.name);
        if g.protocol == GroupProtocol::Tcp {
            out.push(format!("{at}: protocol = \"tcp\""));
        }
        if g.proxy_protocol != ProxyProtocol::Off {
            out.push(format!("{at}: proxy_protocol"));
        }
    }
    out
}

//! Config features this build parses and validates but does not serve yet.
//!
//! Runs on the main thread at start. Serving such a config silently (a log file never written)
//! would be worse than refusing it, so `Server::start` refuses with the list of what is missing.
//! Each entry goes away when its feature lands.

use crate::config::Config;

/// Every config item that names a feature not yet served, as "where: what".
pub fn unsupported(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for l in &config.listeners {
        if l.access_log.is_some() {
            out.push(format!("listener '{}': access_log", l.name));
        }
    }
    out
}

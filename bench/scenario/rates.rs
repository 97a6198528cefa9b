//! A scenario's offered request rates: `[rates]` in the scenario file names, per mode, the total
//! requests/s its cells run at in an open loop (`load --rate`), so every subject is measured at
//! the same load instead of each at its own saturation. Parsed on the scenario's main thread;
//! owns nothing beyond the parsed lists.
//!
//! Why: in a closed loop each subject runs as fast as it and the load allow. A subject faster
//! than the load generator then idles between requests, and its CPU per request carries the
//! cost of going to sleep and waking up, while a slower one runs saturated and does not. At one
//! offered rate below everyone's ceiling, CPU per request and latency (measured from each
//! request's intended send time) compare the same work.
//!
//! ```toml
//! [rates]
//! keepalive = [50000]   # requests/s in total, over the cell's connections
//! close = [0, 15000]    # 0: the closed loop as well
//! ```
//! A mode with no rates runs in a closed loop, as does a scenario without `[rates]`. Rates for a
//! mode the scenario's `modes` leave out (the default is keep-alive alone) are refused.

use serde::Deserialize;

use super::Mode;

/// Most requests/s a rate may ask for (as `load --rate`).
pub const MAX_RATE: u64 = 100_000_000;
/// A subject that served less than this share of the offered rate (median over its rounds) did
/// not keep up: the report says so, since its figures are then those of saturation.
pub const KEPT_UP: f64 = 0.97;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    #[serde(default)]
    pub keepalive: Vec<u64>,
    #[serde(default)]
    pub close: Vec<u64>,
}

impl Rates {
    /// The loads a cell of `mode` runs at, in order: `None` is the closed loop (a 0 in the
    /// list, or no list for the mode).
    pub fn for_mode(&self, mode: Mode) -> Vec<Option<u64>> {
        let list = match mode {
            Mode::Keepalive => &self.keepalive,
            Mode::Close => &self.close,
        };
        if list.is_empty() {
            return vec![None];
        }
        let mut out: Vec<Option<u64>> = Vec::with_capacity(list.len());
        for &r in list {
            let load = (r > 0).then_some(r);
            if !out.contains(&load) {
                out.push(load);
            }
        }
        out
    }

    /// Why the rates cannot run in a scenario of these `modes`, if they cannot: a rate over
    /// the limit, or rates for a mode the scenario does not run (they would be ignored).
    pub fn check(&self, modes: &[Mode]) -> Result<(), String> {
        for (mode, name, list) in [
            (Mode::Keepalive, "keepalive", &self.keepalive),
            (Mode::Close, "close", &self.close),
        ] {
            if let Some(r) = list.iter().find(|&&r| r > MAX_RATE) {
                return Err(format!(
                    "rates.{name}: {r} requests/s is more than the limit of {MAX_RATE}"
                ));
            }
            if !list.is_empty() && !modes.contains(&mode) {
                return Err(format!(
                    "rates.{name} is set but modes does not include \"{name}\": add it to \
                     modes or remove the rates"
                ));
            }
        }
        Ok(())
    }
}

/// The report's line for a subject that fell short of its cell's offered rate, if it did.
/// `direct` (no proxy) falling short means the load generator or the backend could not deliver
/// the rate, which every subject of the cell shares.
pub fn shortfall(
    subject: &str,
    direct: bool,
    cell: &str,
    offered: u64,
    served_rps: f64,
) -> Option<String> {
    if served_rps >= offered as f64 * KEPT_UP {
        return None;
    }
    let why = if direct {
        "with no proxy in the way, the load generator or the backend could not deliver the rate, \
         so every subject's figures in this cell are in doubt"
    } else {
        "it did not keep up, so its figures there are those of saturation, not of the offered load"
    };
    Some(format!(
        "{subject} served {served_rps:.0} of the {offered} requests/s offered in `{cell}` \
         (median): {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Rates, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn each_mode_takes_its_own_rates_and_zero_or_nothing_is_the_closed_loop() {
        let r = parse("keepalive = [50000, 0, 50000]\n").expect("parses");
        assert_eq!(r.for_mode(Mode::Keepalive), vec![Some(50000), None]);
        assert_eq!(r.for_mode(Mode::Close), vec![None]);
        let none = Rates::default();
        assert_eq!(none.for_mode(Mode::Keepalive), vec![None]);
        assert!(none.check(&[Mode::Keepalive]).is_ok());
    }

    #[test]
    fn a_misspelt_mode_or_a_rate_beyond_the_limit_is_refused_with_its_name() {
        let e = parse("keepalve = [1]\n").expect_err("unknown field");
        assert!(e.contains("keepalve"), "{e}");
        let e = parse("close = [-5]\n").expect_err("negative");
        assert!(e.contains("close"), "{e}");
        let big = parse("close = [200000000]\n").expect("parses");
        let e = big.check(&[Mode::Close]).expect_err("beyond the limit");
        assert!(e.contains("rates.close") && e.contains("200000000"), "{e}");
        // Rates for a mode the scenario does not run would be ignored: refused instead.
        let unused = parse("close = [15000]\n").expect("parses");
        let e = unused.check(&[Mode::Keepalive]).expect_err("close not run");
        assert!(e.contains("rates.close") && e.contains("modes"), "{e}");
        assert!(unused.check(&[Mode::Keepalive, Mode::Close]).is_ok());
    }

    #[test]
    fn a_scenario_refuses_rates_for_a_mode_it_does_not_run_and_repeated_cells() {
        let spec = |extra: &str| {
            let text = format!(
                "name = \"s\"\nconnections = [4]\n{extra}\n\
                 [[backend]]\nbind = \"127.0.0.1:1\"\n\
                 [[subject]]\nname = \"d\"\nkind = \"direct\"\n"
            );
            crate::scenario::parse(std::path::Path::new("s.toml"), &text).map_err(|e| e.to_string())
        };
        let e = spec("[rates]\nclose = [100]").expect_err("close is not run");
        assert!(e.starts_with("s.toml: rates.close"), "{e}");
        assert!(spec("modes = [\"keepalive\", \"close\"]\n[rates]\nclose = [100]").is_ok());
        let e = spec("modes = [\"close\", \"close\"]").expect_err("a mode twice");
        assert!(e.contains("modes lists an entry twice"), "{e}");
        let e = spec("protocols = [\"http\", \"http\"]").expect_err("a protocol twice");
        assert!(e.contains("protocols"), "{e}");
    }

    #[test]
    fn only_a_subject_short_of_the_offered_rate_gets_a_note() {
        let cell = "http keepalive c64 50000rps";
        assert_eq!(shortfall("a", false, cell, 50000, 49990.0), None);
        let n = shortfall("b", false, cell, 50000, 40000.0).expect("note");
        assert!(
            n.contains("b served 40000 of the 50000") && n.contains("did not keep up"),
            "{n}"
        );
        let d = shortfall("direct", true, cell, 50000, 40000.0).expect("note");
        assert!(d.contains("every subject's figures"), "{d}");
    }
}

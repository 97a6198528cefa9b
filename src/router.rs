//! Listener rules: compiles a listener's `[[listener.rule]]` list once per config into an index,
//! and picks the action for each request (forward, weighted forward, redirect, fixed response).
//!
//! Built by the main thread into the immutable `ListenerPlan`; evaluated by every worker on its
//! own requests without locks. The only per-request state is the weighted-forward choice, drawn
//! from the worker thread's own RNG.
//!
//! The index: a rule whose host patterns are all exact names (or `*.suffix` wildcards) is listed
//! under each name (or suffix); otherwise a rule whose path patterns all fix the first path segment
//! is listed under each segment; the rest are tried for every request. A request's candidates are
//! the lists for its host, its host's suffixes, its first path segment and the unindexed rules,
//! merged in priority order; the first candidate whose conditions all hold wins.

mod pattern;
pub mod redirect;
pub mod respond;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use pattern::{glob, strip_port};

use crate::config::{Action, FixedResponse, HeaderRewrite, Redirect, RuleConfig};
use crate::http::parse::RequestHead;
use crate::http::rewrite::Rewrites;
use crate::target::{Group, Table};

/// Longest host name looked up in the index (DNS names are at most 253 bytes).
pub const MAX_HOST_KEY: usize = 256;
/// Most `*.suffix` levels of a host looked up; deeper wildcard suffixes are tried for every request.
pub const MAX_SUFFIX_LEVELS: usize = 12;
/// Most distinct header names rules are indexed by; rules on other names are tried for every request.
pub const MAX_INDEXED_HEADERS: usize = 4;
/// Candidate lists merged per request (exact host, suffixes, path segment, header values,
/// unindexed); a request that would need more falls back to trying every rule in order.
const MAX_LISTS: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("rule (priority {priority}): forward names target group '{group}', which is not defined; define it in a [[target_group]] or fix the name")]
    UnknownGroup { priority: u32, group: String },
    #[error("rule (priority {priority}): weighted forward has a total weight of 0; give at least one target group a weight of 1 or more")]
    ZeroWeight { priority: u32 },
}

/// What a request's route is.
pub enum Route<'a> {
    /// To this group, with the listener's (and the matching rule's) header rewrites.
    Forward(&'a Arc<Group>, &'a Rewrites),
    Redirect(&'a Redirect),
    Fixed(&'a FixedResponse),
}

/// The request facts conditions look at.
pub struct RequestView<'a> {
    pub buf: &'a [u8],
    pub head: &'a RequestHead,
    pub source: IpAddr,
    /// The verified client certificate's RFC 4514 subject (mutual TLS) in its match form
    /// (`tls::client_auth::dn_match_form`), for `client_cert_subject` conditions.
    pub client_cert_subject: Option<&'a [u8]>,
}

/// The compiled rules of one listener.
pub struct Router {
    default: Arc<Group>,
    /// The listener's own rewrites (requests no rule matches, or matched by a rule without any).
    rewrites: Rewrites,
    rules: Vec<Rule>,
    exact_host: HashMap<Box<[u8]>, Vec<u32>>,
    /// Keyed by the suffix with its leading dot: `*.example.org` → `.example.org`.
    suffix_host: HashMap<Box<[u8]>, Vec<u32>>,
    segment: HashMap<Box<[u8]>, Vec<u32>>,
    /// Per indexed header name (lower case): rules by the exact value (lower case) they require.
    header_values: Vec<(String, ValueIndex)>,
    unindexed: Vec<u32>,
}

type Bytes = Box<[u8]>;
/// Rule ids by a lower-case header value.
type ValueIndex = HashMap<Bytes, Vec<u32>>;

struct Rule {
    hosts: Vec<Box<[u8]>>,
    paths: Vec<Box<[u8]>>,
    methods: Vec<Box<[u8]>>,
    headers: Vec<(String, Box<[u8]>)>,
    queries: Vec<(Bytes, Bytes)>,
    sources: Vec<ipnet::IpNet>,
    subjects: Vec<Box<[u8]>>,
    action: RuleAction,
}

enum RuleAction {
    /// Target groups with their cumulative weights (the last is the total), and the listener's
    /// rewrites followed by the rule's.
    Forward(Vec<(Arc<Group>, u32)>, Rewrites),
    Redirect(Redirect),
    Fixed(FixedResponse),
}

/// How a rule is found by the index.
enum IndexKey {
    Hosts(Vec<(bool, Box<[u8]>)>),
    Segments(Vec<Box<[u8]>>),
    /// A header name and the exact value a rule requires.
    Header(String, Box<[u8]>),
    None,
}

impl Router {
    /// Compiles `rules` (sorted by ascending priority, as the config parser leaves them);
    /// `default` serves requests no rule matches.
    pub fn build(
        rules: &[RuleConfig],
        default: Arc<Group>,
        table: &Table,
    ) -> Result<Router, RouterError> {
        let none = HeaderRewrite::default();
        Router::build_with(rules, default, table, (&none, &none))
    }

    /// As [`Router::build`], with the listener's `request_headers` and `response_headers`.
    pub fn build_with(
        rules: &[RuleConfig],
        default: Arc<Group>,
        table: &Table,
        listener: (&HeaderRewrite, &HeaderRewrite),
    ) -> Result<Router, RouterError> {
        let mut sorted: Vec<&RuleConfig> = rules.iter().collect();
        sorted.sort_by_key(|r| r.priority);
        let none = HeaderRewrite::default();
        let mut router = Router {
            rewrites: Rewrites::new(listener, (&none, &none)),
            default,
            rules: Vec::with_capacity(sorted.len()),
            exact_host: HashMap::new(),
            suffix_host: HashMap::new(),
            segment: HashMap::new(),
            header_values: Vec::new(),
            unindexed: Vec::new(),
        };
        for (i, rc) in sorted.into_iter().enumerate() {
            let rule = compile(rc, table, listener)?;
            let id = i as u32;
            let can_index_header = router.header_values.len() < MAX_INDEXED_HEADERS;
            match index_key(rc, |name| {
                can_index_header || router.header_values.iter().any(|h| h.0 == name)
            }) {
                IndexKey::Hosts(keys) => {
                    for (suffix, key) in keys {
                        let map = if suffix {
                            &mut router.suffix_host
                        } else {
                            &mut router.exact_host
                        };
                        push_unique(map.entry(key).or_default(), id);
                    }
                }
                IndexKey::Segments(keys) => {
                    for key in keys {
                        push_unique(router.segment.entry(key).or_default(), id);
                    }
                }
                IndexKey::Header(name, value) => {
                    let at = match router.header_values.iter().position(|h| h.0 == name) {
                        Some(at) => at,
                        None => {
                            router.header_values.push((name, HashMap::new()));
                            router.header_values.len() - 1
                        }
                    };
                    if let Some((_, map)) = router.header_values.get_mut(at) {
                        push_unique(map.entry(value).or_default(), id);
                    }
                }
                IndexKey::None => router.unindexed.push(id),
            }
            router.rules.push(rule);
        }
        Ok(router)
    }

    /// The group requests go to when no rule matches.
    pub fn default_group(&self) -> &Arc<Group> {
        &self.default
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The route of one request: the action of the first matching rule by priority, or a
    /// forward to the default group.
    pub fn route<'r>(&'r self, req: &RequestView<'_>) -> Route<'r> {
        if self.rules.is_empty() {
            return Route::Forward(&self.default, &self.rewrites);
        }
        let mut lists = Lists {
            at: [&[]; MAX_LISTS],
            n: 0,
            overflow: false,
        };
        let mut key_buf = [0u8; MAX_HOST_KEY];
        let host = req.head.host.map(|s| strip_port(s.of(req.buf)));
        if let Some(h) = host.and_then(|h| pattern::lower_into(h, &mut key_buf)) {
            let h = h.as_bytes();
            lists.push(self.exact_host.get(h));
            if !self.suffix_host.is_empty() {
                // Suffixes from the shortest (`.org`) up, at most MAX_SUFFIX_LEVELS of them.
                let dots = h.iter().enumerate().rev().filter(|(_, &b)| b == b'.');
                for (at, _) in dots.take(MAX_SUFFIX_LEVELS) {
                    lists.push(self.suffix_host.get(&h[at..]));
                }
            }
        }
        let path = req.head.path.of(req.buf);
        let path: &[u8] = if path.is_empty() { b"/" } else { path };
        if let Some(seg) = pattern::first_segment(path) {
            lists.push(self.segment.get(seg));
        }
        for (name, values) in &self.header_values {
            for h in &req.head.headers {
                if h.name.of(req.buf).eq_ignore_ascii_case(name.as_bytes()) {
                    let mut vbuf = [0u8; MAX_HOST_KEY];
                    // A value too long or not UTF-8 to look up cannot equal an indexed one.
                    if let Some(v) = pattern::lower_into(trim(h.value.of(req.buf)), &mut vbuf) {
                        lists.push(values.get(v.as_bytes()));
                    }
                }
            }
        }
        if !self.unindexed.is_empty() {
            lists.push(Some(&self.unindexed));
        }
        if lists.overflow {
            // More candidate lists than fit: try every rule in priority order.
            return match self.rules.iter().find(|r| r.matches(req, host)) {
                Some(rule) => rule.action.route(),
                None => Route::Forward(&self.default, &self.rewrites),
            };
        }
        let n = lists.n;
        let mut lists = lists.at;
        let lists = &mut lists[..n];
        // Merge the sorted lists: rule ids ascend with priority.
        while let Some(next) = lists.iter().filter_map(|l| l.first()).min().copied() {
            for l in lists.iter_mut() {
                if l.first() == Some(&next) {
                    *l = &l[1..];
                }
            }
            let Some(rule) = self.rules.get(next as usize) else {
                break;
            };
            if rule.matches(req, host) {
                return rule.action.route();
            }
        }
        Route::Forward(&self.default, &self.rewrites)
    }
}

/// The candidate lists of one request (on the stack).
struct Lists<'a> {
    at: [&'a [u32]; MAX_LISTS],
    n: usize,
    overflow: bool,
}

impl<'a> Lists<'a> {
    fn push(&mut self, list: Option<&'a Vec<u32>>) {
        let Some(list) = list else { return };
        match self.at.get_mut(self.n) {
            Some(slot) => {
                *slot = list;
                self.n += 1;
            }
            None => self.overflow = true,
        }
    }
}

fn push_unique(list: &mut Vec<u32>, id: u32) {
    if list.last() != Some(&id) {
        list.push(id);
    }
}

fn compile(
    rc: &RuleConfig,
    table: &Table,
    listener: (&HeaderRewrite, &HeaderRewrite),
) -> Result<Rule, RouterError> {
    let c = &rc.conditions;
    let bytes = |s: &str| s.as_bytes().to_vec().into_boxed_slice();
    let lower = |s: &str| s.to_ascii_lowercase().into_bytes().into_boxed_slice();
    let action = match &rc.action {
        Action::Forward(groups) => {
            let mut out = Vec::with_capacity(groups.len());
            let mut total = 0u32;
            for g in groups {
                let group = table.group(&g.target_group).cloned().ok_or_else(|| {
                    RouterError::UnknownGroup {
                        priority: rc.priority,
                        group: g.target_group.clone(),
                    }
                })?;
                total = total.saturating_add(g.weight);
                out.push((group, total));
            }
            if total == 0 {
                return Err(RouterError::ZeroWeight {
                    priority: rc.priority,
                });
            }
            let rule_rw = (&rc.request_headers, &rc.response_headers);
            RuleAction::Forward(out, Rewrites::new(listener, rule_rw))
        }
        Action::Redirect(r) => RuleAction::Redirect(r.clone()),
        Action::FixedResponse(f) => RuleAction::Fixed(f.clone()),
    };
    Ok(Rule {
        hosts: c.host.iter().map(|h| lower(strip_port_str(h))).collect(),
        paths: c.path.iter().map(|p| bytes(p)).collect(),
        methods: c
            .method
            .iter()
            .map(|m| m.to_ascii_uppercase().into_bytes().into_boxed_slice())
            .collect(),
        headers: c
            .header
            .iter()
            .map(|(k, v)| (k.clone(), bytes(v)))
            .collect(),
        queries: c.query.iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
        sources: c.source_ip.clone(),
        subjects: c
            .client_cert_subject
            .iter()
            .map(|p| crate::tls::client_auth::dn_match_form(p.as_bytes()).into_boxed_slice())
            .collect(),
        action,
    })
}

/// A host pattern without a `:port` (the port of a request is ignored, so is the pattern's).
fn strip_port_str(h: &str) -> &str {
    std::str::from_utf8(strip_port(h.as_bytes())).unwrap_or(h)
}

fn index_key(rc: &RuleConfig, header_ok: impl Fn(&str) -> bool) -> IndexKey {
    let c = &rc.conditions;
    if !c.host.is_empty() {
        let keys: Option<Vec<(bool, Box<[u8]>)>> = c
            .host
            .iter()
            .map(|h| {
                let h = strip_port_str(h).to_ascii_lowercase();
                if !pattern::has_wildcard(&h) {
                    return Some((false, h.into_bytes().into_boxed_slice()));
                }
                let suffix = h.strip_prefix('*')?;
                let indexable = suffix.starts_with('.')
                    && !pattern::has_wildcard(suffix)
                    && suffix.matches('.').count() <= MAX_SUFFIX_LEVELS;
                indexable.then(|| (true, suffix.as_bytes().to_vec().into_boxed_slice()))
            })
            .collect();
        if let Some(keys) = keys {
            return IndexKey::Hosts(keys);
        }
    }
    if !c.path.is_empty() {
        let keys: Option<Vec<Box<[u8]>>> = c
            .path
            .iter()
            .map(|p| pattern::pattern_first_segment(p).map(|s| s.as_bytes().into()))
            .collect();
        if let Some(keys) = keys {
            return IndexKey::Segments(keys);
        }
    }
    for (name, value) in &c.header {
        let name = name.to_ascii_lowercase();
        let value = value.trim();
        if !pattern::has_wildcard(value) && value.len() <= MAX_HOST_KEY && header_ok(&name) {
            let value = value.to_ascii_lowercase().into_bytes().into_boxed_slice();
            return IndexKey::Header(name, value);
        }
    }
    IndexKey::None
}

impl Rule {
    fn matches(&self, req: &RequestView<'_>, host: Option<&[u8]>) -> bool {
        let buf = req.buf;
        let head = req.head;
        if !self.hosts.is_empty() {
            let Some(h) = host else { return false };
            if !self.hosts.iter().any(|p| glob(p, h, true)) {
                return false;
            }
        }
        if !self.paths.is_empty() {
            let path = head.path.of(buf);
            let path: &[u8] = if path.is_empty() { b"/" } else { path };
            if !self.paths.iter().any(|p| glob(p, path, false)) {
                return false;
            }
        }
        if !self.methods.is_empty() {
            let m = head.method_span.of(buf);
            if !self.methods.iter().any(|x| **x == *m) {
                return false;
            }
        }
        for (name, value) in &self.headers {
            let hit = head.headers.iter().any(|h| {
                h.name.of(buf).eq_ignore_ascii_case(name.as_bytes())
                    && glob(value, trim(h.value.of(buf)), true)
            });
            if !hit {
                return false;
            }
        }
        if !self.queries.is_empty() {
            let q = head.query.map_or(&[][..], |s| s.of(buf));
            for (key, value) in &self.queries {
                let hit = q.split(|&b| b == b'&').any(|pair| {
                    let (k, v) = match pair.iter().position(|&b| b == b'=') {
                        Some(at) => (&pair[..at], &pair[at + 1..]),
                        None => (pair, &[][..]),
                    };
                    k.eq_ignore_ascii_case(key) && glob(value, v, true)
                });
                if !hit {
                    return false;
                }
            }
        }
        if !self.sources.is_empty() {
            let ip = req.source.to_canonical();
            if !self.sources.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        if !self.subjects.is_empty() {
            // No certificate (client_auth = "optional"): the condition does not hold.
            let Some(subject) = req.client_cert_subject else {
                return false;
            };
            if !self.subjects.iter().any(|p| glob(p, subject, true)) {
                return false;
            }
        }
        true
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    v.get(start..end).unwrap_or(&[])
}

impl RuleAction {
    fn route(&self) -> Route<'_> {
        match self {
            RuleAction::Forward(groups, rewrites) => {
                let total = groups.last().map_or(0, |g| g.1);
                let pick = if groups.len() > 1 && total > 0 {
                    // Each worker thread draws from its own RNG: no shared state is written.
                    let r = fastrand::u32(0..total);
                    groups.iter().position(|g| r < g.1).unwrap_or(0)
                } else {
                    0
                };
                match groups.get(pick).or(groups.first()) {
                    Some(g) => Route::Forward(&g.0, rewrites),
                    // Compile refuses an empty forward; nothing here to route to.
                    None => unreachable_empty(),
                }
            }
            RuleAction::Redirect(r) => Route::Redirect(r),
            RuleAction::Fixed(f) => Route::Fixed(f),
        }
    }
}

#[cold]
fn unreachable_empty() -> Route<'static> {
    static NONE: std::sync::OnceLock<FixedResponse> = std::sync::OnceLock::new();
    Route::Fixed(NONE.get_or_init(|| FixedResponse {
        status: 503,
        body: "no target group\n".to_string(),
        content_type: "text/plain".to_string(),
    }))
}

#[cfg(test)]
mod tests;

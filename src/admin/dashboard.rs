//! `GET /`: the dashboard, one self-contained HTML page (`dashboard.html`, embedded at build
//! time) whose script polls `/status` and `/series` every second and draws listeners, target
//! groups and latency charts; it drains and registers targets through the admin API.
//!
//! Runs on the admin thread, on request; owns nothing but the page and its Content-Security-Policy
//! (computed once). The page is static and carries no data, so it is served without the admin
//! token; the data endpoints it calls require the token, which the page asks for and sends only
//! in the `Authorization` header.

use std::sync::OnceLock;

use base64::Engine as _;

use super::Reply;

/// The page (inline CSS, JS and SVG; no outside resources).
pub const PAGE: &str = include_str!("dashboard.html");

/// The answer to `GET /`.
pub fn page() -> Reply {
    let mut r = Reply::text(200, "text/html; charset=utf-8", PAGE.to_string());
    r.extra.push(("Content-Security-Policy", csp().to_string()));
    r.extra
        .push(("X-Content-Type-Options", "nosniff".to_string()));
    r.extra.push(("X-Frame-Options", "DENY".to_string()));
    r.extra.push(("Referrer-Policy", "no-referrer".to_string()));
    r
}

/// The policy: only the page's own inline script and style (by hash) run, fetches go only to
/// the admin address itself, nothing may frame the page.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hashes(PAGE, "script"),
            hashes(PAGE, "style")
        )
    })
}

/// CSP source expressions (`'sha256-…'`) for the contents of every `<tag>…</tag>` in `page`.
fn hashes(page: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = ring::digest::digest(&ring::digest::SHA256, &body.as_bytes()[..end]);
        out.push(format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
        ));
        rest = &body[end + close.len()..];
    }
    if out.is_empty() {
        "'none'".to_string()
    } else {
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_small() {
        assert!(PAGE.len() < 64 * 1024, "{} bytes", PAGE.len());
        // The SVG namespace is a name, not a fetch.
        let page = PAGE.replace("'http://www.w3.org/2000/svg'", "");
        for outside in [
            "http:",
            "https:",
            "src=",
            "//cdn",
            "@import",
            "url(",
            "<link rel=\"style",
        ] {
            assert!(!page.contains(outside), "the page refers to {outside}");
        }
        assert_eq!(PAGE.matches("<script>").count(), 1);
        assert_eq!(PAGE.matches("<style>").count(), 1);
        assert!(
            !PAGE.contains(" style=\""),
            "inline style attributes break the CSP"
        );
    }

    #[test]
    fn the_policy_hashes_the_inline_script_and_style() {
        let p = csp();
        assert!(p.contains("script-src 'sha256-"), "{p}");
        assert!(p.contains("style-src 'sha256-"), "{p}");
        assert!(p.contains("connect-src 'self'"), "{p}");
        assert_eq!(hashes("<p>no script</p>", "script"), "'none'");
        // The well-known hash of an empty script.
        assert_eq!(
            hashes("<script></script>", "script"),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }
}

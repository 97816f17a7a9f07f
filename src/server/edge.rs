//! The server's edge: one layer in front of every route (the page, the API, the
//! fallback) that decides whether a request may reach a route at all, and adds the
//! headers every answer carries. In order:
//!
//! 1. **Host** (DNS rebinding): a page on another site can rebind its own name to
//!    127.0.0.1, but its requests still name that site in `Host`. Only loopback names,
//!    the bound address and `--public-host` names are served; anything else gets 421.
//! 2. **Cross-site** (CSRF, cross-site reads): a request whose `Origin` is not the
//!    server's own, or that a browser marks `Sec-Fetch-Site: cross-site`/`same-site`,
//!    gets 403, except a plain top-level navigation to the page.
//! 3. **Size**: a `Content-Length` over the route's limit gets 413 before any body byte
//!    is read.
//! 4. **Token** (when set): `Authorization: Bearer`, the session cookie, or `?token=`
//!    (percent-decoded). The page's `/?token=` sets the cookie (`HttpOnly`,
//!    `SameSite=Strict`) and redirects to `/`, so the token leaves the address bar.
//! 5. **Headers** on every answer: `nosniff`, `no-referrer`, `same-origin` resources,
//!    no framing. The page adds its own Content-Security-Policy.
//!
//! Timeouts and the connection limit are the connection loop's (`super::listen`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::error_response;

/// The one route that takes uploads (its body limit is `--max-upload-mb`).
pub const UPLOAD_ROUTE: &str = "/api/search/image";

/// Largest body of every other route (JSON requests).
pub const JSON_BODY_LIMIT: usize = 1 << 20;

/// What the edge lets through.
pub struct Edge {
    /// The address the server is bound to.
    bound: SocketAddr,
    /// `--public-host` names, lower case, without a port.
    public_hosts: Vec<String>,
    token: Option<Token>,
    max_upload_bytes: usize,
}

/// The token and what stands for it in the session cookie.
struct Token {
    secret: String,
    /// The cookie's name (one per port: cookies do not tell ports apart).
    cookie_name: String,
    /// The cookie's value: derived from the token, not the token itself.
    session: String,
}

impl Edge {
    /// The edge of a server bound to `bound`.
    pub fn new(
        bound: SocketAddr,
        public_hosts: &[String],
        token: Option<&str>,
        max_upload_bytes: usize,
    ) -> Self {
        let token = token.filter(|t| !t.is_empty()).map(|secret| Token {
            secret: secret.to_string(),
            cookie_name: format!("qseek_session_{}", bound.port()),
            session: blake3::keyed_hash(
                blake3::hash(secret.as_bytes()).as_bytes(),
                b"qseek session cookie",
            )
            .to_hex()
            .to_string(),
        });
        Self {
            bound,
            public_hosts: public_hosts
                .iter()
                .map(|h| normal_host(host_of(h)))
                .collect(),
            token,
            max_upload_bytes,
        }
    }

    /// Whether a `Host` (or absolute URI authority) names this server.
    fn host_allowed(&self, authority: &str) -> bool {
        let host = normal_host(host_of(authority));
        if host == "localhost" || self.public_hosts.contains(&host) {
            return true;
        }
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return false;
        };
        // An address is no rebinding: a browser's page on it is of its own origin. On
        // every interface, any address of this machine may be the one a client used.
        ip.is_loopback() || ip == self.bound.ip() || self.bound.ip().is_unspecified()
    }

    /// Whether an `Origin` is this server's own: the same authority as `Host` (any
    /// scheme: a TLS proxy in front), or a `--public-host` name.
    fn own_origin(&self, origin: &str, host: &str) -> bool {
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        authority.eq_ignore_ascii_case(host)
            || self.public_hosts.contains(&normal_host(host_of(authority)))
    }

    /// Why a request is refused as cross-site, if it is.
    fn cross_site(&self, req: &Request, host: &str) -> Option<&'static str> {
        let headers = req.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            let own = origin.to_str().is_ok_and(|o| self.own_origin(o, host));
            if !own {
                return Some("a request from another site (its Origin is not this server)");
            }
        }
        let site = header_str(headers, "sec-fetch-site");
        if matches!(site, Some("cross-site" | "same-site")) && !is_page_navigation(req) {
            return Some("a request from another site (Sec-Fetch-Site)");
        }
        None
    }

    /// The body limit of a request's route.
    fn body_limit(&self, req: &Request) -> usize {
        if req.method() == Method::POST && req.uri().path() == UPLOAD_ROUTE {
            self.max_upload_bytes
        } else {
            JSON_BODY_LIMIT
        }
    }
}

/// Whether `GET /` is a browser's top-level navigation (a link or the address bar).
fn is_page_navigation(req: &Request) -> bool {
    let headers = req.headers();
    matches!(*req.method(), Method::GET | Method::HEAD)
        && req.uri().path() == "/"
        && header_str(headers, "sec-fetch-mode") == Some("navigate")
        && header_str(headers, "sec-fetch-dest") == Some("document")
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The host of a `host[:port]` authority; a bracketed IPv6 address keeps its brackets.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// The value of a query's `token=` parameter, if `kv` is one.
fn token_param(kv: &str) -> Option<&str> {
    kv.strip_prefix("token=")
}

/// A host name compared as DNS does: case-insensitive, the root's dot dropped.
fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The request's authority: its absolute URI's, else `Host`'s.
fn authority(req: &Request) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    header_str(req.headers(), "host").map(str::to_string)
}

/// The layer: every request goes through it, whatever its route.
pub async fn guard(State(edge): State<Arc<Edge>>, req: Request, next: Next) -> Response {
    let mut response = check(&edge, req, next).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn check(edge: &Edge, req: Request, next: Next) -> Response {
    let Some(host) = authority(&req).filter(|h| edge.host_allowed(h)) else {
        return error_response(
            StatusCode::MISDIRECTED_REQUEST,
            "this server does not answer for that host name (see --public-host)",
            serde_json::Value::Null,
        );
    };
    if let Some(why) = edge.cross_site(&req, &host) {
        return error_response(StatusCode::FORBIDDEN, why, serde_json::Value::Null);
    }
    let limit = edge.body_limit(&req);
    let declared = header_str(req.headers(), "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut r = error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over the limit of {limit} bytes"),
            serde_json::json!({"limit_bytes": limit}),
        );
        // The body is left unread: the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let Some(token) = &edge.token else {
        return next.run(req).await;
    };
    // The page's address never keeps a token, however the request proved it knows it
    // (a reload of `/?token=` carries the cookie too).
    let token_in_address = is_page_request(&req)
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| token_param(kv).is_some()));
    match knows_token(token, &req) {
        true if token_in_address => {
            // Keep the token out of the address bar, history and later links.
            let location = without_token(req.uri().query());
            let cookie = format!(
                "{}={}; Path=/; HttpOnly; SameSite=Strict",
                token.cookie_name, token.session
            );
            let mut r = StatusCode::SEE_OTHER.into_response();
            let h = r.headers_mut();
            h.insert(
                header::LOCATION,
                HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/")),
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                h.insert(header::SET_COOKIE, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        true => next.run(req).await,
        false => error_response(
            StatusCode::UNAUTHORIZED,
            "this server needs its token: `Authorization: Bearer TOKEN`, or open the page as /?token=TOKEN",
            serde_json::Value::Null,
        ),
    }
}

fn is_page_request(req: &Request) -> bool {
    req.method() == Method::GET && req.uri().path() == "/"
}

/// Whether a request proves it knows the token: by header, session cookie or query.
fn knows_token(token: &Token, req: &Request) -> bool {
    let headers = req.headers();
    let bearer = header_str(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|b| same_secret(b.as_bytes(), token.secret.as_bytes())) {
        return true;
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, v)| {
            k == token.cookie_name && same_secret(v.as_bytes(), token.session.as_bytes())
        });
    if cookie {
        return true;
    }
    let given = req.uri().query().into_iter().flat_map(|q| q.split('&'));
    for value in given.filter_map(token_param) {
        // As a form encodes it (`+` a space) and as a URL does (`+` itself).
        let strict = percent_decode(value.as_bytes());
        let form = percent_decode(value.replace('+', " ").as_bytes());
        if [strict, form]
            .iter()
            .any(|g| same_secret(g, token.secret.as_bytes()))
        {
            return true;
        }
    }
    false
}

/// `/` and the query without its `token` parameters.
fn without_token(query: Option<&str>) -> String {
    let rest: Vec<&str> = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|kv| !kv.is_empty() && token_param(kv).is_none())
        .collect();
    if rest.is_empty() {
        "/".to_string()
    } else {
        format!("/?{}", rest.join("&"))
    }
}

/// `%XX` escapes decoded; a malformed escape is kept as written.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Compares without stopping at the first difference (no timing hint).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(bound: &str, public: &[&str]) -> Edge {
        let public: Vec<String> = public.iter().map(|s| s.to_string()).collect();
        Edge::new(bound.parse().unwrap(), &public, Some("t"), 10)
    }

    #[test]
    fn hosts_are_loopback_names_the_bound_address_and_public_names() {
        let local = edge("127.0.0.1:7878", &["Photos.Example.org"]);
        let lan = edge("0.0.0.0:7878", &[]);
        // (host, on 127.0.0.1, on 0.0.0.0)
        let cases = [
            ("localhost:7878", true, true),
            ("LOCALHOST", true, true),
            ("127.0.0.1:7878", true, true),
            ("[::1]:7878", true, true),
            ("[::1]", true, true),
            ("photos.example.org", true, false),
            ("photos.example.org.:443", true, false),
            ("attacker.example:7878", false, false),
            ("localhost.attacker.example", false, false),
            ("192.168.1.5:7878", false, true),
            ("", false, false),
        ];
        for (host, on_local, on_lan) in cases {
            assert_eq!(local.host_allowed(host), on_local, "{host} on 127.0.0.1");
            assert_eq!(lan.host_allowed(host), on_lan, "{host} on 0.0.0.0");
        }
    }

    #[test]
    fn an_origin_is_own_when_it_names_the_host_or_a_public_name() {
        let e = edge("127.0.0.1:7878", &["photos.example.org"]);
        let cases = [
            ("http://127.0.0.1:7878", "127.0.0.1:7878", true),
            ("http://LOCALHOST:7878", "localhost:7878", true),
            ("https://photos.example.org", "127.0.0.1:7878", true),
            ("http://localhost:7879", "localhost:7878", false),
            ("http://127.0.0.1:7878", "localhost:7878", false),
            ("null", "127.0.0.1:7878", false),
            ("http://evil.example", "127.0.0.1:7878", false),
            ("ftp://127.0.0.1:7878", "127.0.0.1:7878", false),
        ];
        for (origin, host, own) in cases {
            assert_eq!(e.own_origin(origin, host), own, "{origin} for {host}");
        }
    }

    #[test]
    fn percent_decoding_and_the_token_free_location() {
        let cases: [(&str, &[u8]); 5] = [
            ("a%2Bb%2Fc%3Dd%25e", b"a+b/c=d%e"),
            ("plain", b"plain"),
            ("bad%zz", b"bad%zz"),
            ("end%4", b"end%4"),
            ("%41", b"A"),
        ];
        for (given, want) in cases {
            assert_eq!(percent_decode(given.as_bytes()), want, "{given}");
        }
        assert_eq!(without_token(Some("token=x")), "/");
        assert_eq!(without_token(Some("q=cat&token=x")), "/?q=cat");
        assert_eq!(without_token(None), "/");
    }
}

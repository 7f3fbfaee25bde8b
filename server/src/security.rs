//! Cross-site request forgery protection and security headers for every response.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Paths that take cross-site POSTs by design, each authenticated by its own means.
const CROSS_SITE_POSTS: &[&str] = &[
    // Keycloak's server posts a signed logout token; no browser is involved.
    "/auth/backchannel-logout",
];

/// Rejects state-changing requests that a browser sent from another site.
///
/// A request passes when `Origin` equals the portal's public origin, or, for browsers that
/// send no `Origin`, when `Referer` starts with it. `Sec-Fetch-Site: cross-site` or
/// `same-site` is rejected outright, because a sibling subdomain is another site too. The
/// session cookie's `SameSite=Lax` is a second barrier, not the only one.
pub async fn reject_cross_site(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if is_safe_method(request.method()) || CROSS_SITE_POSTS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let origin = public_origin(&state);
    if let Err(reason) = check_same_origin(request.headers(), &origin) {
        tracing::warn!(
            security_event = "csrf_rejected",
            method = %request.method(),
            path = request.uri().path(),
            %reason,
            "rejected a cross-site request"
        );
        let body = format!(
            "Cross-site request rejected: {reason}. Submit the form from the portal at {origin}."
        );
        return (StatusCode::FORBIDDEN, body).into_response();
    }
    next.run(request).await
}

fn is_safe_method(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Returns the portal's origin (`scheme://host[:port]`) as browsers write it in `Origin`.
pub fn public_origin(state: &AppState) -> String {
    state.config.public_url.origin().ascii_serialization()
}

/// Checks the headers that browsers set on every POST against `origin`.
pub fn check_same_origin(headers: &HeaderMap, origin: &str) -> Result<(), String> {
    if let Some(site) = header_text(headers, "sec-fetch-site") {
        if site == "cross-site" || site == "same-site" {
            return Err(format!("Sec-Fetch-Site is {site}"));
        }
    }
    if let Some(sent) = header_text(headers, header::ORIGIN.as_str()) {
        return if sent == origin {
            Ok(())
        } else {
            Err(format!("Origin {sent} is not {origin}"))
        };
    }
    match header_text(headers, header::REFERER.as_str()) {
        Some(referer) if referer.starts_with(&format!("{origin}/")) => Ok(()),
        Some(_) => Err(format!("Referer is not a page of {origin}")),
        None => Err("the request has neither an Origin nor a Referer header".into()),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Adds the security headers that every response needs. Pages set their own
/// Content-Security-Policy with a per-response nonce; everything else gets a policy that
/// allows nothing.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let is_asset =
        request.uri().path().starts_with("/pkg/") || request.uri().path() == "/favicon.svg";
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    // Pages and server-function results carry personal data; only static assets may be
    // kept by browsers and proxies.
    if !is_asset {
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "http://127.0.0.1:3000";

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn same_origin_passes() {
        assert!(check_same_origin(&headers(&[("origin", ORIGIN)]), ORIGIN).is_ok());
        assert!(
            check_same_origin(&headers(&[("referer", "http://127.0.0.1:3000/me")]), ORIGIN).is_ok()
        );
    }

    #[test]
    fn other_origin_is_rejected() {
        let error =
            check_same_origin(&headers(&[("origin", "http://evil.test")]), ORIGIN).unwrap_err();
        assert!(error.contains("http://evil.test"), "{error}");
    }

    #[test]
    fn null_origin_is_rejected() {
        assert!(check_same_origin(&headers(&[("origin", "null")]), ORIGIN).is_err());
    }

    #[test]
    fn lookalike_referer_is_rejected() {
        let result = check_same_origin(
            &headers(&[("referer", "http://127.0.0.1:3000.evil.test/")]),
            ORIGIN,
        );
        assert!(result.is_err());
    }

    #[test]
    fn cross_site_fetch_metadata_is_rejected() {
        let result = check_same_origin(
            &headers(&[("origin", ORIGIN), ("sec-fetch-site", "cross-site")]),
            ORIGIN,
        );
        assert!(result.is_err());
    }

    #[test]
    fn missing_headers_are_rejected() {
        assert!(check_same_origin(&HeaderMap::new(), ORIGIN).is_err());
    }
}

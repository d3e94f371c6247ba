//! Authentication, authorisation and rate limiting of every HTTP request, in one place.
//!
//! [`ROUTES`] gives each endpoint (method and route pattern) its permission class, or `None`
//! for the few public ones (the dashboard's static files, `/healthz`, `/readyz`, and channel
//! webhooks, which are verified by their HMAC signature instead). An endpoint missing from the
//! table is refused to everyone (`forbidden`), so a new route cannot be open by mistake.
//!
//! A protected request must carry `Authorization: Bearer <key>`: none gives 401
//! `unauthorized` (with `WWW-Authenticate: Bearer`), an unknown or revoked key 401
//! `unauthorized`, a key whose role lacks the class 403 `forbidden`, and a key over its rate
//! (`auth.http_requests_per_second`) 429 `overloaded` with `Retry-After`. The handler then runs
//! as that key ([`crate::auth::acting_as`]): its audit entries name the key.
//!
//! Roles that do not see customers (readonly, sync) get every JSON response with each
//! `"customer"` field replaced by `"[hidden]"`, and may not filter by customer.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::api::ApiError;
use super::AppState;
use crate::auth::{acting_as, AuthError, Permission, Principal, HIDDEN};

/// Largest JSON response rewritten to hide customers (larger ones are refused to such roles).
const REDACT_BYTES_MAX: usize = 64 * 1024 * 1024;

use Permission as P;

/// Every endpoint's permission class (`None`: public).
pub const ROUTES: &[(&str, &str, Option<Permission>)] = &[
    ("GET", "/", None),
    ("GET", "/assets/app.js", None),
    ("GET", "/assets/style.css", None),
    ("GET", "/healthz", None),
    ("GET", "/readyz", None),
    ("GET", "/metrics", Some(P::Read)),
    ("GET", "/api/v1/status", Some(P::Read)),
    ("GET", "/api/v1/skus", Some(P::Read)),
    ("GET", "/api/v1/skus/{sku}", Some(P::Read)),
    ("DELETE", "/api/v1/skus/{sku}", Some(P::Stock)),
    ("PUT", "/api/v1/skus/{sku}/stock", Some(P::Sync)),
    ("POST", "/api/v1/skus/{sku}/adjustments", Some(P::Stock)),
    ("PUT", "/api/v1/skus/{sku}/safety-stock", Some(P::Stock)),
    ("PUT", "/api/v1/skus/{sku}/limits", Some(P::Stock)),
    ("PUT", "/api/v1/skus/{sku}/locations/{location}", Some(P::Sync)),
    ("POST", "/api/v1/skus/{sku}/locations/{location}/adjustments", Some(P::Stock)),
    ("PUT", "/api/v1/skus/{sku}/incoming/{reference}", Some(P::Sync)),
    ("POST", "/api/v1/skus/{sku}/incoming/{reference}/receipts", Some(P::Sync)),
    ("PUT", "/api/v1/skus/{sku}/preorder", Some(P::Stock)),
    ("GET", "/api/v1/reservations/{id}", Some(P::Read)),
    ("GET", "/api/v1/audit", Some(P::Audit)),
    ("GET", "/api/v1/alerts", Some(P::Read)),
    ("GET", "/api/v1/alerts/history", Some(P::Read)),
    ("POST", "/api/v1/alerts/{id}/ack", Some(P::Operate)),
    ("GET", "/api/v1/channels", Some(P::Read)),
    ("GET", "/api/v1/channels/{name}", Some(P::Read)),
    ("POST", "/api/v1/channels/{name}/sync", Some(P::Sync)),
    ("GET", "/api/v1/channels/{name}/pulls", Some(P::Read)),
    ("GET", "/api/v1/channels/{name}/orders", Some(P::Read)),
    ("GET", "/api/v1/channels/{name}/orders/{order}", Some(P::Read)),
    ("POST", "/api/v1/channels/{name}/webhook", None),
    ("GET", "/api/v1/tickets", Some(P::Read)),
    ("POST", "/api/v1/tickets", Some(P::Operate)),
    ("GET", "/api/v1/tickets/{id}", Some(P::Read)),
    ("POST", "/api/v1/tickets/{id}/transitions", Some(P::Operate)),
    ("POST", "/api/v1/aftersales/scan", Some(P::Operate)),
    ("GET", "/api/v1/aftersales/parcels", Some(P::Read)),
    ("GET", "/api/v1/aftersales/report", Some(P::Read)),
    ("GET", "/api/v1/events", Some(P::Read)),
    ("POST", "/api/v1/bulk", Some(P::Stock)),
    ("POST", "/api/v1/feeds/wms", Some(P::Sync)),
    ("GET", "/api/v1/keys", Some(P::Admin)),
    ("POST", "/api/v1/keys", Some(P::Admin)),
    ("POST", "/api/v1/keys/{id}/revoke", Some(P::Admin)),
    ("GET", "/api/v1/approvals", Some(P::Stock)),
    ("POST", "/api/v1/approvals/{id}/approve", Some(P::Admin)),
    ("POST", "/api/v1/approvals/{id}/reject", Some(P::Stock)),
];

enum Class {
    Public,
    Protected(Permission),
    /// The path exists with other methods: let the router answer 405.
    OtherMethod,
    Undefined,
}

fn class_of(method: &Method, path: &str) -> Class {
    let mut path_known = false;
    for (m, p, class) in ROUTES {
        if *p == path {
            path_known = true;
            if *m == method.as_str() || (method == Method::HEAD && *m == "GET") {
                return class.map_or(Class::Public, Class::Protected);
            }
        }
    }
    if path_known {
        Class::OtherMethod
    } else {
        Class::Undefined
    }
}

fn unauthorized(why: AuthError) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_string()).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

/// The bearer token of a request (empty when absent).
fn bearer(request: &Request) -> &[u8] {
    let value = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    let value = value.unwrap_or_default();
    match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => value[7..].trim_ascii(),
        _ => b"",
    }
}

/// The middleware (installed as a route layer, so it sees the matched route).
pub async fn guard(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let shared = &app.shared;
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let path = path.unwrap_or_else(|| request.uri().path().to_string());
    let permission = match class_of(request.method(), &path) {
        Class::Public | Class::OtherMethod => return next.run(request).await,
        Class::Undefined => {
            return forbidden(format!("no permission is defined for {path}: refused to all"));
        }
        Class::Protected(permission) => permission,
    };
    let principal = match shared.auth_enabled() {
        false => Principal::dev(),
        true => match shared.keys.authenticate(bearer(&request)) {
            Ok(principal) => principal,
            Err(why) => return unauthorized(why),
        },
    };
    if !principal.allows(permission) {
        let (role, class) = (principal.role.name(), permission.name());
        return forbidden(format!("the {role} role may not perform {class} operations"));
    }
    let sees_customers = principal.role.sees_customers();
    if !sees_customers && request.uri().query().is_some_and(|q| q.contains("customer=")) {
        let role = principal.role.name();
        return forbidden(format!("the {role} role may not filter by customer"));
    }
    if let (true, Some(limiter)) = (shared.auth_enabled(), &shared.http_limiter) {
        if let Err(not_until) = limiter.check_key(&principal.key_id) {
            let clock = governor::clock::DefaultClock::default();
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&clock));
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "more than {} requests per second with this key",
                    shared.config.auth.http_requests_per_second
                ),
            )
            .into_response();
            let seconds = wait.as_secs() + 1;
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
    }
    let response = acting_as(principal, next.run(request)).await;
    if sees_customers {
        response
    } else {
        hide_customers(response).await
    }
}

/// Rewrites a JSON response with every `"customer"` string replaced by [`HIDDEN`].
async fn hide_customers(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, REDACT_BYTES_MAX).await else {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "response too large")
            .into_response();
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    hide(&mut value);
    let bytes = serde_json::to_vec(&value).expect("a JSON value serialises");
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

fn hide(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                match field {
                    Value::String(text) if key == "customer" && !text.is_empty() => {
                        *text = HIDDEN.to_string();
                    }
                    other => hide(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_are_hidden_at_any_depth() {
        let mut value = serde_json::json!({
            "customer": "c-1",
            "holds": [{"customer": "c-2", "qty": 1}, {"customer": ""}],
            "nested": {"deeper": {"customer": "c-3", "other": "c-4"}},
        });
        hide(&mut value);
        let text = value.to_string();
        assert!(!text.contains("c-1") && !text.contains("c-2") && !text.contains("c-3"));
        assert!(text.contains("c-4"), "only customer fields are hidden");
        assert_eq!(value["holds"][1]["customer"], "", "an empty one stays empty");
    }

    #[test]
    fn every_route_is_classified_once() {
        let mut seen = std::collections::HashSet::new();
        for (method, path, _) in ROUTES {
            assert!(seen.insert((method, path)), "{method} {path} is listed twice");
        }
        assert!(matches!(class_of(&Method::GET, "/nope"), Class::Undefined));
        assert!(matches!(class_of(&Method::DELETE, "/api/v1/keys"), Class::OtherMethod));
        assert!(matches!(class_of(&Method::HEAD, "/healthz"), Class::Public));
    }
}

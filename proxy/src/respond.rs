//! Responses the proxy writes itself: refusals, and the header hygiene
//! applied to everything it forwards.

use std::time::Duration;

use bytes::Buf;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::decision::Reason;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy returns.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub const DECISION_HEADER: &str = "x-tollgate-decision";
pub const REASON_HEADER: &str = "x-tollgate-reason";
pub const ID_HEADER: &str = "x-tollgate-id";

/// What was refused, for the one-line body: `GET http://evil.example/`.
pub struct Refused<'a> {
    pub what: &'a str,
    pub phase: Option<&'a str>,
    pub id: &'a str,
}

/// The refusal of DESIGN.md: the reason's status, `X-Tollgate-*` headers and
/// one line a person or an agent understands, e.g.
/// `tollgate: blocked GET https://evil.example/ (phase agent): host not in allowlist`.
pub fn refusal(reason: Reason, refused: &Refused<'_>) -> Response<ProxyBody> {
    let verb = match reason.status() {
        StatusCode::BAD_GATEWAY => "could not deliver",
        _ => "blocked",
    };
    let phase = refused
        .phase
        .map(|p| format!(" (phase {p})"))
        .unwrap_or_default();
    let line = format!(
        "tollgate: {verb} {}{phase}: {}\n",
        refused.what,
        reason.explain()
    );
    let mut response = Response::new(full(line));
    *response.status_mut() = reason.status();
    let headers = response.headers_mut();
    headers.insert(DECISION_HEADER, HeaderValue::from_static("deny"));
    headers.insert(REASON_HEADER, HeaderValue::from_static(reason.code()));
    if let Ok(id) = HeaderValue::from_str(refused.id) {
        headers.insert(ID_HEADER, id);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Bytes of a refused request's body read before answering: a small upload
/// (a form, a JSON document) finishes, so the client sees the refusal
/// instead of a reset stream (curl reports an HTTP/2 framing error when the
/// stream is reset before it finished sending). Larger bodies are cut off.
const DISCARD_LIMIT: usize = 64 * 1024;
/// How long a refusal waits for that small body.
const DISCARD_TIME: Duration = Duration::from_millis(500);

/// Reads and drops up to [`DISCARD_LIMIT`] bytes of a refused request's body.
pub async fn discard_body<B>(mut body: B)
where
    B: http_body::Body + Unpin,
{
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.remaining());
            if seen > DISCARD_LIMIT {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

pub fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the
/// proxy credentials a client meant for us and the legacy `Proxy-Connection`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_carries_headers_and_one_line() {
        let response = refusal(
            Reason::NotAllowlisted,
            &Refused {
                what: "GET https://evil.example/",
                phase: Some("agent"),
                id: "abc-1",
            },
        );
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[DECISION_HEADER], "deny");
        assert_eq!(response.headers()[REASON_HEADER], "not-allowlisted");
        assert_eq!(response.headers()[ID_HEADER], "abc-1");
    }

    #[test]
    fn hop_by_hop_headers_go_including_nominated_ones() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }
}

//! Graph failures and the parsing of Graph's error envelope.

use serde_json::Value;

/// How much of a non-JSON error body is kept as the message.
const SNIPPET_CHARS: usize = 200;

/// A Graph failure, typed so callers branch on status + code, never on message text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    /// Graph answered with an error envelope (after retries, for retryable statuses).
    #[error("Microsoft Graph {status} {code}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// `error.code`, e.g. `Request_BadRequest`; `unknown` when the body was not an envelope.
        code: String,
        /// `error.message`, for people only: Microsoft changes these texts.
        message: String,
        /// `error.details[0].target`, e.g. `userPrincipalName`.
        target: Option<String>,
        /// `error.details[0].code`, e.g. `ObjectConflict`.
        detail_code: Option<String>,
        /// Graph's `request-id`, to quote to Microsoft support.
        request_id: Option<String>,
    },
    /// 401: the access token is missing, invalid or expired: the caller must refresh and retry once.
    #[error("Microsoft Graph refused the access token ({code}): {message}")]
    Unauthorized {
        /// `error.code`, e.g. `InvalidAuthenticationToken`.
        code: String,
        /// `error.message`.
        message: String,
    },
    /// Still throttled (429/503/504) after the retry budget.
    #[error("Microsoft Graph is throttling or unavailable (HTTP {status}); gave up after {attempts} attempts")]
    Exhausted {
        /// The status of the last answer.
        status: u16,
        /// How many times the request was sent.
        attempts: u32,
        /// The message of the last answer.
        message: String,
    },
    /// No usable answer: connection failure or timeout. From a request that is not safe to
    /// repeat (POST /users) it means the outcome is unknown: it may have been applied.
    #[error("could not reach Microsoft Graph: {0}")]
    Network(String),
    /// Graph answered something idbridge cannot read, or a link idbridge refuses to follow.
    #[error("unexpected answer from Microsoft Graph: {0}")]
    Decode(String),
}

impl GraphError {
    /// The object (user, manager, …) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, GraphError::Api { status: 404, .. })
    }

    /// Another object already holds a unique value (UPN, ImmutableID, proxy address).
    pub fn is_conflict(&self) -> bool {
        match self {
            GraphError::Api {
                code,
                detail_code,
                message,
                ..
            } => {
                code.eq_ignore_ascii_case("ObjectConflict")
                    || detail_code
                        .as_deref()
                        .is_some_and(|c| c.eq_ignore_ascii_case("ObjectConflict"))
                    // Some conflicts come without details; this text is Graph's for all of them.
                    || message.contains("already exists")
            }
            _ => false,
        }
    }

    /// The HTTP status Graph answered, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Api { status, .. } | GraphError::Exhausted { status, .. } => Some(*status),
            GraphError::Unauthorized { .. } => Some(401),
            GraphError::Network(_) | GraphError::Decode(_) => None,
        }
    }

    /// The error for a final non-2xx answer whose raw body is `body`.
    pub(super) fn from_body(status: u16, body: &[u8], request_id: Option<String>) -> GraphError {
        Envelope::from_bytes(status, body).into_error(status, request_id)
    }

    /// The error for a non-2xx answer whose body is already JSON (a `$batch` sub-response).
    pub(super) fn from_value(
        status: u16,
        body: Option<&Value>,
        request_id: Option<String>,
    ) -> GraphError {
        Envelope::parse(status, body).into_error(status, request_id)
    }
}

/// The fields of Graph's error envelope idbridge uses.
#[derive(Debug)]
pub(super) struct Envelope {
    pub(super) code: String,
    pub(super) message: String,
    target: Option<String>,
    detail_code: Option<String>,
    request_id: Option<String>,
}

impl Envelope {
    /// Reads `{"error":{"code","message","details":[…],"innerError":{"request-id"}}}`; anything
    /// else becomes code `unknown` with a snippet of the body as the message.
    pub(super) fn parse(status: u16, body: Option<&Value>) -> Envelope {
        let Some(error) = body.and_then(|b| b.get("error")).filter(|e| e.is_object()) else {
            let text = match body {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            return Envelope::text(status, &text);
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let detail = error
            .get("details")
            .and_then(Value::as_array)
            .and_then(|d| d.first());
        let inner = error.get("innerError").or_else(|| error.get("innererror"));
        Envelope {
            code: text(error.get("code"))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            message: text(error.get("message")).unwrap_or_default(),
            target: text(detail.and_then(|d| d.get("target"))),
            detail_code: text(detail.and_then(|d| d.get("code"))),
            request_id: text(inner.and_then(|i| i.get("request-id"))),
        }
    }

    /// An answer that is not an envelope (a proxy's HTML page, an empty body…).
    pub(super) fn from_bytes(status: u16, body: &[u8]) -> Envelope {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => Envelope::parse(status, Some(&value)),
            Err(_) => Envelope::text(status, &String::from_utf8_lossy(body)),
        }
    }

    fn text(status: u16, body: &str) -> Envelope {
        let snippet: String = body.trim().chars().take(SNIPPET_CHARS).collect();
        Envelope {
            code: "unknown".into(),
            message: if snippet.is_empty() {
                format!("HTTP {status} without an error body")
            } else {
                snippet
            },
            target: None,
            detail_code: None,
            request_id: None,
        }
    }

    fn into_error(self, status: u16, request_id: Option<String>) -> GraphError {
        if status == 401 {
            return GraphError::Unauthorized {
                code: self.code,
                message: self.message,
            };
        }
        GraphError::Api {
            status,
            code: self.code,
            message: self.message,
            target: self.target,
            detail_code: self.detail_code,
            // The response header and innerError carry the same id; the header survives proxies
            // that rewrite bodies.
            request_id: request_id.or(self.request_id),
        }
    }
}

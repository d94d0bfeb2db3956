//! JSON batching (`POST /$batch`): up to 20 requests per round trip, each answered on its own.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::warn;

use super::retry::{is_throttled, may_retry_status, parse_retry_after, Attempts};
use super::{decode, is_idempotent, Envelope, GraphClient, GraphError, OUTCOME_UNKNOWN};

/// Graph's limit of requests in one batch.
const MAX_BATCH: usize = 20;

/// One request inside a JSON batch.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    /// The caller's id, echoed in the matching [`BatchResponse`].
    pub id: String,
    /// The HTTP method.
    pub method: Method,
    /// Relative to the version root, e.g. "/users/{id}".
    pub url: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

/// Its result: status plus body (error envelopes parsed into GraphError for non-2xx).
#[derive(Debug, Clone)]
pub struct BatchResponse {
    /// The id of the request this answers.
    pub id: String,
    /// The 2xx body (`None` for 204), or the failure of this request alone.
    pub result: Result<Option<Value>, GraphError>,
}

#[derive(Serialize)]
struct WireBatch<'a> {
    requests: Vec<WireRequest<'a>>,
}

#[derive(Serialize)]
struct WireRequest<'a> {
    id: String,
    method: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<WireHeaders>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a Value>,
}

/// Graph requires a Content-Type on every sub-request that has a body.
#[derive(Serialize)]
struct WireHeaders {
    #[serde(rename = "Content-Type")]
    content_type: &'static str,
}

#[derive(Deserialize)]
struct WireAnswer {
    responses: Vec<WireResponse>,
}

#[derive(Deserialize)]
struct WireResponse {
    id: String,
    status: u16,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
    #[serde(default)]
    body: Option<Value>,
}

impl WireResponse {
    /// A sub-response header; names are case-insensitive, values normally strings.
    fn header(&self, name: &str) -> Option<String> {
        let (_, value) = self
            .headers
            .as_ref()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))?;
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// One result per input position, filled as answers arrive.
type Results = Vec<Option<Result<Option<Value>, GraphError>>>;

impl GraphClient {
    /// Sends the requests in batches of at most 20 and returns one response per request, in
    /// input order. Throttled sub-requests are sent again (only they), within the retry budget.
    ///
    /// `Err` only when no request got an answer; a batch failing after others were answered
    /// gives its requests, and those not yet sent, that error as their result.
    pub async fn batch(
        &self,
        token: &str,
        requests: Vec<BatchRequest>,
    ) -> Result<Vec<BatchResponse>, GraphError> {
        let mut results: Results = vec![None; requests.len()];
        let mut start = 0;
        while start < requests.len() {
            let end = (start + MAX_BATCH).min(requests.len());
            if let Err(error) = self
                .batch_chunk(token, &requests, start..end, &mut results)
                .await
            {
                if results.iter().all(Option::is_none) {
                    return Err(error);
                }
                for slot in results.iter_mut().filter(|r| r.is_none()) {
                    *slot = Some(Err(error.clone()));
                }
                break;
            }
            start = end;
        }
        Ok(requests
            .into_iter()
            .zip(results)
            .map(|(request, result)| BatchResponse {
                id: request.id,
                result: result.unwrap_or_else(|| {
                    Err(GraphError::Decode("the batch request got no answer".into()))
                }),
            })
            .collect())
    }

    /// Sends `requests[range]` as one batch, then the throttled ones again until done or out of
    /// budget; fills `results`. `Err` when the batch as a whole failed.
    #[allow(clippy::indexing_slicing)] // reason: positions come from `range`, the caller's slice of `requests`/`results` (same length); answer ids are checked against `pending`
    async fn batch_chunk(
        &self,
        token: &str,
        requests: &[BatchRequest],
        range: Range<usize>,
        results: &mut Results,
    ) -> Result<(), GraphError> {
        let url = self.url("/$batch", &[])?;
        let all_idempotent = requests[range.clone()]
            .iter()
            .all(|r| is_idempotent(&r.method));
        let mut pending: Vec<usize> = range.collect();
        let mut attempts = Attempts::new(&self.policy);
        loop {
            let attempt = attempts.start();
            // Sub-request ids are input positions: unique and case-proof whatever the caller's ids.
            let wire = WireBatch {
                requests: pending
                    .iter()
                    .map(|&i| WireRequest {
                        id: i.to_string(),
                        method: requests[i].method.as_str(),
                        url: &requests[i].url,
                        headers: requests[i].body.as_ref().map(|_| WireHeaders {
                            content_type: "application/json",
                        }),
                        body: requests[i].body.as_ref(),
                    })
                    .collect(),
            };
            let body = serde_json::to_vec(&wire)
                .map_err(|e| GraphError::Decode(format!("cannot encode the batch: {e}")))?;
            let answer = match self.exchange(token, &Method::POST, &url, Some(&body)).await {
                Ok(answer) => answer,
                Err(failure) => {
                    if (all_idempotent || failure.not_sent) && attempts.can_retry() {
                        let wait = attempts.backoff();
                        warn!(attempt, wait_ms = wait.as_millis() as u64, error = %failure.message,
                            "Microsoft Graph unreachable for a batch; retrying");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    warn!(attempt, error = %failure.message, "Graph unreachable for a batch");
                    return Err(GraphError::Network(if all_idempotent || failure.not_sent {
                        format!("{} (after {attempt} attempts)", failure.message)
                    } else {
                        format!("{}; {OUTCOME_UNKNOWN}", failure.message)
                    }));
                }
            };
            let status = answer.status;
            if is_throttled(status) {
                if !may_retry_status(status, all_idempotent) {
                    warn!(status, attempt, request_id = ?answer.request_id,
                        "Microsoft Graph timed out on a batch that is not safe to repeat");
                    return Err(GraphError::Network(format!(
                        "Microsoft Graph timed out (HTTP {status}); {OUTCOME_UNKNOWN}"
                    )));
                }
                if attempts.can_retry() {
                    let wait = attempts.delay(answer.retry_after);
                    warn!(status, attempt, request_id = ?answer.request_id,
                        wait_ms = wait.as_millis() as u64,
                        "Microsoft Graph throttled a batch; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Err(GraphError::Exhausted {
                    status,
                    attempts: attempt,
                    message: Envelope::from_bytes(status, &answer.body).message,
                });
            }
            if !(200..300).contains(&status) {
                let error = GraphError::from_body(status, &answer.body, answer.request_id.clone());
                warn!(status, attempt, request_id = ?answer.request_id, error = %error,
                    "Microsoft Graph refused a batch");
                return Err(error);
            }
            let parsed: WireAnswer = decode(&answer)?;
            let mut by_position: HashMap<usize, WireResponse> = HashMap::new();
            for response in parsed.responses {
                match response.id.parse::<usize>() {
                    Ok(i) if pending.contains(&i) => {
                        by_position.insert(i, response);
                    }
                    _ => {
                        warn!(id = %response.id, "Graph answered an unknown batch request")
                    }
                }
            }
            // The throttled sub-requests, with what their last answer said.
            let mut again: Vec<(usize, u16, Option<Duration>, Option<Value>)> = Vec::new();
            for &i in &pending {
                let Some(response) = by_position.remove(&i) else {
                    results[i] = Some(Err(GraphError::Decode(
                        "Graph's batch answer has no response for this request".into(),
                    )));
                    continue;
                };
                let idempotent = is_idempotent(&requests[i].method);
                super::count_exchange(
                    super::metric_method(&requests[i].method),
                    Some(response.status),
                    response.header("Retry-After").is_some(),
                );
                if is_throttled(response.status) && may_retry_status(response.status, idempotent) {
                    let retry_after = response
                        .header("Retry-After")
                        .and_then(|v| parse_retry_after(&v));
                    again.push((i, response.status, retry_after, response.body));
                } else if is_throttled(response.status) {
                    results[i] = Some(Err(GraphError::Network(format!(
                        "Microsoft Graph timed out (HTTP {}); {OUTCOME_UNKNOWN}",
                        response.status
                    ))));
                } else {
                    results[i] = Some(sub_result(response, answer.request_id.as_deref()));
                }
            }
            if again.is_empty() {
                return Ok(());
            }
            if !attempts.can_retry() {
                warn!(
                    attempt,
                    throttled = again.len(),
                    "Microsoft Graph still throttling batch requests; giving up"
                );
                for (i, status, _, body) in again {
                    results[i] = Some(Err(GraphError::Exhausted {
                        status,
                        attempts: attempt,
                        message: Envelope::parse(status, body.as_ref()).message,
                    }));
                }
                return Ok(());
            }
            // Graph's advice: retry the throttled subset after the longest Retry-After among them.
            let backoff = attempts.backoff();
            let wait = again
                .iter()
                .map(|(_, _, retry_after, _)| {
                    retry_after.map_or(backoff, |d| attempts.delay(Some(d)))
                })
                .max()
                .unwrap_or(backoff);
            warn!(
                attempt,
                throttled = again.len(),
                wait_ms = wait.as_millis() as u64,
                "Microsoft Graph throttled batch requests; retrying those"
            );
            tokio::time::sleep(wait).await;
            pending = again.into_iter().map(|(i, ..)| i).collect();
        }
    }
}

/// A sub-response as the caller sees it.
fn sub_result(
    response: WireResponse,
    batch_request_id: Option<&str>,
) -> Result<Option<Value>, GraphError> {
    if (200..300).contains(&response.status) {
        return Ok(response.body.filter(|b| !b.is_null()));
    }
    let mut error = GraphError::from_value(
        response.status,
        response.body.as_ref(),
        response.header("request-id"),
    );
    // Without an id of its own, the batch's id still finds the exchange at Microsoft.
    if let GraphError::Api {
        request_id: id @ None,
        ..
    } = &mut error
    {
        *id = batch_request_id.map(str::to_owned);
    }
    Err(error)
}

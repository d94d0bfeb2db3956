//! TEMPORARY STUB with the agreed Graph client API, so the crate compiles while the real client
//! is written. Replaced wholesale by the Graph client implementation.
#![allow(dead_code, unused_variables)]

use std::time::Duration;

/// Retry behaviour for throttling and transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

/// A Graph failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    #[error("Microsoft Graph {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        target: Option<String>,
        detail_code: Option<String>,
        request_id: Option<String>,
    },
    #[error("Microsoft Graph refused the access token ({code}): {message}")]
    Unauthorized { code: String, message: String },
    #[error("Microsoft Graph is throttling or unavailable (HTTP {status}); gave up after {attempts} attempts")]
    Exhausted {
        status: u16,
        attempts: u32,
        message: String,
    },
    #[error("could not reach Microsoft Graph: {0}")]
    Network(String),
    #[error("unexpected answer from Microsoft Graph: {0}")]
    Decode(String),
}

/// A Microsoft 365 user.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GraphUser {
    pub id: String,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub surname: Option<String>,
    pub mail: Option<String>,
    pub account_enabled: Option<bool>,
    pub on_premises_immutable_id: Option<String>,
}

/// A verified domain.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphDomain {
    pub id: String,
    pub authentication_type: String,
    pub is_default: bool,
    pub is_initial: bool,
    pub is_verified: bool,
}

/// One page of a collection.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_link: Option<String>,
}

/// The Graph client.
#[derive(Debug, Clone)]
pub struct GraphClient;

impl GraphClient {
    pub fn new(base_url: &str, policy: RetryPolicy) -> Result<Self, GraphError> {
        Ok(Self)
    }
    pub async fn list_users_page(
        &self,
        token: &str,
        next_link: Option<&str>,
        page_size: u32,
    ) -> Result<Page<GraphUser>, GraphError> {
        Err(GraphError::Network("stub".into()))
    }
    pub async fn list_domains(&self, token: &str) -> Result<Vec<GraphDomain>, GraphError> {
        Err(GraphError::Network("stub".into()))
    }
}

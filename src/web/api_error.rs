//! The JSON API's one error type: a stable `code`, a human `message`, and the `field` for
//! validation errors. Every domain error maps here in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::directory::DirectoryError;
use crate::m365::sync::SyncError;
use crate::m365::M365Error;
use crate::store::StoreError;

/// An API failure.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, for programs: `unauthorized`, `forbidden`, `not_found`, `validation_failed`,
    /// `conflict`, `bad_request`, `method_not_allowed`, `m365_not_connected`, `m365_unavailable`,
    /// `last_admin`, `own_account`, `internal`.
    pub code: &'static str,
    /// For people; may change between versions.
    pub message: String,
    /// The request field at fault (validation errors).
    pub field: Option<String>,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ApiErrorBody {
    pub error: ApiErrorDetail,
}

/// The error object.
#[derive(Debug, Serialize)]
pub struct ApiErrorDetail {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 401, never saying whether the key was missing, malformed, unknown or revoked.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: send `Authorization: Bearer idb_…`",
        )
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400 for a request that cannot be read at all.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422 naming the field.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                message,
            )
        }
    }

    /// 409 naming the field.
    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            field: field.map(str::to_string),
            ..Self::new(StatusCode::CONFLICT, "conflict", message)
        }
    }

    /// 500; the detail is logged with a reference, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let reference = crate::directory::new_record_id();
        tracing::error!(%reference, %detail, "internal error in the API");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("idbridge could not complete the request (reference {reference})"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody {
            error: ApiErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(field) => ApiError::conflict(Some(field), err.to_string()),
            other => ApiError::internal(other),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(err: DirectoryError) -> Self {
        let message = err.to_string();
        match err {
            DirectoryError::Invalid { field, .. } => ApiError::validation(field, message),
            DirectoryError::Duplicate { field } => ApiError::conflict(Some(field), message),
            DirectoryError::UnknownManager(_) | DirectoryError::SelfManager => {
                ApiError::validation("manager", message)
            }
            DirectoryError::NotFound(_) => ApiError::not_found(message),
            DirectoryError::Policy(_) => ApiError::validation("password", message),
            DirectoryError::Bound(_) | DirectoryError::SyncPending(_) => {
                ApiError::conflict(None, message)
            }
            DirectoryError::NoChanges => ApiError::validation("body", message),
            DirectoryError::AdminExists(_) => ApiError::conflict(Some("username"), message),
            DirectoryError::UnknownRole(_) => ApiError::validation("role", message),
            DirectoryError::ApiKeyName => ApiError::validation("name", message),
            DirectoryError::NoAdmin(_) => ApiError::not_found(message),
            DirectoryError::LastAdmin(_) => {
                ApiError::new(StatusCode::CONFLICT, "last_admin", message)
            }
            DirectoryError::OwnAccount(_) => {
                ApiError::new(StatusCode::CONFLICT, "own_account", message)
            }
            DirectoryError::Store(e) => e.into(),
            DirectoryError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many password checks at once; try again in a few seconds",
            ),
            DirectoryError::Hashing(_) | DirectoryError::Seal(_) => ApiError::internal(message),
        }
    }
}

impl From<crate::mfa::MfaError> for ApiError {
    fn from(err: crate::mfa::MfaError) -> Self {
        match err {
            crate::mfa::MfaError::Store(e) => e.into(),
            crate::mfa::MfaError::TotpExists(_) | crate::mfa::MfaError::NoEnrolment(_) => {
                ApiError::conflict(None, err.to_string())
            }
            crate::mfa::MfaError::Secret(_) => ApiError::internal(err),
        }
    }
}

impl From<M365Error> for ApiError {
    fn from(err: M365Error) -> Self {
        let message = err.to_string();
        match err {
            M365Error::NotConfigured(_)
            | M365Error::NotConnected
            | M365Error::Deactivated
            | M365Error::Reconnect(_) => {
                ApiError::new(StatusCode::CONFLICT, "m365_not_connected", message)
            }
            M365Error::UnknownState | M365Error::Refused(_) => ApiError::bad_request(message),
            M365Error::Unreachable(_) | M365Error::Graph(_) | M365Error::Call { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "m365_unavailable", message)
            }
            M365Error::Interrupted(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "m365_interrupted", message)
            }
            M365Error::Store(e) => e.into(),
            M365Error::Secret(_) => ApiError::internal(message),
        }
    }
}

impl From<crate::m365::RegistrationError> for ApiError {
    fn from(err: crate::m365::RegistrationError) -> Self {
        use crate::m365::RegistrationError;
        let message = err.to_string();
        match err {
            RegistrationError::SetInFile { setting, .. } => {
                ApiError::conflict(Some(setting), message)
            }
            RegistrationError::Invalid { field, .. } => ApiError::validation(
                match field {
                    "tenant" => "tenant",
                    "application (client) ID" => "clientId",
                    _ => "credential",
                },
                message,
            ),
            RegistrationError::Store(e) => e.into(),
            RegistrationError::Secret(_) => ApiError::internal(message),
        }
    }
}

impl From<crate::sso::SpRegistrationError> for ApiError {
    fn from(err: crate::sso::SpRegistrationError) -> Self {
        use crate::sso::SpRegistrationError;
        let message = err.to_string();
        match err {
            SpRegistrationError::Invalid { field, .. } => {
                ApiError::validation(field.api_name(), message)
            }
            SpRegistrationError::BuiltIn(_)
            | SpRegistrationError::SetInFile(_)
            | SpRegistrationError::AlreadyRegistered(_) => {
                ApiError::conflict(Some("entityId"), message)
            }
            SpRegistrationError::NotFound(_) => ApiError::not_found(message),
            SpRegistrationError::Store(e) => e.into(),
        }
    }
}

impl From<crate::m365::federation::FederationError> for ApiError {
    fn from(err: crate::m365::federation::FederationError) -> Self {
        use crate::m365::federation::{Confirmation, FederationError};
        let message = err.to_string();
        match err {
            FederationError::UnknownDomain(_) => ApiError::not_found(message),
            FederationError::Unverified(_)
            | FederationError::Initial(_)
            | FederationError::AlreadyFederated(_)
            | FederationError::NotFederated(_) => ApiError::conflict(Some("domain"), message),
            FederationError::NeedsConfirmation { confirmation, .. } => ApiError::validation(
                match confirmation {
                    Confirmation::DefaultDomain => "confirmDefault",
                    Confirmation::UsersNotBound => "confirmUsersNotBound",
                    Confirmation::Unfederate => "confirm",
                },
                message,
            ),
            FederationError::M365(e) => e.into(),
            FederationError::Store(e) => e.into(),
        }
    }
}

impl From<crate::certs::rollover::RolloverError> for ApiError {
    fn from(err: crate::certs::rollover::RolloverError) -> Self {
        use crate::certs::rollover::RolloverError;
        let message = err.to_string();
        match err {
            RolloverError::AlreadyPrepared(_)
            | RolloverError::PreviousNotRetired(_)
            | RolloverError::NoNext
            | RolloverError::NoPrevious => ApiError::conflict(Some("stage"), message),
            RolloverError::TooSoon { .. } => ApiError::validation("confirm", message),
            RolloverError::Microsoft(e) => e.into(),
            RolloverError::Store(e) => e.into(),
            RolloverError::Certificate(_) | RolloverError::Secret(_) => ApiError::internal(message),
        }
    }
}

impl From<SyncError> for ApiError {
    fn from(err: SyncError) -> Self {
        let message = err.to_string();
        match err {
            SyncError::UnknownAttribute(..) => ApiError::validation("attribute", message),
            SyncError::UnknownDirection(_) => ApiError::validation("direction", message),
            SyncError::Connection(e) => e.into(),
            SyncError::Directory(e) => e.into(),
            SyncError::Store(e) => e.into(),
        }
    }
}

impl From<crate::branding::BrandingError> for ApiError {
    fn from(err: crate::branding::BrandingError) -> Self {
        match err {
            crate::branding::BrandingError::Store(e) => e.into(),
            other => match other.field() {
                Some(field) => ApiError::validation(field, other.to_string()),
                None => ApiError::bad_request(other.to_string()),
            },
        }
    }
}

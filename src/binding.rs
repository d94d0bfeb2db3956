//! A user's binding to Microsoft 365: its states and, in one function ([`BindingState::after`]),
//! how each step of its life moves it. The store applies the same transitions inside its
//! transactions as SQL generated from that function, so the rules live only here.
//!
//! ```text
//!            bind requested                  bind delivered
//!  (none) ─────────────────▶ pending ───────────────────────▶ bound
//!                            │   ▲                            │
//!             bind failed    │   │ failed jobs retried        │ M365 account deleted
//!                            ▼   │                            │
//!                            failed ◀─────────────────────────┘
//!  unbind (from any state) ─▶ unbound ── bind requested ─▶ pending
//! ```

use serde::Serialize;

/// Where a user's binding to Microsoft 365 stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BindingState {
    /// A bind job is queued: the M365 account is being created or adopted.
    Pending,
    /// The M365 account carries the user's immutable ID: the user signs in through idbridge.
    Bound,
    /// The bind failed for good, or the M365 account was deleted there; an admin retries or
    /// binds again.
    Failed,
    /// Unbound by an admin: sign-in through idbridge stops and the M365 account is blocked.
    Unbound,
}

/// A step in a binding's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingStep {
    /// An admin binds the user (again): a bind job is queued.
    BindRequested,
    /// The bind job reached Microsoft 365.
    BindDelivered,
    /// The bind job failed for good.
    BindFailed,
    /// Graph answered 404 for the bound M365 user: it was deleted in Microsoft 365.
    AccountLost,
    /// An admin queued the failed bind again.
    Retried,
    /// An admin unbound the user.
    Unbound,
    /// The binding was written directly with its immutable ID (`m365 stamp`-style set-up and
    /// tests), without a bind job.
    Stamped,
}

/// Why a stored binding state could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unknown binding state {0:?}")]
pub struct UnknownBindingState(pub String);

impl BindingState {
    /// Every state, in the order lists show them.
    pub const ALL: [BindingState; 4] = [
        BindingState::Bound,
        BindingState::Pending,
        BindingState::Failed,
        BindingState::Unbound,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            BindingState::Pending => "pending",
            BindingState::Bound => "bound",
            BindingState::Failed => "failed",
            BindingState::Unbound => "unbound",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The state after `step` from `from` (`None`: no binding yet), or `None` when the step
    /// does not apply there and the binding stays as it is. The only place binding
    /// transitions are decided.
    pub fn after(from: Option<BindingState>, step: BindingStep) -> Option<BindingState> {
        use BindingState::{Bound, Failed, Pending};
        match (from, step) {
            // Binding again keeps the immutable ID and the M365 object (the store's upsert).
            (_, BindingStep::BindRequested) => Some(Pending),
            (_, BindingStep::Stamped) => Some(Bound),
            (Some(Pending), BindingStep::BindDelivered) => Some(Bound),
            (Some(Pending), BindingStep::BindFailed) => Some(Failed),
            (Some(Bound), BindingStep::AccountLost) => Some(Failed),
            (Some(Failed), BindingStep::Retried) => Some(Pending),
            (Some(_), BindingStep::Unbound) => Some(BindingState::Unbound),
            // A delivered or failed bind of a user unbound meanwhile leaves it unbound; a
            // delivery for a bound user does not move it.
            _ => None,
        }
    }

    /// Changes reach Microsoft 365: bound, or being bound (the bind sends everything, so
    /// changes made while it waits queue behind it). The M365 account is meant enabled.
    pub fn receives_changes(self) -> bool {
        matches!(self, BindingState::Bound | BindingState::Pending)
    }

    /// The user signs in to Microsoft 365 through idbridge (the SAML assertion is issued).
    pub fn signs_in(self) -> bool {
        self == BindingState::Bound
    }

    /// SQL for a `state` column after `step`: `CASE state WHEN 'pending' THEN 'bound' … ELSE
    /// state END`, generated from [`BindingState::after`].
    pub fn sql_after(step: BindingStep) -> String {
        let mut sql = String::from("CASE state");
        for from in Self::ALL {
            if let Some(to) = Self::after(Some(from), step).filter(|&to| to != from) {
                sql.push_str(&format!(" WHEN '{}' THEN '{}'", from.as_str(), to.as_str()));
            }
        }
        sql.push_str(" ELSE state END");
        sql
    }

    /// SQL list of the states `step` moves, e.g. `('bound')`, for a `WHERE state IN …`.
    pub fn sql_moved_by(step: BindingStep) -> String {
        Self::sql_list(|s| Self::after(Some(s), step).is_some_and(|to| to != s))
    }

    /// SQL list of the states for which `keep` holds, e.g. `('bound', 'pending')`.
    pub fn sql_list(keep: impl Fn(BindingState) -> bool) -> String {
        let names: Vec<String> = Self::ALL
            .into_iter()
            .filter(|&s| keep(s))
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!("({})", names.join(", "))
    }
}

impl std::fmt::Display for BindingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for BindingState {
    type Error = UnknownBindingState;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text).ok_or(UnknownBindingState(text))
    }
}

impl std::str::FromStr for BindingState {
    type Err = UnknownBindingState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or_else(|| UnknownBindingState(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in BindingState::ALL {
            assert_eq!(BindingState::parse(state.as_str()), Some(state));
        }
        assert_eq!(BindingState::parse("Bound"), None);
    }

    #[test]
    fn a_binding_lives_as_the_product_describes() {
        use BindingState::{Bound, Failed, Pending};
        use BindingStep::{
            AccountLost, BindDelivered, BindFailed, BindRequested, Retried, Unbound as Unbind,
        };
        assert_eq!(BindingState::after(None, BindRequested), Some(Pending));
        assert_eq!(
            BindingState::after(Some(Pending), BindDelivered),
            Some(Bound)
        );
        assert_eq!(BindingState::after(Some(Pending), BindFailed), Some(Failed));
        assert_eq!(BindingState::after(Some(Bound), AccountLost), Some(Failed));
        assert_eq!(BindingState::after(Some(Failed), Retried), Some(Pending));
        assert_eq!(
            BindingState::after(Some(Bound), Unbind),
            Some(BindingState::Unbound)
        );
        assert_eq!(
            BindingState::after(Some(BindingState::Unbound), BindRequested),
            Some(Pending)
        );
        // A bind delivered after the user was unbound does not bind them again.
        assert_eq!(
            BindingState::after(Some(BindingState::Unbound), BindDelivered),
            None
        );
        assert_eq!(
            BindingState::after(Some(BindingState::Unbound), BindFailed),
            None
        );
        // Only a bound account can be lost; only a failed binding is retried.
        assert_eq!(BindingState::after(Some(Pending), AccountLost), None);
        assert_eq!(BindingState::after(Some(Bound), Retried), None);
    }

    #[test]
    fn sql_is_generated_from_the_transitions() {
        assert_eq!(
            BindingState::sql_after(BindingStep::BindDelivered),
            "CASE state WHEN 'pending' THEN 'bound' ELSE state END"
        );
        assert_eq!(
            BindingState::sql_moved_by(BindingStep::AccountLost),
            "('bound')"
        );
        assert_eq!(
            BindingState::sql_list(BindingState::receives_changes),
            "('bound', 'pending')"
        );
    }

    #[test]
    fn only_bound_signs_in_and_bound_or_pending_receives_changes() {
        for state in BindingState::ALL {
            assert_eq!(state.signs_in(), state == BindingState::Bound);
            assert_eq!(
                state.receives_changes(),
                matches!(state, BindingState::Bound | BindingState::Pending)
            );
        }
    }
}

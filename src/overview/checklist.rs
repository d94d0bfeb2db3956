//! The first-run checklist: the steps from a fresh install to the first sign-in through
//! Microsoft 365, each done, to do, or blocked by an earlier one, read from what is stored.

use crate::events::SignInOutcome;
use crate::m365::connection::{M365Error, M365};
use crate::store::{Store, StoreError};

/// A step of setting up idbridge with Microsoft 365, in the order they are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetupStep {
    /// Tenant, client ID and a credential of the Entra app registration.
    AppRegistration,
    /// A working Graph connection (consent or the app's own credentials).
    Connect,
    /// Users in the directory, imported from Microsoft 365 (or created here).
    ImportUsers,
    /// Users bound to their Microsoft 365 accounts (immutable ID set).
    BindUsers,
    /// A domain whose sign-ins Microsoft 365 sends to idbridge.
    FederateDomain,
    /// A bound user signed in through idbridge.
    TestSignIn,
}

impl SetupStep {
    /// Every step, in order.
    pub const ALL: [SetupStep; 6] = [
        Self::AppRegistration,
        Self::Connect,
        Self::ImportUsers,
        Self::BindUsers,
        Self::FederateDomain,
        Self::TestSignIn,
    ];

    /// A stable name (HTML ids, tests).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppRegistration => "app-registration",
            Self::Connect => "connect",
            Self::ImportUsers => "import-users",
            Self::BindUsers => "bind-users",
            Self::FederateDomain => "federate-domain",
            Self::TestSignIn => "test-sign-in",
        }
    }

    /// What the step is, as the checklist names it.
    pub fn title(self) -> &'static str {
        match self {
            Self::AppRegistration => "Configure the Microsoft 365 app registration",
            Self::Connect => "Connect Microsoft 365",
            Self::ImportUsers => "Import users",
            Self::BindUsers => "Bind users to Microsoft 365",
            Self::FederateDomain => "Federate a domain",
            Self::TestSignIn => "Test a sign-in",
        }
    }
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Done,
    ToDo,
    /// Cannot be done before this earlier step is.
    Blocked(SetupStep),
}

impl StepState {
    /// A stable name (CSS classes, tests): `done`, `to-do`, `blocked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::ToDo => "to-do",
            Self::Blocked(_) => "blocked",
        }
    }

    /// As the checklist shows it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::ToDo => "to do",
            Self::Blocked(_) => "blocked",
        }
    }
}

/// The Microsoft 365 connection as the checklist needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    NotConnected,
    Connected,
    /// Microsoft refused the token: an admin connects again.
    Reconnect,
    /// An admin deactivated the connection.
    Deactivated,
}

impl ConnectionState {
    /// From the stored connection row's state (`None`: never connected).
    pub fn from_stored(state: Option<&str>) -> Self {
        match state {
            Some("connected") => Self::Connected,
            Some("reauthorize") => Self::Reconnect,
            Some("deactivated") => Self::Deactivated,
            _ => Self::NotConnected,
        }
    }
}

/// What the checklist is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupFacts {
    /// What the app registration still lacks (`None`: complete).
    pub registration_missing: Option<String>,
    pub connection: ConnectionState,
    pub users: i64,
    pub bound: i64,
    /// Domains idbridge federated through Graph.
    pub federated_domains: Vec<String>,
    /// Whether a user bound now was ever answered with a sign-in.
    pub bound_user_signed_in: bool,
}

impl SetupFacts {
    /// Reads the facts from the store and the app registration in effect.
    pub async fn gather(store: &Store, m365: &M365) -> Result<Self, StoreError> {
        let registration_missing = match m365.registration().problem() {
            None => None,
            Some(M365Error::NotConfigured(what)) => Some(what.to_string()),
            Some(other) => Some(other.to_string()),
        };
        let connection = store.m365_connection().await?;
        let counts = store.sync_counts().await?;
        Ok(Self {
            registration_missing,
            connection: ConnectionState::from_stored(connection.as_ref().map(|c| c.state.as_str())),
            users: store.count_users().await?,
            bound: counts.bound,
            federated_domains: store
                .federated_domains()
                .await?
                .into_iter()
                .map(|d| d.domain)
                .collect(),
            bound_user_signed_in: store
                .bound_user_has_event(SignInOutcome::SignedIn.event_types())
                .await?,
        })
    }
}

/// A step with where it stands and a line saying what is there or what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub step: SetupStep,
    pub state: StepState,
    pub detail: String,
}

impl Step {
    /// Why the step cannot be done yet (blocked steps only).
    pub fn why_blocked(&self) -> Option<String> {
        match self.state {
            StepState::Blocked(by) => Some(format!("Waiting for “{}”.", by.title())),
            _ => None,
        }
    }
}

/// The steps from a fresh install to the first sign-in, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checklist {
    pub steps: Vec<Step>,
}

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Checklist {
    /// Reads the facts and computes the checklist.
    pub async fn load(store: &Store, m365: &M365) -> Result<Self, StoreError> {
        Ok(Self::from_facts(&SetupFacts::gather(store, m365).await?))
    }

    /// The checklist for these facts. A step is done by its own fact alone (users created by
    /// hand make the import step done); a step not done is blocked by the first earlier step
    /// it needs that is not done.
    pub fn from_facts(facts: &SetupFacts) -> Self {
        let registered = facts.registration_missing.is_none();
        let connected = facts.connection == ConnectionState::Connected;
        let federated = !facts.federated_domains.is_empty();
        let state = |done: bool, needs: &[(bool, SetupStep)]| {
            if done {
                StepState::Done
            } else {
                needs
                    .iter()
                    .find(|(met, _)| !met)
                    .map_or(StepState::ToDo, |(_, by)| StepState::Blocked(*by))
            }
        };
        let connect_needs = [(registered, SetupStep::AppRegistration)];
        let steps = vec![
            Step {
                step: SetupStep::AppRegistration,
                state: state(registered, &[]),
                detail: match &facts.registration_missing {
                    None => "Client ID and credential set.".into(),
                    Some(what) => format!(
                        "Missing: {what}. Register idbridge in Microsoft Entra and enter it here."
                    ),
                },
            },
            Step {
                step: SetupStep::Connect,
                state: state(connected, &connect_needs),
                detail: match facts.connection {
                    ConnectionState::Connected => "Connected.".into(),
                    ConnectionState::NotConnected => {
                        "Consent as a Microsoft 365 admin, or connect with the app's own credentials."
                            .into()
                    }
                    ConnectionState::Reconnect => {
                        "Microsoft refused the stored token: connect again.".into()
                    }
                    ConnectionState::Deactivated => {
                        "The connection was deactivated: connect again.".into()
                    }
                },
            },
            Step {
                step: SetupStep::ImportUsers,
                state: state(facts.users > 0, &[(connected, SetupStep::Connect)]),
                detail: if facts.users > 0 {
                    format!("{} in the directory.", plural(facts.users, "user", "users"))
                } else {
                    "Import the tenant's users (or create users here).".into()
                },
            },
            Step {
                step: SetupStep::BindUsers,
                state: state(
                    facts.bound > 0,
                    &[
                        (connected, SetupStep::Connect),
                        (facts.users > 0, SetupStep::ImportUsers),
                    ],
                ),
                detail: if facts.bound > 0 {
                    format!(
                        "{} of {} bound.",
                        facts.bound,
                        plural(facts.users, "user", "users")
                    )
                } else {
                    "Bind users to their Microsoft 365 accounts before their domain is federated."
                        .into()
                },
            },
            Step {
                step: SetupStep::FederateDomain,
                state: state(
                    federated,
                    &[
                        (connected, SetupStep::Connect),
                        (facts.bound > 0, SetupStep::BindUsers),
                    ],
                ),
                detail: if federated {
                    format!("Federated: {}.", facts.federated_domains.join(", "))
                } else {
                    "Make a domain's sign-ins come to idbridge.".into()
                },
            },
            Step {
                step: SetupStep::TestSignIn,
                state: state(
                    facts.bound_user_signed_in,
                    &[
                        (facts.bound > 0, SetupStep::BindUsers),
                        (federated, SetupStep::FederateDomain),
                    ],
                ),
                detail: if facts.bound_user_signed_in {
                    "A bound user signed in through idbridge.".into()
                } else {
                    "Sign in to Microsoft 365 as a bound user of a federated domain.".into()
                },
            },
        ];
        Self { steps }
    }

    /// Whether every step is done (the overview then shows one line).
    pub fn complete(&self) -> bool {
        self.steps.iter().all(|s| s.state == StepState::Done)
    }

    /// How many steps are done.
    pub fn done(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.state == StepState::Done)
            .count()
    }

    /// The first step to do now, if any.
    pub fn next(&self) -> Option<SetupStep> {
        self.steps
            .iter()
            .find(|s| s.state == StepState::ToDo)
            .map(|s| s.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> SetupFacts {
        SetupFacts {
            registration_missing: Some("the application (client) ID".into()),
            connection: ConnectionState::NotConnected,
            users: 0,
            bound: 0,
            federated_domains: Vec::new(),
            bound_user_signed_in: false,
        }
    }

    fn states(facts: &SetupFacts) -> Vec<StepState> {
        Checklist::from_facts(facts)
            .steps
            .into_iter()
            .map(|s| s.state)
            .collect()
    }

    #[test]
    fn a_fresh_install_has_the_first_step_to_do_and_the_rest_blocked_by_an_earlier_one() {
        use SetupStep::*;
        use StepState::*;
        let facts = fresh();
        assert_eq!(
            states(&facts),
            [
                ToDo,
                Blocked(AppRegistration),
                Blocked(Connect),
                Blocked(Connect),
                Blocked(Connect),
                Blocked(BindUsers)
            ]
        );
        let list = Checklist::from_facts(&facts);
        assert_eq!(list.next(), Some(AppRegistration));
        assert_eq!(list.done(), 0);
        assert!(!list.complete());
        assert_eq!(
            list.steps[1].why_blocked().as_deref(),
            Some("Waiting for “Configure the Microsoft 365 app registration”.")
        );
    }

    #[test]
    fn each_fact_moves_its_step_and_unblocks_the_next() {
        use SetupStep::*;
        use StepState::*;
        let mut facts = fresh();
        facts.registration_missing = None;
        assert_eq!(states(&facts)[..2], [Done, ToDo]);
        facts.connection = ConnectionState::Connected;
        assert_eq!(
            states(&facts)[1..],
            [
                Done,
                ToDo,
                Blocked(ImportUsers),
                Blocked(BindUsers),
                Blocked(BindUsers)
            ]
        );
        facts.users = 3;
        facts.bound = 1;
        assert_eq!(
            states(&facts)[2..],
            [Done, Done, ToDo, Blocked(FederateDomain)]
        );
        facts.federated_domains = vec!["contoso.com".into()];
        assert_eq!(states(&facts)[4..], [Done, ToDo]);
        facts.bound_user_signed_in = true;
        let list = Checklist::from_facts(&facts);
        assert!(list.complete());
        assert_eq!(list.next(), None);
        assert_eq!(list.steps[3].detail, "1 of 3 users bound.");
    }

    #[test]
    fn a_dropped_connection_reopens_its_step_but_keeps_what_was_done() {
        use StepState::*;
        let facts = SetupFacts {
            registration_missing: None,
            connection: ConnectionState::Reconnect,
            users: 2,
            bound: 2,
            federated_domains: vec!["contoso.com".into()],
            bound_user_signed_in: true,
        };
        assert_eq!(states(&facts), [Done, ToDo, Done, Done, Done, Done]);
        assert!(Checklist::from_facts(&facts).steps[1]
            .detail
            .contains("connect again"));
    }
}

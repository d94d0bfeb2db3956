//! The console overview's content, computed from the store (no HTTP here): the first-run
//! checklist and the activity over the last day and month.

pub mod activity;
pub mod checklist;

pub use activity::{Activity, Period, SignInBucket, SyncBucket};
pub use checklist::{Checklist, ConnectionState, SetupFacts, SetupStep, Step, StepState};

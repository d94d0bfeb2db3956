//! The overview page (`/admin`): the first-run checklist, the activity charts (inline SVG drawn
//! here, no script), the counters and the latest events.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use chrono::{DateTime, Utc};

use super::{display_time, Chrome, Notice};
use crate::events::SignInOutcome;
use crate::overview::{Activity, Checklist, Period, SetupStep, StepState};
use crate::server::AppState;
use crate::store::{EventFilter, SyncCounts};
use crate::web::{render, AdminPrincipal, AppError};

/// Routes behind the session guard.
pub fn router() -> Router<AppState> {
    Router::new().route("/admin", get(page))
}

#[derive(Template)]
#[template(path = "admin/dashboard.html")]
struct Dashboard {
    chrome: Chrome,
    checklist: ChecklistView,
    charts: Vec<ChartView>,
    users: i64,
    counts: SyncCounts,
    connection: String,
    events: Vec<EventLine>,
    /// The signing certificate no longer names the served host: what to do.
    certificate_warning: Option<String>,
}

/// An event as a table row.
struct EventLine {
    at: String,
    event_type: String,
    actor: String,
    target: String,
}

async fn page(
    State(state): State<AppState>,
    Extension(admin): Extension<AdminPrincipal>,
    Notice(notice): Notice,
) -> Result<Response, AppError> {
    let now = Utc::now();
    let checklist = Checklist::load(&state.store, &state.m365).await?;
    let mut charts = Vec::new();
    for period in Period::ALL {
        let activity = Activity::load(&state.store, period, now).await?;
        charts.push(ChartView::sign_ins(&activity));
        charts.push(ChartView::sync(&activity));
    }
    // Sign-ins side by side for both periods, then sync.
    charts.sort_by_key(|c| c.order);
    let users = state.store.count_users().await?;
    let counts = state.store.sync_counts().await?;
    let connection = state
        .m365
        .status()
        .await
        .map(|s| s.state.replace('_', " "))
        .unwrap_or_else(|_| "unknown".into());
    let events = state
        .store
        .list_events(&EventFilter {
            limit: 10,
            ..EventFilter::default()
        })
        .await?
        .into_iter()
        .map(|e| EventLine {
            at: display_time(Some(e.at)),
            event_type: e.event_type,
            actor: e.actor,
            target: e.target.unwrap_or_default(),
        })
        .collect();
    Ok(render(
        StatusCode::OK,
        &Dashboard {
            chrome: Chrome::new(&admin, "").flash(notice),
            checklist: ChecklistView::new(&checklist, &state.config.m365.login_base_url),
            charts,
            users,
            counts,
            connection,
            events,
            certificate_warning: crate::certs::name_mismatch(&state.config, &state.idp.signing()),
        },
    ))
}

/// The checklist as the page shows it.
struct ChecklistView {
    complete: bool,
    done: usize,
    total: usize,
    steps: Vec<StepView>,
}

struct StepView {
    id: &'static str,
    title: &'static str,
    /// Where the step is done.
    href: String,
    /// done, to-do or blocked (also the item's class).
    state: &'static str,
    state_label: &'static str,
    /// The badge's colour class.
    badge: &'static str,
    detail: String,
    why_blocked: Option<String>,
    next: bool,
    /// A second link: where the step's result is seen.
    see: Option<(&'static str, &'static str)>,
}

impl ChecklistView {
    fn new(list: &Checklist, login_base_url: &str) -> Self {
        let next = list.next();
        let steps = list
            .steps
            .iter()
            .map(|s| StepView {
                id: s.step.as_str(),
                title: s.step.title(),
                href: step_href(s.step, login_base_url),
                state: s.state.as_str(),
                state_label: s.state.label(),
                badge: match s.state {
                    StepState::Done => "bound",
                    StepState::ToDo => "pending",
                    StepState::Blocked(_) => "unbound",
                },
                detail: s.detail.clone(),
                why_blocked: s.why_blocked(),
                next: next == Some(s.step),
                see: (s.step == SetupStep::TestSignIn).then_some((
                    "/admin/events?type=sso_assertion_issued",
                    "See the sign-ins among the events",
                )),
            })
            .collect();
        Self {
            complete: list.complete(),
            done: list.done(),
            total: list.steps.len(),
            steps,
        }
    }
}

/// Where each step is done.
fn step_href(step: SetupStep, login_base_url: &str) -> String {
    match step {
        SetupStep::AppRegistration => "/admin/m365#app-registration".into(),
        SetupStep::Connect => "/admin/m365#connection".into(),
        SetupStep::ImportUsers => "/admin/m365#import".into(),
        SetupStep::BindUsers => "/admin/binding?state=unbound".into(),
        SetupStep::FederateDomain => "/admin/m365#domains".into(),
        // A user types their address at Microsoft's sign-in page, which sends a federated
        // domain's users here.
        SetupStep::TestSignIn => format!("{}/", login_base_url.trim_end_matches('/')),
    }
}

// The chart's drawing, in SVG user units (the SVG scales to the column's width).
const WIDTH: f64 = 400.0;
const HEIGHT: f64 = 110.0;
const LEFT: f64 = 28.0;
const RIGHT: f64 = 4.0;
const TOP: f64 = 8.0;
const BOTTOM: f64 = 18.0;

/// A legend entry: a series' name and its colour class.
struct SeriesView {
    name: &'static str,
    class: &'static str,
}

/// A rectangle, its numbers already formatted.
struct RectView {
    class: &'static str,
    x: String,
    y: String,
    width: String,
    height: String,
}

/// One bucket: its tooltip, a full-height area to hover, and its stacked bars.
struct ColumnView {
    title: String,
    hit: RectView,
    bars: Vec<RectView>,
}

struct TickView {
    x: String,
    y: String,
    /// `middle`, or `end` for the newest bucket's label (kept inside the drawing).
    anchor: &'static str,
    label: String,
}

struct RowView {
    label: String,
    values: Vec<i64>,
}

/// A small stacked bar chart with its title, summary and numbers.
struct ChartView {
    /// The page's order: sign-ins before sync, the day before the month.
    order: u8,
    id: String,
    title: String,
    summary: String,
    /// `viewBox` width and height.
    width: String,
    height: String,
    series: Vec<SeriesView>,
    columns: Vec<ColumnView>,
    ticks: Vec<TickView>,
    /// The scale's top: label, and where its line and the baseline go.
    max_label: String,
    top_y: String,
    base_y: String,
    left_x: String,
    right_x: String,
    label_x: String,
    /// The table: one row per bucket, newest last, and the totals.
    rows: Vec<RowView>,
    totals: Vec<i64>,
}

/// The smallest 1, 2 or 5 times a power of ten at or above `n` (at least 1).
fn nice_ceiling(n: i64) -> i64 {
    let mut power = 1_i64;
    loop {
        for step in [1, 2, 5] {
            let candidate = step * power;
            if candidate >= n {
                return candidate;
            }
        }
        power = power.saturating_mul(10);
        if power == i64::MAX {
            return n;
        }
    }
}

fn number(x: f64) -> String {
    format!("{x:.1}")
}

fn plural(n: i64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A bucket as a table row header and in a tooltip.
fn bucket_label(period: Period, start: DateTime<Utc>) -> (String, String) {
    match period {
        Period::Day => {
            let end = start + chrono::Duration::hours(1);
            (
                start.format("%b %-d, %H:00").to_string(),
                format!(
                    "{}–{} UTC",
                    start.format("%b %-d, %H:00"),
                    end.format("%H:00")
                ),
            )
        }
        Period::Month => (
            start.format("%b %-d").to_string(),
            start.format("%b %-d (UTC)").to_string(),
        ),
    }
}

fn sign_in_series(outcome: SignInOutcome) -> SeriesView {
    match outcome {
        SignInOutcome::SignedIn => SeriesView {
            name: "signed in",
            class: "signed-in",
        },
        SignInOutcome::Refused => SeriesView {
            name: "refused",
            class: "refused",
        },
        SignInOutcome::Failed => SeriesView {
            name: "failed",
            class: "failed",
        },
    }
}

impl ChartView {
    /// Sign-ins, refusals and failures of `activity`'s period.
    fn sign_ins(activity: &Activity) -> Self {
        let period = activity.period;
        let buckets: Vec<(DateTime<Utc>, Vec<i64>)> = activity
            .sign_ins
            .iter()
            .map(|b| {
                (
                    b.start,
                    SignInOutcome::ALL.iter().map(|o| b.count(*o)).collect(),
                )
            })
            .collect();
        let [signed_in, refused, failed] = SignInOutcome::ALL.map(|o| activity.sign_in_total(o));
        Self::draw(
            if period == Period::Day { 0 } else { 1 },
            format!("sign-ins-{}", period.as_str()),
            format!("Sign-ins, {}", period.title()),
            format!(
                "{}, {} refused, {} failed in the {} (UTC).",
                plural(signed_in, "sign-in", "sign-ins"),
                refused,
                failed,
                period.title()
            ),
            period,
            SignInOutcome::ALL.map(sign_in_series).into(),
            &buckets,
        )
    }

    /// Changes delivered to and failed at Microsoft 365 in `activity`'s period.
    fn sync(activity: &Activity) -> Self {
        let period = activity.period;
        let buckets: Vec<(DateTime<Utc>, Vec<i64>)> = activity
            .sync
            .iter()
            .map(|b| (b.start, vec![b.delivered, b.failed]))
            .collect();
        let (delivered, failed) = activity.sync_totals();
        Self::draw(
            if period == Period::Day { 2 } else { 3 },
            format!("sync-{}", period.as_str()),
            format!("Changes to Microsoft 365, {}", period.title()),
            format!(
                "{} delivered, {} failed in the {} (UTC).",
                plural(delivered, "change", "changes"),
                failed,
                period.title()
            ),
            period,
            vec![
                SeriesView {
                    name: "delivered",
                    class: "delivered",
                },
                SeriesView {
                    name: "failed",
                    class: "failed",
                },
            ],
            &buckets,
        )
    }

    /// Stacked bars, one column per bucket, series bottom up in `series` order.
    fn draw(
        order: u8,
        id: String,
        title: String,
        summary: String,
        period: Period,
        series: Vec<SeriesView>,
        buckets: &[(DateTime<Utc>, Vec<i64>)],
    ) -> Self {
        let plot_width = WIDTH - LEFT - RIGHT;
        let plot_height = HEIGHT - TOP - BOTTOM;
        let base = TOP + plot_height;
        let highest = buckets
            .iter()
            .map(|(_, values)| values.iter().sum::<i64>())
            .max()
            .unwrap_or(0);
        let max = nice_ceiling(highest.max(1));
        let slot = plot_width / buckets.len().max(1) as f64;
        let bar_width = slot * 0.7;
        // Ticks every 6 hours or every week, counted back from the newest bucket.
        let tick_every = match period {
            Period::Day => 6,
            Period::Month => 7,
        };
        let mut columns = Vec::new();
        let mut ticks = Vec::new();
        let mut rows = Vec::new();
        let mut totals = vec![0_i64; series.len()];
        for (i, (start, values)) in buckets.iter().enumerate() {
            let x = LEFT + i as f64 * slot;
            let (row_label, tooltip_label) = bucket_label(period, *start);
            let mut y = base;
            let mut bars = Vec::new();
            for (s, value) in series.iter().zip(values) {
                if *value <= 0 {
                    continue;
                }
                let height = *value as f64 / max as f64 * plot_height;
                y -= height;
                bars.push(RectView {
                    class: s.class,
                    x: number(x + (slot - bar_width) / 2.0),
                    y: number(y),
                    width: number(bar_width),
                    height: number(height),
                });
            }
            for (total, value) in totals.iter_mut().zip(values) {
                *total += value;
            }
            let parts: Vec<String> = series
                .iter()
                .zip(values)
                .map(|(s, v)| format!("{v} {}", s.name))
                .collect();
            columns.push(ColumnView {
                title: format!("{tooltip_label}: {}", parts.join(", ")),
                hit: RectView {
                    class: "hit",
                    x: number(x),
                    y: number(TOP),
                    width: number(slot),
                    height: number(plot_height),
                },
                bars,
            });
            let back = buckets.len() - 1 - i;
            if back % tick_every == 0 {
                ticks.push(TickView {
                    x: number(if back == 0 {
                        WIDTH - RIGHT
                    } else {
                        x + slot / 2.0
                    }),
                    y: number(HEIGHT - 5.0),
                    anchor: if back == 0 { "end" } else { "middle" },
                    label: match period {
                        Period::Day => start.format("%H:00").to_string(),
                        Period::Month => start.format("%b %-d").to_string(),
                    },
                });
            }
            rows.push(RowView {
                label: row_label,
                values: values.clone(),
            });
        }
        Self {
            order,
            id,
            title,
            summary,
            width: number(WIDTH),
            height: number(HEIGHT),
            series,
            columns,
            ticks,
            max_label: max.to_string(),
            top_y: number(TOP),
            base_y: number(base),
            left_x: number(LEFT),
            right_x: number(WIDTH - RIGHT),
            label_x: number(LEFT - 3.0),
            rows,
            totals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overview::SignInBucket;
    use chrono::TimeZone;

    #[test]
    fn the_scale_ends_on_a_round_number() {
        let got: Vec<i64> = [0, 1, 2, 3, 6, 10, 11, 23, 99, 101]
            .into_iter()
            .map(nice_ceiling)
            .collect();
        assert_eq!(got, [1, 1, 2, 5, 10, 10, 20, 50, 100, 200]);
    }

    #[test]
    fn bars_stack_to_their_share_of_the_scale_with_a_tooltip_per_bucket() {
        let start = Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap();
        let mut sign_ins: Vec<SignInBucket> = (0..24)
            .map(|h| SignInBucket {
                start: start + chrono::Duration::hours(h),
                signed_in: 0,
                refused: 0,
                failed: 0,
            })
            .collect();
        sign_ins[23].signed_in = 3;
        sign_ins[23].failed = 2;
        let activity = Activity {
            period: Period::Day,
            sign_ins,
            sync: Vec::new(),
        };
        let chart = ChartView::sign_ins(&activity);
        assert_eq!(chart.columns.len(), 24);
        assert_eq!(chart.max_label, "5");
        let last = &chart.columns[23];
        assert_eq!(
            last.title,
            "Dec 3, 23:00–00:00 UTC: 3 signed in, 0 refused, 2 failed"
        );
        let heights: Vec<f64> = last
            .bars
            .iter()
            .map(|b| b.height.parse().unwrap())
            .collect();
        let plot = HEIGHT - TOP - BOTTOM;
        assert_eq!(
            heights,
            [number(plot * 0.6), number(plot * 0.4)].map(|h| h.parse::<f64>().unwrap())
        );
        assert!(chart.columns[0].bars.is_empty());
        assert_eq!(chart.totals, [3, 0, 2]);
        assert_eq!(
            chart.summary,
            "3 sign-ins, 0 refused, 2 failed in the last 24 hours (UTC)."
        );
        // Ticks at 05:00, 11:00, 17:00 and 23:00 (every 6 hours back from the newest).
        let ticks: Vec<&str> = chart.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(ticks, ["05:00", "11:00", "17:00", "23:00"]);
    }
}

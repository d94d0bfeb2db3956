//! Import of a large tenant: N users seeded into the in-process Microsoft Graph fake
//! (`tests/it/support/graph_fake.rs`) on loopback, imported by the real import
//! (`M365::import`, what `idbridge m365 import --all` runs) into the real server's SQLite store.
//!
//! Baseline, measured in the same run against the same fake: paging through the same tenant
//! with the same Graph client (`GraphClient::list_all_users`, `$top=999`) and writing nothing —
//! the floor the import cannot beat, since it must read every page. It is measured before and
//! after the import and averaged.
//!
//! Prints, for the import and for the baseline: total seconds, users per second, Graph pages
//! fetched, and CPU per user, split between the server's threads (everything but the fake) and
//! the fake's own thread; then the ratio import time / paging time.
//!
//! The fake runs on its own single-threaded runtime (threads named `graph-fake`) so its CPU can
//! be told apart from the server's; the server and the import run on a runtime with one worker
//! per core.
//!
//! Run: `cargo bench --bench import` (options: `-- --users 100000`; the environment variable
//! `IMPORT_BENCH_USERS` sets the default).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
mod support;

use std::time::Instant;

use chrono::Utc;
use common::{arg, process_cpu_seconds, threads_cpu_seconds};
use idbridge::events::Actor;
use idbridge::m365::ImportSelection;
use secrecy::ExposeSecret;
use support::graph_fake::GraphFake;
use support::start_server;

const DOMAIN: &str = "contoso.com";
/// What the product asks for (the most Graph allows per page).
const PAGE_SIZE: u32 = 999;
/// The fake's threads (its runtime's workers).
const FAKE_THREADS: &str = "graph-fake";
/// sqlx runs each SQLite connection on a thread of its own, named so (`comm` keeps 15 bytes).
const SQLITE_THREADS: &str = "sqlx-sqlite-wor";

/// Wall time, Graph list requests and CPU (server side and fake side) of one phase.
#[derive(Debug, Clone, Copy, Default)]
struct Phase {
    seconds: f64,
    pages: usize,
    server_cpu: f64,
    fake_cpu: f64,
    /// Of `server_cpu`: sqlx's SQLite worker threads (where SQLite runs).
    sqlite_cpu: f64,
}

impl Phase {
    fn rate(&self, users: usize) -> f64 {
        users as f64 / self.seconds.max(1e-9)
    }

    fn line(&self, users: usize) -> String {
        format!(
            "{:>8.2} s  {:>9.0} users/s  {:>4} pages  CPU/user: server {:.3} ms, fake {:.3} ms",
            self.seconds,
            self.rate(users),
            self.pages,
            self.server_cpu / users as f64 * 1e3,
            self.fake_cpu / users as f64 * 1e3,
        )
    }
}

/// `GET …/users` requests the fake has answered so far (each a page, retries included).
fn list_requests(fake: &GraphFake) -> usize {
    fake.requests()
        .iter()
        .filter(|(m, p)| m == "GET" && p.starts_with("/v1.0/users") && !p.contains("delta"))
        .count()
}

fn phase<T>(fake: &GraphFake, f: impl FnOnce() -> T) -> (T, Phase) {
    let (p0, c0, f0, s0) = (
        list_requests(fake),
        process_cpu_seconds(),
        threads_cpu_seconds(FAKE_THREADS),
        threads_cpu_seconds(SQLITE_THREADS),
    );
    let t = Instant::now();
    let out = f();
    let seconds = t.elapsed().as_secs_f64();
    let fake_cpu = threads_cpu_seconds(FAKE_THREADS) - f0;
    let p = Phase {
        seconds,
        pages: list_requests(fake) - p0,
        server_cpu: process_cpu_seconds() - c0 - fake_cpu,
        fake_cpu,
        sqlite_cpu: threads_cpu_seconds(SQLITE_THREADS) - s0,
    };
    (out, p)
}

fn main() {
    let default_users = std::env::var("IMPORT_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let n = arg("--users", default_users) as usize;
    assert!(n > 0, "--users must be at least 1");
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let fake_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(FAKE_THREADS)
        .enable_all()
        .build()
        .expect("fake runtime");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("idbridge")
        .enable_all()
        .build()
        .expect("runtime");

    let fake = fake_rt.block_on(GraphFake::start());
    fake.add_domain(DOMAIN, false, true);
    eprintln!("seeding {n} users into the Graph fake (setup, not measured)…");
    let seed = Instant::now();
    let ids = fake.add_users(n, DOMAIN);
    let seed_seconds = seed.elapsed().as_secs_f64();
    let server = rt.block_on(start_server(&fake, 200));
    let state = server.state.clone();
    let token = rt
        .block_on(state.m365.access_token(Utc::now()))
        .expect("access token");

    let page_through = || {
        rt.block_on(
            state
                .m365
                .graph()
                .list_all_users(token.expose_secret(), PAGE_SIZE, |_| {}),
        )
        .expect("paged through the tenant")
    };

    eprintln!("baseline: paging through the tenant, no writes…");
    let (listed, paging_before) = phase(&fake, page_through);
    assert_eq!(listed, n, "the baseline saw every user");

    eprintln!("importing {n} users…");
    let mut progress_calls = 0usize;
    let (report, import) = phase(&fake, || {
        rt.block_on(state.m365.import(
            &state.directory,
            &Actor::Admin("bench".into()),
            &ImportSelection::All,
            Utc::now(),
            |_| progress_calls += 1,
        ))
        .expect("import ran")
    });
    assert_eq!(
        (report.imported, report.failed, report.already_imported),
        (n, 0, 0),
        "every user imported once"
    );

    eprintln!("baseline again, after the import…");
    let (listed, paging_after) = phase(&fake, page_through);
    assert_eq!(listed, n);

    // Everyone is here once, linked to their M365 object.
    let stored = rt.block_on(state.store.count_users()).expect("count");
    assert_eq!(stored as usize, n, "one local user per M365 user");
    let links = rt.block_on(state.store.m365_links()).expect("links");
    assert_eq!(links.len(), n);
    for i in (0..n).step_by((n / 50).max(1)) {
        let username = format!("user{:04}", i + 1);
        let user = rt
            .block_on(state.directory.get_user(&username))
            .expect("imported user");
        assert_eq!(user.email, format!("{username}@{DOMAIN}"));
        assert_eq!(user.lastname, format!("{:04}", i + 1));
        assert!(links
            .iter()
            .any(|l| l.user_id == user.id && l.m365_object_id == ids[i]));
    }
    let results = rt
        .block_on(state.store.import_results(&report.run_id))
        .expect("results");
    assert_eq!(results.len(), n, "one result per user");

    let _ = server.stop.send(());
    let _ = rt.block_on(server.handle);

    let paging = Phase {
        seconds: (paging_before.seconds + paging_after.seconds) / 2.0,
        pages: paging_before.pages,
        server_cpu: (paging_before.server_cpu + paging_after.server_cpu) / 2.0,
        fake_cpu: (paging_before.fake_cpu + paging_after.fake_cpu) / 2.0,
        sqlite_cpu: (paging_before.sqlite_cpu + paging_after.sqlite_cpu) / 2.0,
    };
    println!(
        "idbridge import benchmark ({n} users, {cores} cores, Graph fake in-process on loopback, \
         $top={PAGE_SIZE}, SQLite)"
    );
    println!("  setup, {n} users seeded into the fake: {seed_seconds:.2} s (not counted)");
    println!(
        "  baseline, paging only (same client, no writes): before {:.2} s, after {:.2} s",
        paging_before.seconds, paging_after.seconds
    );
    println!("      {}", paging.line(n));
    println!("  import (M365::import, ImportSelection::All):");
    println!("      {}", import.line(n));
    println!(
        "      {progress_calls} progress reports; server CPU {:.2} s ({:.2} cores busy), \
         of which SQLite's threads {:.2} s ({:.3} ms/user)",
        import.server_cpu,
        import.server_cpu / import.seconds.max(1e-9),
        import.sqlite_cpu,
        import.sqlite_cpu / n as f64 * 1e3
    );
    println!(
        "  ratio: import takes {:.2}× the time of paging through the same tenant \
         (server CPU {:.2}× paging's)",
        import.seconds / paging.seconds.max(1e-9),
        import.server_cpu / paging.server_cpu.max(1e-9)
    );
    drop(fake);
    drop(fake_rt);
}

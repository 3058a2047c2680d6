//! The markdown tables, one per scenario: each jetcron figure with its
//! anchor next to it and the ratio jetcron / anchor.

use std::fmt::Write as _;

use crate::api::ApiReport;
use crate::burst::BurstReport;
use crate::lateness::{LatenessReport, LatenessRow};
use crate::publish::WINDOW;
use crate::scale::ScaleReport;
use crate::stats::{Summary, ratio};
use crate::svg::thousands;
use crate::worker::WorkerReport;

const NONE: &str = "—";

/// A value with `digits` decimals, or a dash.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| NONE.to_string(), |v| format!("{v:.digits$}"))
}

fn int(v: Option<i64>) -> String {
    v.map_or_else(|| NONE.to_string(), |v| v.to_string())
}

fn mib(kib: Option<u64>) -> String {
    num(kib.map(|k| k as f64 / 1024.0), 1)
}

/// `| case | figure | a | b | a/b |`
fn compared(
    md: &mut String,
    case: &str,
    figure: &str,
    a: Option<f64>,
    b: Option<f64>,
    digits: usize,
) {
    let _ = writeln!(
        md,
        "| {case} | {figure} | {} | {} | {} |",
        num(a, digits),
        num(b, digits),
        num(ratio(a, b), 2)
    );
}

fn errors<'a>(md: &mut String, errs: impl Iterator<Item = (String, &'a Option<String>)>) {
    for (case, e) in errs {
        if let Some(e) = e {
            let _ = writeln!(md, "\n- {case} failed: {}", e.replace('\n', " "));
        }
    }
}

/// `| case | figure | jetcron | raw | native | jetcron/raw | jetcron/native |`
fn against_anchors(
    md: &mut String,
    case: &str,
    figure: &str,
    [jetcron, raw, native]: [Option<f64>; 3],
    digits: usize,
) {
    let _ = writeln!(
        md,
        "| {case} | {figure} | {} | {} | {} | {} | {} |",
        num(jetcron, digits),
        num(raw, digits),
        num(native, digits),
        num(ratio(jetcron, raw), 2),
        num(ratio(jetcron, native), 2)
    );
}

pub fn lateness(l: &LatenessReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Lateness: jobs firing every second (`* * * * * *`, 1 shard)\n"
    );
    let _ = writeln!(
        md,
        "Per load a fresh nats-server for each system, native first, then raw publish, then jetcron. \
         Raw publish: one plain async-nats client that at every whole second publishes one message per job \
         (the shard message jetcron would store, with `Nats-Msg-Id`) to a work-queue stream with async \
         JetStream publishes, at most {} acks outstanding; a round that overruns its second skips the \
         instants it overran. {:.0} s measured after a {:.0} s warm-up; lateness = received at a JetStream \
         consumer − scheduled instant; fires received more than {:.1} s after the window are not counted. \
         CPU: nats-server + jetcron-scheduler (jetcron), nats-server (native), nats-server only (raw publish: \
         the publishing client runs inside the bench and is not counted), utime + stime in the window.\n",
        thousands(WINDOW as u64),
        l.window_s,
        l.warmup_s,
        l.grace_s
    );
    let _ = writeln!(
        md,
        "| jobs | figure | jetcron | raw publish | NATS-native | jetcron / raw | jetcron / native |\n\
         |---:|---|---:|---:|---:|---:|---:|"
    );
    let mut loads: Vec<usize> = l.rows.iter().map(|r| r.jobs).collect();
    loads.dedup();
    for n in loads {
        let rows = [l.row("jetcron", n), l.row("raw", n), l.row("native", n)];
        let case = thousands(n as u64);
        let each = |f: &dyn Fn(&LatenessRow) -> Option<f64>| rows.map(|r| r.and_then(f));
        let late = |f: fn(&Summary) -> i64| {
            each(&|r: &LatenessRow| r.lateness.as_ref().map(|s| f(s) as f64))
        };
        against_anchors(&mut md, &case, "p50 lateness (ms)", late(|s| s.p50_ms), 0);
        against_anchors(&mut md, &case, "p99 lateness (ms)", late(|s| s.p99_ms), 0);
        against_anchors(&mut md, &case, "max lateness (ms)", late(|s| s.max_ms), 0);
        against_anchors(
            &mut md,
            &case,
            "delivered (fraction of due)",
            each(&|r: &LatenessRow| r.error.is_none().then_some(r.delivered)),
            4,
        );
        against_anchors(
            &mut md,
            &case,
            "CPU s per 1,000 fires",
            each(&|r: &LatenessRow| r.cpu_s_per_1000_fires),
            3,
        );
        // Where it goes: the nats-server's part, the rest is the scheduler's.
        against_anchors(
            &mut md,
            &case,
            "of which nats-server",
            each(&|r: &LatenessRow| {
                (r.received > 0).then(|| r.server_cpu_s / r.received as f64 * 1000.0)
            }),
            3,
        );
        let [j, raw, nat] = rows;
        let server_mib = |r: Option<&LatenessRow>| mib(r.and_then(|r| r.server_rss_kib));
        let _ = writeln!(
            md,
            "| {case} | RSS MiB (scheduler; nats-server) | {}; {} | {NONE}; {} | {NONE}; {} | | |",
            mib(j.and_then(|r| r.scheduler_rss_kib)),
            server_mib(j),
            server_mib(raw),
            server_mib(nat)
        );
    }
    errors(
        &mut md,
        l.rows
            .iter()
            .map(|r| (format!("{} at {} jobs", r.system, r.jobs), &r.error)),
    );
    md.push('\n');
    md
}

pub fn burst(b: &BurstReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### Burst: jobs due in the same second (`@at`)\n");
    let _ = writeln!(
        md,
        "jetcron: from the instant until the last shard message is stored in the work stream (polled every 20 ms). \
         Anchor: the same number of shard-sized messages with `Nats-Msg-Id` published with raw async JetStream \
         publishes (at most 2,000 acks outstanding), first send to last ack. Two probe jobs keep firing meanwhile; \
         both also fire at the burst's instant, as part of the crowd, and are reported apart. The raw anchor has a \
         probe of its own, a message every 100 ms on the same connection.\n"
    );
    let _ = writeln!(
        md,
        "| jobs | figure | jetcron | raw publish | jetcron / raw |\n|---:|---|---:|---:|---:|"
    );
    for r in &b.rows {
        let case = thousands(r.jobs as u64);
        let ms = |v: Option<i64>| v.map(|v| v as f64);
        compared(
            &mut md,
            &case,
            "all stored (ms)",
            ms(r.jetcron_last_ms),
            ms(r.raw_ms),
            0,
        );
        let rate = |v: Option<i64>| {
            v.filter(|&v| v > 0)
                .map(|v| r.jobs as f64 / (v as f64 / 1000.0))
        };
        compared(
            &mut md,
            &case,
            "messages stored per s",
            rate(r.jetcron_last_ms),
            rate(r.raw_ms),
            0,
        );
        let _ = writeln!(
            md,
            "| {case} | first shard stored (ms after the instant) | {} | | |",
            int(r.jetcron_first_ms)
        );
        let _ = writeln!(
            md,
            "| {case} | probe `* * * * * *` max lateness, other instants (ms) | {} | | |",
            int(r.probe_second_max_ms)
        );
        compared(
            &mut md,
            &case,
            "probe `@every 100ms` max lateness, other instants (ms)",
            ms(r.probe_100ms_max_ms),
            ms(r.raw_probe_max_ms),
            0,
        );
        let _ = writeln!(
            md,
            "| {case} | probes' fires at the burst's instant, lateness (ms) | {} | | |",
            int(r.probe_at_instant_ms)
        );
        let _ = writeln!(
            md,
            "| {case} | definitions stored in (s); ahead of the instant (s) | {:.1}; {:.1} | | |",
            r.load_s, r.lead_s
        );
    }
    errors(
        &mut md,
        b.rows
            .iter()
            .map(|r| (format!("{} jobs", r.jobs), &r.error)),
    );
    md.push('\n');
    md
}

pub fn scale(s: &ScaleReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Scale: registered jobs (yearly) plus one probe firing every second\n"
    );
    let ttl = s.rows.first().map_or(0.0, |r| r.lease_ttl_s);
    let _ = writeln!(
        md,
        "On time = probe lateness < 100 ms. Lease TTL {ttl:.1} s. Lost = probe instants neither fired nor named \
         by a `misfired` event. No NATS anchor: NATS-native schedules have no leader to take over.\n"
    );
    let _ = writeln!(md, "| jobs | figure | jetcron |\n|---:|---|---:|");
    for r in &s.rows {
        let case = thousands(r.jobs as u64);
        let rows = [
            ("definitions stored in (s)", num(Some(r.load_s), 1)),
            (
                "cold start: process start → probe on time (s)",
                num(r.cold_start_s, 2),
            ),
            ("scheduler RSS after load (MiB)", mib(r.scheduler_rss_kib)),
            ("nats-server RSS (MiB)", mib(r.server_rss_kib)),
            (
                "standby started next to the leader: start → warm (s)",
                num(r.standby_warm_s, 2),
            ),
            (
                "takeover: SIGKILL → probe fires (s)",
                num(r.takeover_fire_s, 2),
            ),
            (
                "takeover: lateness of that first fire (ms)",
                int(r.takeover_first_late_ms),
            ),
            (
                "takeover: SIGKILL → probe on time (s)",
                num(r.takeover_on_time_s, 2),
            ),
            (
                "takeover: probe instants lost",
                r.takeover_lost.map_or(NONE.into(), |v| v.to_string()),
            ),
            (
                "takeover: probe instants reported missed",
                r.takeover_reported_missed
                    .map_or(NONE.into(), |v| v.to_string()),
            ),
            (
                "graceful: SIGTERM → lease holder changes (s)",
                num(r.graceful_lease_s, 2),
            ),
            (
                "graceful: SIGTERM → standby fires (s)",
                num(r.graceful_fire_s, 2),
            ),
            (
                "graceful: lateness of that first fire (ms)",
                int(r.graceful_first_late_ms),
            ),
        ];
        for (figure, value) in rows {
            let _ = writeln!(md, "| {case} | {figure} | {value} |");
        }
    }
    errors(
        &mut md,
        s.rows
            .iter()
            .map(|r| (format!("{} jobs", r.jobs), &r.error)),
    );
    md.push('\n');
    md
}

pub fn api(a: &ApiReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "### Control API at {} jobs\n", thousands(a.jobs as u64));
    let _ = writeln!(
        md,
        "Request/reply on `jetcron.api.<endpoint>`, one call at a time; a call without an answer within {:.0} s \
         or with an error reply counts as failed.\n",
        a.timeout_s
    );
    let _ = writeln!(
        md,
        "| endpoint | request | calls | ok | failed | p50 (ms) | p99 (ms) |\n|---|---|---:|---:|---:|---:|---:|"
    );
    for e in &a.endpoints {
        let body = if e.body.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", e.body)
        };
        let _ = writeln!(
            md,
            "| `{}` | {body} | {} | {} | {} | {} | {} |",
            e.endpoint,
            e.calls,
            e.ok,
            e.failed,
            num(e.p50_ms, 2),
            num(e.p99_ms, 2)
        );
    }
    for e in &a.endpoints {
        if let Some(err) = &e.first_error {
            let _ = writeln!(
                md,
                "\n- `{}` first failure: {}",
                e.endpoint,
                err.replace('\n', " ")
            );
        }
    }
    errors(
        &mut md,
        std::iter::once(("the API scenario".to_string(), &a.error)),
    );
    md.push('\n');
    md
}

/// One worker's figures in the worker scenario.
struct Throughput {
    per_s: Option<f64>,
    s: Option<f64>,
    results: u64,
}

/// The rows of one worker's figures next to raw pull + ack.
fn against_raw(md: &mut String, w: &WorkerReport, case: &str, who: &str, t: &Throughput) {
    let _ = writeln!(
        md,
        "| shards | figure | {who} | raw pull + ack | jetcron / raw |\n|---:|---|---:|---:|---:|"
    );
    compared(md, case, "messages per s", t.per_s, w.raw_per_s, 0);
    compared(md, case, "total (s)", t.s, w.raw_s, 2);
    let _ = writeln!(md, "| {case} | results published | {} | | |", t.results);
}

pub fn worker(w: &WorkerReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Worker throughput: `run: {{\"shell\": \"true\"}}`\n"
    );
    let _ = writeln!(
        md,
        "One `jetcron-worker --allow-shell --concurrency {}` from process start until every stored shard is run, \
         its result published and acked. Anchor: one plain pull consumer acking the same number of messages.\n",
        w.concurrency
    );
    let case = thousands(w.shards as u64);
    let shell = Throughput {
        per_s: w.jetcron_per_s,
        s: w.jetcron_s,
        results: w.jetcron_results,
    };
    against_raw(&mut md, w, &case, "jetcron-worker", &shell);
    let _ = writeln!(
        md,
        "\n### Worker throughput: `run: {{\"handler\": \"noop\"}}`\n"
    );
    let _ = writeln!(
        md,
        "One worker embedded in the bench process (the `jetcron-worker` library on a runtime of its own, \
         handler concurrency {}) with a handler that returns at once, from its start until every stored \
         shard is run, its result published and acked. The same anchor.\n",
        w.handler_concurrency
    );
    let handler = Throughput {
        per_s: w.handler_per_s,
        s: w.handler_s,
        results: w.handler_results,
    };
    against_raw(&mut md, w, &case, "embedded worker", &handler);
    let _ = writeln!(
        md,
        "\nThe same shards through plain consumers that take them as a worker does ({} at a time, \
         each settled with a confirmed ack), without and with the work protocol's store operations \
         per shard (read the shard record, write it `running`, publish the result, write the record \
         final), and no executor:\n",
        w.handler_concurrency
    );
    let _ = writeln!(
        md,
        "| shards | figure | embedded worker | anchor | jetcron / anchor |\n|---:|---|---:|---:|---:|"
    );
    compared(
        &mut md,
        &case,
        "per s, vs pull + confirmed ack",
        w.handler_per_s,
        w.settled_per_s,
        0,
    );
    compared(
        &mut md,
        &case,
        "per s, vs the same + protocol writes",
        w.handler_per_s,
        w.protocol_per_s,
        0,
    );
    errors(
        &mut md,
        std::iter::once(("the worker scenario".to_string(), &w.error)),
    );
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, jobs: usize, p99: i64) -> LatenessRow {
        LatenessRow {
            system: system.into(),
            jobs,
            lateness: Some(Summary {
                count: 10,
                p50_ms: 5,
                p99_ms: p99,
                max_ms: p99 + 1,
            }),
            delivered: 1.0,
            received: 10,
            due: 10,
            cpu_s: 0.5,
            server_cpu_s: 0.0,
            cpu_s_per_1000_fires: Some(0.25),
            scheduler_rss_kib: Some(20_480),
            server_rss_kib: Some(10_240),
            error: None,
        }
    }

    #[test]
    fn lateness_rows_put_the_anchors_next_to_jetcron() {
        let mut failed = row("jetcron", 1000, 0);
        failed.lateness = None;
        failed.error = Some("boom".into());
        let l = LatenessReport {
            warmup_s: 5.0,
            window_s: 20.0,
            grace_s: 3.0,
            rows: vec![
                row("native", 100, 200),
                row("raw", 100, 25),
                row("jetcron", 100, 50),
                row("native", 1000, 250),
                row("raw", 1000, 20),
                failed,
                // No raw row at this load.
                row("native", 10_000, 300),
                row("jetcron", 10_000, 60),
            ],
        };
        let md = lateness(&l);
        assert!(
            md.contains(
                "| jobs | figure | jetcron | raw publish | NATS-native | jetcron / raw | jetcron / native |"
            ),
            "{md}"
        );
        assert!(md.contains("at most 2,000 acks outstanding"), "{md}");
        assert!(
            md.contains("| 100 | p99 lateness (ms) | 50 | 25 | 200 | 2.00 | 0.25 |"),
            "{md}"
        );
        assert!(
            md.contains("| 1,000 | p99 lateness (ms) | — | 20 | 250 | — | — |"),
            "{md}"
        );
        assert!(
            md.contains("| 10,000 | p99 lateness (ms) | 60 | — | 300 | — | 0.20 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 10,000 | delivered (fraction of due) | 1.0000 | — | 1.0000 | — | 1.00 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| 100 | RSS MiB (scheduler; nats-server) | 20.0; 10.0 | —; 10.0 | —; 10.0 | | |"
            ),
            "{md}"
        );
        assert!(md.contains("- jetcron at 1000 jobs failed: boom"), "{md}");
    }

    #[test]
    fn numbers_and_dashes() {
        assert_eq!(num(Some(1.23456), 2), "1.23");
        assert_eq!(num(None, 2), "—");
        assert_eq!(num(Some(f64::NAN), 2), "—");
        assert_eq!(mib(Some(2048)), "2.0");
    }
}

//! `jetcron status` (leader, replicas, jobs, worker groups) and
//! `jetcron workers` (live workers from their heartbeats).

use chrono::{DateTime, Utc};
use jetcron_shared::api::{StatusReply, WorkersReply};
use jetcron_shared::connect::ConnectArgs;

use crate::output::{ago, duration_ms, instant, table};
use crate::{Failure, Output, connect};

pub async fn status(args: &ConnectArgs, out: &Output) -> Result<(), Failure> {
    let reply = connect::api(args).await?.status().await?;
    if out.json {
        out.json(&reply);
    } else {
        println!("{}", status_text(&reply, Utc::now()));
    }
    Ok(())
}

pub fn status_text(s: &StatusReply, now: DateTime<Utc>) -> String {
    let mut lines = Vec::new();
    lines.push(match &s.leader {
        Some(l) => format!(
            "leader:   {} (epoch {}, since {}, {})",
            l.holder,
            l.epoch,
            instant(l.since),
            ago(l.since, now)
        ),
        None => "leader:   none: no scheduler holds the lease, nothing fires".to_string(),
    });
    let j = &s.jobs;
    // Replies of older schedulers have no count beside the list.
    let invalid = j.invalid_count.max(j.invalid.len() as u64);
    lines.push(format!(
        "jobs:     {} ({} active, {} paused, {invalid} invalid){}",
        j.total,
        j.active,
        j.paused,
        if j.complete {
            ""
        } else {
            "; still counting: the answering replica has not read every job yet"
        }
    ));
    for bad in &j.invalid {
        lines.push(format!("invalid:  {}: {}", bad.id, bad.error));
    }
    let unnamed = invalid.saturating_sub(j.invalid.len() as u64);
    if unnamed > 0 {
        lines.push(format!(
            "invalid:  and {unnamed} more (jetcron job ls --state invalid)"
        ));
    }

    lines.push(String::new());
    if s.replicas.is_empty() {
        lines.push("no scheduler replica heartbeats".to_string());
    } else {
        let mut replicas = s.replicas.clone();
        replicas.sort_by(|a, b| b.leader.cmp(&a.leader).then(a.id.cmp(&b.id)));
        let rows: Vec<Vec<String>> = replicas
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    r.host.clone(),
                    r.version.clone(),
                    match (r.leader, r.warm) {
                        (true, _) => "leader",
                        (false, true) => "standby",
                        (false, false) => "standby (loading)",
                    }
                    .to_string(),
                    ago(r.started_at, now).replace(" ago", ""),
                    ago(r.last_heartbeat, now),
                ]
            })
            .collect();
        lines.push(table(
            &["REPLICA", "HOST", "VERSION", "ROLE", "UP", "HEARTBEAT"],
            &rows,
        ));
    }

    lines.push(String::new());
    if s.groups.is_empty() {
        lines.push("no worker groups".to_string());
    } else {
        let rows: Vec<Vec<String>> = s
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.group.clone(),
                    g.jobs.to_string(),
                    g.workers.to_string(),
                    g.pending.to_string(),
                    g.in_flight.to_string(),
                    g.oldest_pending_age_ms
                        .map_or_else(|| "-".to_string(), duration_ms),
                ]
            })
            .collect();
        lines.push(table(
            &[
                "GROUP",
                "JOBS",
                "WORKERS",
                "PENDING",
                "IN FLIGHT",
                "OLDEST PENDING",
            ],
            &rows,
        ));
    }
    lines.join("\n")
}

pub async fn workers(args: &ConnectArgs, out: &Output) -> Result<(), Failure> {
    let reply = connect::api(args).await?.workers().await?;
    if out.json {
        out.json(&reply);
    } else {
        println!("{}", workers_table(&reply, Utc::now()));
    }
    Ok(())
}

pub fn workers_table(reply: &WorkersReply, now: DateTime<Utc>) -> String {
    if reply.workers.is_empty() {
        return "no live workers".to_string();
    }
    let mut workers = reply.workers.clone();
    workers.sort_by(|a, b| a.group.cmp(&b.group).then(a.id.cmp(&b.id)));
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.group.clone(),
                w.host.clone(),
                w.version.clone(),
                w.concurrency.to_string(),
                w.running.to_string(),
                ago(w.last_heartbeat, now),
                if w.handlers.is_empty() {
                    "-".to_string()
                } else {
                    w.handlers.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "GROUP",
            "HOST",
            "VERSION",
            "CONCURRENCY",
            "RUNNING",
            "HEARTBEAT",
            "HANDLERS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use jetcron_shared::api::{GroupStatus, InvalidJob, JobCounts, LeaderInfo};
    use jetcron_shared::runs::{ReplicaHeartbeat, WorkerHeartbeat};

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 21, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    #[test]
    fn status_shows_leader_jobs_replicas_and_groups() {
        let replica = |id: &str, leader| ReplicaHeartbeat {
            id: id.into(),
            host: "h".into(),
            version: "0.1.0".into(),
            started_at: t(0),
            last_heartbeat: t(299),
            leader,
            warm: true,
        };
        let s = StatusReply {
            leader: Some(LeaderInfo {
                holder: "b".into(),
                epoch: 7,
                since: t(120),
            }),
            replicas: vec![replica("a", false), replica("b", true)],
            jobs: JobCounts {
                total: 25,
                active: 1,
                paused: 1,
                invalid_count: 23,
                invalid: vec![InvalidJob {
                    id: "broken".into(),
                    error: "schedule: bad".into(),
                }],
                complete: true,
            },
            groups: vec![GroupStatus {
                group: "default".into(),
                jobs: 2,
                workers: 2,
                pending: 4,
                in_flight: 1,
                oldest_pending_age_ms: Some(12_000),
            }],
        };
        assert_eq!(
            status_text(&s, t(300)),
            "leader:   b (epoch 7, since 2026-11-24T21:02:00Z, 3m00s ago)\n\
             jobs:     25 (1 active, 1 paused, 23 invalid)\n\
             invalid:  broken: schedule: bad\n\
             invalid:  and 22 more (jetcron job ls --state invalid)\n\
             \n\
             REPLICA  HOST  VERSION  ROLE     UP     HEARTBEAT\n\
             b        h     0.1.0    leader   5m00s  1.0s ago\n\
             a        h     0.1.0    standby  5m00s  1.0s ago\n\
             \n\
             GROUP    JOBS  WORKERS  PENDING  IN FLIGHT  OLDEST PENDING\n\
             default  2     2        4        1          12.0s"
        );
        let none = StatusReply {
            leader: None,
            replicas: vec![],
            jobs: JobCounts {
                total: 0,
                active: 0,
                paused: 0,
                invalid_count: 0,
                invalid: vec![],
                complete: false,
            },
            groups: vec![],
        };
        let text = status_text(&none, t(0));
        assert!(text.starts_with("leader:   none"), "{text}");
        assert!(
            text.contains("jobs:     0 (0 active, 0 paused, 0 invalid); still counting"),
            "{text}"
        );
        assert!(text.ends_with("no worker groups"), "{text}");
    }

    #[test]
    fn workers_table_sorted_by_group_and_id() {
        let w = |id: &str, group: &str| WorkerHeartbeat {
            id: id.into(),
            group: group.into(),
            host: "h".into(),
            version: "0.1.0".into(),
            concurrency: 4,
            running: 1,
            started_at: t(0),
            last_heartbeat: t(8),
            handlers: if id == "w1" {
                vec!["invoice".into(), "remind".into()]
            } else {
                vec![]
            },
        };
        let reply = WorkersReply {
            workers: vec![w("w2", "default"), w("w1", "billing"), w("w0", "default")],
        };
        assert_eq!(
            workers_table(&reply, t(10)),
            "ID  GROUP    HOST  VERSION  CONCURRENCY  RUNNING  HEARTBEAT  HANDLERS\n\
             w1  billing  h     0.1.0    4            1        2.0s ago   invoice,remind\n\
             w0  default  h     0.1.0    4            1        2.0s ago   -\n\
             w2  default  h     0.1.0    4            1        2.0s ago   -"
        );
        assert_eq!(
            workers_table(&WorkersReply { workers: vec![] }, t(0)),
            "no live workers"
        );
    }
}

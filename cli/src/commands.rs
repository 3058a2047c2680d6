//! One function per command.

use std::io::Read;

use bytes::Bytes;
use futures::StreamExt;
use jetcron_shared::api::{ApiClient, ClientError};
use jetcron_shared::connect::{ConnectArgs, Patience};
use jetcron_shared::wire::{Event, EventBody, RunResult};

use crate::output::{Output, table};

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub exit_code: u8,
}

impl Failure {
    fn refused(message: String) -> Failure {
        Failure {
            message,
            exit_code: 1,
        }
    }

    fn unavailable(message: String) -> Failure {
        Failure {
            message,
            exit_code: 3,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Api(api) => Failure::refused(api.message),
            other => Failure::unavailable(other.to_string()),
        }
    }
}

async fn connect(
    args: &ConnectArgs,
) -> Result<(async_nats::Client, jetcron_shared::Names), Failure> {
    let names = args.names().map_err(|e| Failure {
        message: e.to_string(),
        exit_code: 2,
    })?;
    let client = args
        .connect("jetcron cli", Patience::FailFast)
        .await
        .map_err(|e| Failure::unavailable(e.to_string()))?;
    Ok((client, names))
}

async fn api(args: &ConnectArgs) -> Result<ApiClient, Failure> {
    let (client, names) = connect(args).await?;
    Ok(ApiClient::new(client, names))
}

pub async fn put(args: &ConnectArgs, out: &Output, file: &str) -> Result<(), Failure> {
    let body = read_input(file)?;
    let reply = api(args).await?.put_raw(body).await?;
    if out.json {
        out.json(&reply);
    } else {
        let verb = if reply.created { "created" } else { "updated" };
        println!("job {} {verb} (revision {})", reply.job.id, reply.revision);
    }
    Ok(())
}

fn read_input(file: &str) -> Result<Bytes, Failure> {
    let mut buf = Vec::new();
    let read = if file == "-" {
        std::io::stdin().read_to_end(&mut buf).map(|_| ())
    } else {
        std::fs::read(file).map(|b| buf = b)
    };
    read.map_err(|e| Failure {
        message: format!("cannot read {file}: {e}"),
        exit_code: 2,
    })?;
    Ok(Bytes::from(buf))
}

pub async fn get(args: &ConnectArgs, out: &Output, id: &str) -> Result<(), Failure> {
    let reply = api(args).await?.get(id).await?;
    if out.json {
        out.json(&reply);
        return Ok(());
    }
    match (&reply.job, &reply.invalid) {
        (Some(job), _) => out.json(job),
        (None, invalid) => {
            println!(
                "# revision {}: INVALID: {}",
                reply.revision,
                invalid.as_deref().unwrap_or("?")
            );
            println!("{}", reply.raw.as_deref().unwrap_or(""));
        }
    }
    Ok(())
}

pub async fn rm(args: &ConnectArgs, out: &Output, id: &str) -> Result<(), Failure> {
    let reply = api(args).await?.delete(id).await?;
    if out.json {
        out.json(&reply);
    } else {
        println!("job {} deleted", reply.id);
    }
    Ok(())
}

pub async fn ls(args: &ConnectArgs, out: &Output) -> Result<(), Failure> {
    let reply = api(args).await?.list().await?;
    if out.json {
        out.json(&reply);
        return Ok(());
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = reply
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                j.schedule.clone().unwrap_or_else(dash),
                j.timezone.clone().unwrap_or_else(dash),
                j.group.clone().unwrap_or_else(dash),
                j.shards.map_or_else(dash, |s| s.to_string()),
                j.revision.to_string(),
                j.invalid
                    .as_ref()
                    .map_or_else(|| "ok".to_string(), |e| format!("INVALID: {e}")),
            ]
        })
        .collect();
    table(
        &[
            "ID", "SCHEDULE", "TIMEZONE", "GROUP", "SHARDS", "REV", "STATUS",
        ],
        &rows,
    );
    Ok(())
}

pub async fn watch(args: &ConnectArgs, out: &Output, job: Option<&str>) -> Result<(), Failure> {
    let (client, names) = connect(args).await?;
    let results_subject = match job {
        Some(j) => names.results_subject(j),
        None => names.results_all(),
    };
    let fail = |e: async_nats::SubscribeError| Failure::unavailable(e.to_string());
    let results = client.subscribe(results_subject).await.map_err(fail)?;
    let events = client.subscribe(names.events_all()).await.map_err(fail)?;
    let mut merged =
        futures::stream::select(results.map(|m| (true, m)), events.map(|m| (false, m)));
    let job = job.map(str::to_string);
    loop {
        let next = tokio::select! {
            m = merged.next() => m,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some((is_result, msg)) = next else {
            return Err(Failure::unavailable("connection closed".into()));
        };
        if out.json {
            println!("{}", String::from_utf8_lossy(&msg.payload));
            continue;
        }
        if is_result {
            if let Ok(r) = RunResult::decode(&msg.payload) {
                println!("{}", result_line(&r));
            }
        } else if let Ok(e) = Event::decode(&msg.payload)
            && (job.is_none() || e.job() == job.as_deref())
        {
            println!("{}", event_line(&e));
        }
    }
}

fn result_line(r: &RunResult) -> String {
    let took = (r.finished_at - r.started_at).num_milliseconds();
    let output = r.output.trim_end().lines().last().unwrap_or("");
    format!(
        "{} result  {} {} shard {}/{} attempt {} {} on {} in {took}ms exit={} {}",
        r.finished_at.format("%H:%M:%S%.3f"),
        r.job,
        r.instant.format("%Y-%m-%dT%H:%M:%SZ"),
        r.shard,
        r.shards,
        r.attempt,
        r.status.as_str(),
        r.worker,
        r.exit_code
            .map_or_else(|| "-".to_string(), |c| c.to_string()),
        r.error.as_deref().unwrap_or(output),
    )
}

fn event_line(e: &Event) -> String {
    let at = e.at.format("%H:%M:%S%.3f");
    let detail = match &e.body {
        EventBody::Fired {
            job,
            instant,
            shards,
            late_ms,
            ..
        } => {
            format!(
                "{job} {} shards={shards} late={late_ms}ms",
                instant.format("%Y-%m-%dT%H:%M:%SZ")
            )
        }
        EventBody::Misfired {
            job, missed, fired, ..
        } => {
            format!(
                "{job} missed={missed} fired late for {}",
                fired.format("%Y-%m-%dT%H:%M:%SZ")
            )
        }
        EventBody::Dead {
            job,
            instant,
            shard,
            attempts,
            status,
            ..
        } => format!(
            "{job} {} shard {shard} {} after {attempts} attempts",
            instant.format("%Y-%m-%dT%H:%M:%SZ"),
            status.as_str()
        ),
        EventBody::Invalid { job, error, .. } => format!("{job}: {error}"),
        EventBody::Leader { holder, epoch } => format!("{holder} leads (epoch {epoch})"),
        EventBody::Skipped {
            job,
            instant,
            reason,
            count,
        } => format!(
            "{job} {} skipped ({reason}){}",
            instant.format("%Y-%m-%dT%H:%M:%SZ"),
            if *count > 1 {
                format!(" x{count}")
            } else {
                String::new()
            }
        ),
        EventBody::Paused { job, .. } => format!("{job} paused"),
        EventBody::Resumed { job, skipped, .. } => {
            format!("{job} resumed ({skipped} fires skipped while paused)")
        }
        EventBody::Triggered {
            job,
            fire_id,
            shards,
            ..
        } => {
            format!("{job} triggered {fire_id} shards={shards:?}")
        }
    };
    format!("{at} {:<7} {detail}", e.kind())
}

//! Property tests over job definitions and schedules: generated valid
//! inputs, mutations of them that each break one known field, and arbitrary
//! bytes and text. Nothing panics, what is accepted survives a round trip,
//! and every refusal names the field that was broken, in a message of
//! bounded length.
//!
//! Each property runs 256 cases by default (`PROPTEST_CASES` sets another
//! number); the long run in the README sets it high, in release.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod generate;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use generate::mutate::{Expect, garbage, mutation};
use generate::*;
use jetcron_shared::job::{Definition, Job, JobError, JobSpec, MAX_DEFINITION_BYTES};
use jetcron_shared::schedule::{CronField, Schedule, ScheduleError};
use proptest::prelude::*;

fn bounded(text: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        text.chars().count() <= MAX_MESSAGE_CHARS,
        "message of {} characters: {}",
        text.chars().count(),
        text.chars().take(300).collect::<String>()
    );
    Ok(())
}

/// The accepted job again, from what it encodes to, as the jobs bucket
/// stores it.
fn round_trips(job: &Job) -> Result<(), TestCaseError> {
    let stored = job.spec.encode();
    prop_assert_eq!(&JobSpec::decode(&stored).unwrap(), &job.spec);
    let again = Job::decode(&stored, Some(job.id())).unwrap();
    prop_assert_eq!(&again, job);
    let def = Definition::decode(&stored, Some(job.id())).unwrap();
    prop_assert_eq!(&def.job().unwrap(), job);
    Ok(())
}

fn check_refusal(err: &JobError) -> Result<(), TestCaseError> {
    let text = err.to_string();
    bounded(&text)?;
    if let JobError::Field { field, reason } = err {
        prop_assert!(!field.is_empty() && !reason.is_empty(), "{err:?}");
    }
    Ok(())
}

proptest! {
    /// Every generated definition is accepted, and what it is stored as
    /// decodes to the same job.
    #[test]
    fn valid_definitions_are_accepted_and_round_trip(def in definition(), pretty in any::<bool>()) {
        let body = if pretty { serde_json::to_vec_pretty(&def) } else { serde_json::to_vec(&def) }.unwrap();
        let id = def["id"].as_str().unwrap();
        let job = Job::decode(&body, Some(id));
        prop_assert!(job.is_ok(), "{} refused: {:?}", String::from_utf8_lossy(&body), job);
        round_trips(&job.unwrap())?;
    }

    /// A definition with one field broken is refused naming that field (a
    /// syntax error when it is not a JSON object); a harmless change is
    /// accepted.
    #[test]
    fn a_broken_field_is_refused_by_name(case in mutation()) {
        let got = Job::decode(&case.body, case.key.as_deref());
        let expect = if case.body.len() > MAX_DEFINITION_BYTES { Expect::TooLarge } else { case.expect.clone() };
        let shown = String::from_utf8_lossy(&case.body).chars().take(2000).collect::<String>();
        match (&expect, &got) {
            (Expect::Field(want), Err(err @ JobError::Field { field, .. })) => {
                prop_assert_eq!(field, want, "{} gave {}", shown, err);
                check_refusal(err)?;
            }
            (Expect::Syntax, Err(err @ JobError::Syntax(_))) => check_refusal(err)?,
            (Expect::Ok, Ok(job)) => round_trips(job)?,
            (Expect::TooLarge, Err(JobError::TooLarge(n))) => prop_assert_eq!(*n, case.body.len()),
            _ => prop_assert!(false, "{} should be {:?}, got {:?}", shown, expect, got),
        }
    }

    /// Whatever the bytes, decoding returns; a refusal is bounded, and what
    /// is accepted round-trips.
    #[test]
    fn any_bytes_decode_without_panic(body in garbage(), key in prop::option::of(id())) {
        match Job::decode(&body, key.as_deref()) {
            Ok(job) => round_trips(&job)?,
            Err(err) => check_refusal(&err)?,
        }
    }

    /// Every generated schedule parses in every time zone, and its instants
    /// after any moment are later than it, strictly increasing, and where
    /// the form says.
    #[test]
    fn valid_schedules_fire_forward(
        s in schedule(),
        tz in timezone_often_tricky(),
        after in instant(),
        sub in 0u32..1_000_000_000,
        n in 1usize..6,
    ) {
        let after = after.with_nanosecond(sub).unwrap_or(after);
        let parsed = Schedule::parse(&s.text, tz);
        prop_assert!(parsed.is_ok(), "{:?} in {}: {:?}", s.text, tz, parsed);
        let parsed = parsed.unwrap();
        let all = parsed.upcoming(after, n);
        let mut prev = after;
        for t in &all {
            prop_assert!(*t > prev, "{} in {}: {} is not after {} ({:?})", s.text, tz, t, prev, all);
            prev = *t;
        }
        match s.kind {
            ScheduleKind::Cron => {
                prop_assert_eq!(all.len(), n, "{} in {} after {}", s.text, tz, after);
                prop_assert!(all.iter().all(|t| t.nanosecond() == 0));
            }
            ScheduleKind::Every(period, offset) => {
                prop_assert_eq!(all.len(), n);
                for t in &all {
                    prop_assert_eq!((t.timestamp_millis() - offset as i64).rem_euclid(period as i64), 0, "{}", t);
                }
                prop_assert!(all[0] - after <= TimeDelta::milliseconds(period as i64));
            }
            ScheduleKind::After(delay) => {
                prop_assert_eq!(all, vec![after + TimeDelta::milliseconds(delay as i64)]);
            }
            ScheduleKind::At(at) => {
                prop_assert_eq!(all, if at > after { vec![at] } else { vec![] });
            }
            ScheduleKind::Manual => prop_assert!(all.is_empty()),
        }
    }

    /// Any text: parsing returns; an accepted schedule walks forward, a
    /// refusal is bounded and does not repeat a long input whole.
    #[test]
    fn any_schedule_text_parses_or_is_refused_briefly(
        text in any_schedule_text(),
        tz in timezone(),
        after in instant(),
    ) {
        match Schedule::parse(&text, tz) {
            Ok(s) => {
                let all = s.upcoming(after, 3);
                let mut prev = after;
                for t in &all {
                    prop_assert!(*t > prev, "{:?}: {:?}", text, all);
                    prev = *t;
                }
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.is_empty());
                bounded(&message)?;
                if text.chars().count() > 80 {
                    prop_assert!(!message.contains(&text), "{message}");
                }
            }
        }
    }

    /// A cron expression with one field broken is refused naming that field.
    #[test]
    fn a_broken_cron_field_is_named((text, broken) in cron_with_bad_field(), tz in timezone()) {
        let err = Schedule::parse(&text, tz);
        prop_assert!(err.is_err(), "{:?} parsed", text);
        let err = err.unwrap_err();
        prop_assert_eq!(named_field(&err), Some(broken), "{:?}: {}", text, err);
        let message = err.to_string();
        prop_assert!(message.contains(&format!(": {broken}")), "{message}");
        bounded(&message)?;
    }
}

/// The cron field an error names.
fn named_field(e: &ScheduleError) -> Option<CronField> {
    match e {
        ScheduleError::OutOfRange { field, .. }
        | ScheduleError::BadStep { field, .. }
        | ScheduleError::BadRange { field, .. }
        | ScheduleError::NotANumber { field, .. }
        | ScheduleError::MissingValue { field, .. }
        | ScheduleError::MisplacedQuestionMark { field, .. } => Some(*field),
        _ => None,
    }
}

/// The instants generated are whole milliseconds, in range.
#[test]
fn generated_instants_are_rfc3339_that_chrono_reads_back() {
    let at: DateTime<Utc> = "2026-03-29T01:30:00.250Z".parse().unwrap();
    for offset in [0, 90, -600, 14 * 60] {
        let text = rfc3339(at, offset, offset == 0);
        assert_eq!(DateTime::parse_from_rfc3339(&text).unwrap(), at, "{text}");
    }
}

//! Rendering: aligned tables, instants, durations and ages for people; JSON
//! for scripts (`--json`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// Where a command's result goes: a human rendering or the JSON value.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn json<T: Serialize>(&self, value: &T) {
        match serde_json::to_string_pretty(value) {
            Ok(s) => println!("{s}"),
            // Only API reply types and JSON values are printed: unreachable.
            Err(e) => eprintln!("jetcron: cannot encode output: {e}"),
        }
    }
}

/// Rows under a header, each column as wide as its widest cell, two spaces
/// apart, no trailing blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut t = GrowingTable::new(header);
    let mut out = t.rows(rows);
    if out.is_empty() {
        out = t.finish();
    }
    out.join("\n")
}

/// A table printed as its rows arrive, a batch at a time: columns are as
/// wide as the widest cell seen so far, so a table that arrives in one batch
/// looks exactly like [`table`], and a long one never has to be held whole.
#[derive(Debug)]
pub struct GrowingTable {
    header: Vec<String>,
    widths: Vec<usize>,
    header_done: bool,
}

impl GrowingTable {
    pub fn new(header: &[&str]) -> GrowingTable {
        GrowingTable {
            header: header.iter().map(|h| h.to_string()).collect(),
            widths: header.iter().map(|h| h.chars().count()).collect(),
            header_done: false,
        }
    }

    /// The lines of a batch (the header first, with the first batch).
    pub fn rows(&mut self, rows: &[Vec<String>]) -> Vec<String> {
        for row in rows {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = Vec::with_capacity(rows.len() + 1);
        if !self.header_done && !rows.is_empty() {
            out.extend(self.finish());
        }
        out.extend(rows.iter().map(|r| self.line(r)));
        out
    }

    /// The header, if no batch has printed it yet (a table without rows).
    pub fn finish(&mut self) -> Vec<String> {
        if std::mem::replace(&mut self.header_done, true) {
            return Vec::new();
        }
        vec![self.line(&self.header)]
    }

    fn line(&self, cells: &[String]) -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&self.widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    }
}

/// RFC 3339 in UTC, with milliseconds only when there are fractions.
pub fn instant(t: DateTime<Utc>) -> String {
    let format = if t.timestamp_subsec_nanos() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::Millis
    };
    t.to_rfc3339_opts(format, true)
}

/// A length of time, short and readable: `850ms`, `12.3s`, `3m05s`,
/// `2h10m`, `3d04h`.
pub fn duration_ms(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let s = ms / 1000;
    let text = match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    };
    format!("{sign}{text}")
}

/// How long ago `t` was (or how far ahead it is): `4.2s ago`, `in 3m05s`.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let ms = (now - t).num_milliseconds();
    if ms >= 0 {
        format!("{} ago", duration_ms(ms))
    } else {
        format!("in {}", duration_ms(-ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn tables_align_columns_and_trim_trailing_blanks() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["a-long-id".into(), "ok".into()],
                vec!["b".into(), String::new()],
            ],
        );
        assert_eq!(t, "ID         STATE\na-long-id  ok\nb");
    }

    #[test]
    fn a_growing_table_widens_as_rows_arrive() {
        let mut t = GrowingTable::new(&["ID", "STATE"]);
        assert_eq!(t.rows(&[]), Vec::<String>::new());
        assert_eq!(
            t.rows(&[vec!["a".into(), "ok".into()]]),
            vec!["ID  STATE", "a   ok"]
        );
        assert_eq!(
            t.rows(&[vec!["a-long-id".into(), "ok".into()]]),
            vec!["a-long-id  ok"]
        );
        assert_eq!(
            t.rows(&[vec!["b".into(), "ok".into()]]),
            vec!["b          ok"]
        );
        assert!(t.finish().is_empty());
        assert_eq!(
            GrowingTable::new(&["ID", "STATE"]).finish(),
            vec!["ID  STATE"]
        );
        assert_eq!(table(&["ID", "STATE"], &[]), "ID  STATE");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(12_345), "12.3s");
        assert_eq!(duration_ms(185_000), "3m05s");
        assert_eq!(duration_ms(7_800_000), "2h10m");
        assert_eq!(duration_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(duration_ms(-1500), "-1.5s");
    }

    #[test]
    fn ages_and_instants() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 21, 30, 5).unwrap();
        assert_eq!(instant(t), "2026-11-24T21:30:05Z");
        let later = t + chrono::Duration::milliseconds(4200);
        assert_eq!(ago(t, later), "4.2s ago");
        assert_eq!(ago(later, t), "in 4.2s");
        assert_eq!(
            instant(t + chrono::Duration::milliseconds(250)),
            "2026-11-24T21:30:05.250Z"
        );
        assert_eq!(
            instant(t + chrono::Duration::nanoseconds(101_565_566)),
            "2026-11-24T21:30:05.101Z"
        );
    }
}

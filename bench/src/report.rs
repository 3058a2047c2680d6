//! All figures of a run: `performance.json`, the markdown tables (printed,
//! and written between the markers of `performance.md`) and the chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::api::ApiReport;
use crate::burst::BurstReport;
use crate::error::{BenchError, Result};
use crate::lateness::LatenessReport;
use crate::machine::RunInfo;
use crate::scale::ScaleReport;
use crate::svg::{self, Series, thousands};
use crate::tables;
use crate::worker::WorkerReport;

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

/// What `performance.md` starts with when the bench creates it.
const INTRO: &str = "# Performance\n\n\
Figures of `jetcron-bench` (crate `bench/`): the real `jetcron-scheduler` and\n\
`jetcron-worker` binaries against a nats-server the bench starts, each figure\n\
next to a plain NATS anchor measured in the same run. Everything between the\n\
markers below is generated; run\n\
`cargo run --release -p jetcron-bench -- --out docs` to refresh it.\n\n";

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: RunInfo,
    pub smoke: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lateness: Option<LatenessReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerReport>,
}

impl Report {
    /// What a run that should have produced figures lacks: one line per gap.
    pub fn missing(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        if let Some(l) = &self.lateness {
            for r in l.rows.iter().filter(|r| r.lateness.is_none()) {
                gaps.push(format!(
                    "lateness: no figures for {} at {} jobs",
                    r.system, r.jobs
                ));
            }
        }
        if let Some(b) = &self.burst {
            for r in &b.rows {
                if r.jetcron_last_ms.is_none() || r.raw_ms.is_none() {
                    gaps.push(format!("burst: no figures at {} jobs", r.jobs));
                }
            }
        }
        if let Some(s) = &self.scale {
            for r in &s.rows {
                if r.cold_start_s.is_none()
                    || r.takeover_fire_s.is_none()
                    || r.graceful_fire_s.is_none()
                {
                    gaps.push(format!("scale: no figures at {} jobs", r.jobs));
                }
            }
        }
        if let Some(a) = &self.api
            && !a.endpoints.iter().any(|e| e.ok > 0)
        {
            gaps.push("api: no call answered".into());
        }
        if let Some(w) = &self.worker
            && (w.jetcron_per_s.is_none() || w.raw_per_s.is_none())
        {
            gaps.push("worker: no figures".into());
        }
        gaps
    }

    /// The generated markdown: run details, chart link and every table.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let r = &self.run;
        let m = &r.machine;
        let _ = writeln!(
            md,
            "Measured {}{}.\n",
            r.date,
            if self.smoke {
                " (smoke run: tiny counts, not figures to quote)"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(
            md,
            "| machine | {}, {} cores, {} GiB memory |",
            m.cpu, m.cores, m.memory_gib
        );
        let _ = writeln!(md, "| kernel | Linux {} |", m.kernel);
        let _ = writeln!(md, "| nats-server | {} |", m.nats_server);
        let _ = writeln!(
            md,
            "| commit | `{}`{} |",
            r.commit,
            if r.dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        let _ = writeln!(md, "| command | `{}` |\n", r.command.replace('|', "\\|"));
        if let Some(l) = &self.lateness {
            md.push_str(&tables::lateness(l));
        }
        if let Some(b) = &self.burst {
            md.push_str(&tables::burst(b));
        }
        if let Some(s) = &self.scale {
            md.push_str(&tables::scale(s));
        }
        if let Some(a) = &self.api {
            md.push_str(&tables::api(a));
        }
        if let Some(w) = &self.worker {
            md.push_str(&tables::worker(w));
        }
        md
    }

    /// The lateness chart, when lateness was measured.
    pub fn chart(&self) -> Option<String> {
        let l = self.lateness.as_ref()?;
        let series = |system: &str, name: &str, color: &'static str| Series {
            name: name.into(),
            color,
            points: l
                .rows
                .iter()
                .filter(|r| r.system == system)
                .filter_map(|r| Some((r.jobs as f64, r.lateness?.p99_ms as f64)))
                .collect(),
        };
        let loads: Vec<String> = l
            .rows
            .iter()
            .filter(|r| r.system == "jetcron")
            .map(|r| thousands(r.jobs as u64))
            .collect();
        Some(svg::chart(
            &format!(
                "p99 lateness, jobs firing every second ({})",
                loads.join(" / ")
            ),
            "jobs firing every second (log scale)",
            "p99 lateness (ms)",
            &[
                series("jetcron", "jetcron", "#1f77b4"),
                series("native", "NATS-native schedules", "#d62728"),
                series("raw", "raw async publish", "#2ca02c"),
            ],
        ))
    }

    /// Writes `performance.json`, `lateness.svg` and `performance.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::io(format!("creating {}", dir.display()), e))?;
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map(|()| path.clone())
                .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))
        };
        let mut written = Vec::new();
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        written.push(write("performance.json", &format!("{json}\n"))?);
        let mut section = self.markdown();
        if let Some(svg) = self.chart() {
            written.push(write("lateness.svg", &svg)?);
            section = format!(
                "![p99 lateness against load, jetcron and NATS-native schedules](lateness.svg)\n\n{section}"
            );
        }
        let md_path = dir.join("performance.md");
        let existing = std::fs::read_to_string(&md_path).ok();
        written.push(write(
            "performance.md",
            &replace_section(existing.as_deref(), &section),
        )?);
        Ok(written)
    }
}

/// `existing` with everything between the markers replaced by `section`; a
/// file without markers gets them appended, a missing file gets the intro.
pub fn replace_section(existing: Option<&str>, section: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", section.trim_end());
    match existing {
        None => format!("{INTRO}{block}\n"),
        Some(text) => match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if b < e => {
                format!("{}{block}{}", &text[..b], &text[e + END.len()..])
            }
            _ => format!("{}\n\n{block}\n", text.trim_end()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_between_the_markers() {
        let before =
            format!("# Perf\n\nhand-written\n\n{BEGIN}\nold figures\n{END}\n\nafterword\n");
        let after = replace_section(Some(&before), "new figures\n");
        assert_eq!(
            after,
            format!("# Perf\n\nhand-written\n\n{BEGIN}\nnew figures\n{END}\n\nafterword\n")
        );
        // Idempotent.
        assert_eq!(replace_section(Some(&after), "new figures"), after);
    }

    #[test]
    fn creates_or_appends_the_section() {
        let fresh = replace_section(None, "figures");
        assert!(fresh.starts_with("# Performance"));
        assert!(fresh.ends_with(&format!("{BEGIN}\nfigures\n{END}\n")));
        let appended = replace_section(Some("# Mine\n"), "figures");
        assert_eq!(appended, format!("# Mine\n\n{BEGIN}\nfigures\n{END}\n"));
        // Markers in the wrong order are not trusted.
        let odd = format!("{END}\n{BEGIN}\n");
        assert!(replace_section(Some(&odd), "x").ends_with(&format!("{BEGIN}\nx\n{END}\n")));
    }
}

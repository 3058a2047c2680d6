//! The lateness chart: p99 lateness against load, load on a log axis, one
//! line per system. Plain SVG text, readable without any renderer quirks.

use std::fmt::Write as _;

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    /// (load, value) points, load > 0.
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 210.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;

/// Escapes text for an SVG text node or attribute.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The top of a value axis at or above `v` (at least 1) and how many
/// equal divisions give round tick labels: (1000, 5), (600, 3), (250, 5).
pub fn nice_axis(v: f64) -> (f64, u32) {
    if v.is_nan() || v <= 1.0 {
        return (1.0, 5);
    }
    let magnitude = 10f64.powf(v.log10().floor());
    const STEPS: [(f64, u32); 10] = [
        (1.0, 5),
        (1.5, 3),
        (2.0, 4),
        (2.5, 5),
        (3.0, 3),
        (4.0, 4),
        (5.0, 5),
        (6.0, 3),
        (8.0, 4),
        (10.0, 5),
    ];
    STEPS
        .iter()
        .map(|&(m, d)| (m * magnitude, d))
        .find(|&(c, _)| c >= v * (1.0 - 1e-12))
        .unwrap_or((10.0 * magnitude, 5))
}

/// `12345` as `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Renders the chart. `y_label` names the value axis.
pub fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(x, y)| x > 0.0 && y.is_finite())
        .collect();
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    if all.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">no data</text></svg>"#,
            W / 2.0,
            H / 2.0
        );
        return svg;
    }
    let (plot_w, plot_h) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let min_x = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let max_x = all.iter().map(|p| p.0).fold(0.0, f64::max);
    let lo = min_x.log10().floor();
    let hi = max_x.log10().ceil().max(lo + 1.0);
    // Headroom above the highest point for its label.
    let (top, divisions) = nice_axis(1.1 * all.iter().map(|p| p.1).fold(0.0, f64::max));
    let px = |x: f64| LEFT + (x.log10() - lo) / (hi - lo) * plot_w;
    let py = |y: f64| TOP + plot_h - (y.max(0.0) / top) * plot_h;

    // Grid and axes.
    for k in 0..=((hi - lo) as i32) {
        let decade = 10f64.powf(lo + f64::from(k));
        let x = px(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 20.0,
            thousands(decade.round() as u64)
        );
        if k < (hi - lo) as i32 {
            for m in 2..10 {
                let xm = px(decade * f64::from(m));
                let _ = writeln!(
                    svg,
                    r##"<line x1="{xm:.1}" y1="{TOP}" x2="{xm:.1}" y2="{:.1}" stroke="#f2f2f2"/>"##,
                    TOP + plot_h
                );
            }
        }
    }
    for i in 0..=divisions {
        let v = top * f64::from(i) / f64::from(divisions);
        let y = py(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 4.0,
            trim_number(v)
        );
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        H - 22.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">{}</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(y_label)
    );

    // Lines, points with their values, legend.
    for (i, s) in series.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|&(x, y)| x > 0.0 && y.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
                path.join(" "),
                s.color
            );
        }
        for &(x, y) in &pts {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}"/>"#,
                px(x),
                py(y),
                s.color
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="{}">{}</text>"#,
                px(x),
                // The second line's labels go below its points, so that
                // close values of the two lines stay readable.
                if i % 2 == 0 {
                    py(y) - 8.0
                } else {
                    py(y) + 17.0
                },
                s.color,
                trim_number(y)
            );
        }
        let ly = TOP + 20.0 + 24.0 * i as f64;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2.5"/>"#,
            lx + 24.0,
            s.color
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A number without a useless fraction: `250`, `12.5`, `0.4`.
fn trim_number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Series> {
        vec![
            Series {
                name: "jetcron".into(),
                color: "#1f77b4",
                points: vec![(100.0, 12.0), (1000.0, 30.0), (20000.0, 480.0)],
            },
            Series {
                name: "NATS <native>".into(),
                color: "#d62728",
                points: vec![(100.0, 240.0), (1000.0, 250.0)],
            },
        ]
    }

    #[test]
    fn the_chart_has_decades_lines_and_a_legend() {
        let svg = chart("p99", "jobs (log scale)", "p99 lateness (ms)", &sample());
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for label in [
            ">100<",
            ">1,000<",
            ">10,000<",
            ">100,000<",
            ">600<",
            ">480<",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("NATS &lt;native&gt;"));
        assert!(svg.contains("p99 lateness (ms)"));
    }

    #[test]
    fn no_points_says_so() {
        let svg = chart("t", "x", "y", &[]);
        assert!(svg.contains("no data"));
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_axis(528.0), (600.0, 3));
        assert_eq!(nice_axis(1200.0), (1500.0, 3));
        assert_eq!(nice_axis(100.0), (100.0, 5));
        assert_eq!(nice_axis(0.3), (1.0, 5));
        assert_eq!(nice_axis(5.5), (6.0, 3));
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(trim_number(12.4), "12");
        assert_eq!(trim_number(0.4), "0.4");
        assert_eq!(trim_number(250.0), "250");
    }
}

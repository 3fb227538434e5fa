//! A line chart as SVG, written directly (no plotting dependency): x is the
//! number of services on a log scale, y a cost in µs from 0, one polyline
//! with point markers per data plane, and a legend.

use std::fmt::Write as _;

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (x, y) with x > 0; points with a non-finite or non-positive x or a
    /// non-finite y are left out.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
/// The plot area inside the margins.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 580.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 380.0;
const COLOURS: [&str; 6] = ["#444444", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd"];

/// The plot area's box: left, top, right, bottom.
#[cfg(test)]
pub const PLOT_AREA: (f64, f64, f64, f64) = (LEFT, TOP, RIGHT, BOTTOM);

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (`v` > 0).
fn nice_ceiling(v: f64) -> f64 {
    let e = v.log10().floor();
    let base = 10f64.powf(e);
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * base >= v * (1.0 - 1e-12) {
            return m * base;
        }
    }
    10.0 * base
}

/// The axes' ranges: x decades [10^lo, 10^hi], y [0, ymax].
struct Scale {
    lo: f64,
    hi: f64,
    ymax: f64,
}

impl Scale {
    fn of(series: &[Series]) -> Scale {
        let pts = series.iter().flat_map(|s| s.points.iter().copied()).filter(|&p| usable(p));
        let (mut xmin, mut xmax, mut ymax) = (f64::INFINITY, 0.0f64, 0.0f64);
        for (x, y) in pts {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymax = ymax.max(y);
        }
        if xmax <= 0.0 {
            (xmin, xmax) = (1.0, 10.0);
        }
        let lo = xmin.log10().floor();
        let mut hi = xmax.log10().ceil();
        if hi <= lo {
            hi = lo + 1.0;
        }
        let ymax = if ymax > 0.0 { nice_ceiling(ymax) } else { 1.0 };
        Scale { lo, hi, ymax }
    }

    fn x(&self, x: f64) -> f64 {
        LEFT + (x.log10() - self.lo) / (self.hi - self.lo) * (RIGHT - LEFT)
    }

    fn y(&self, y: f64) -> f64 {
        BOTTOM - y.max(0.0) / self.ymax * (BOTTOM - TOP)
    }
}

fn usable((x, y): (f64, f64)) -> bool {
    x.is_finite() && x > 0.0 && y.is_finite()
}

/// `1`, `1k`, `10k`, `100k`, `1M` for powers of ten.
fn decade_label(e: i32) -> String {
    match e {
        i32::MIN..=2 => format!("{}", 10u64.pow(e.max(0) as u32)),
        3..=5 => format!("{}k", 10u64.pow(e as u32 - 3)),
        _ => format!("{}M", 10u64.pow(e as u32 - 6)),
    }
}

/// The chart as an SVG document.
pub fn svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let sc = Scale::of(series);
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        escape(title)
    );
    // Grid and ticks.
    for e in (sc.lo as i32)..=(sc.hi as i32) {
        let x = sc.x(10f64.powi(e));
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            BOTTOM + 16.0,
            decade_label(e)
        );
    }
    for k in 0..=5 {
        let v = sc.ymax * f64::from(k) / 5.0;
        let y = sc.y(v);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            trim_number(v)
        );
    }
    let _ = writeln!(
        o,
        r#"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 38.0,
        escape(x_label)
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{0}" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"#,
        (TOP + BOTTOM) / 2.0,
        escape(y_label)
    );
    // Lines, markers and the legend.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|&p| usable(p)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let coords: Vec<String> =
            pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", sc.x(x), sc.y(y))).collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            coords.join(" "),
            escape(&s.name)
        );
        for &(x, y) in &pts {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{}: {} services, {:.1}</title></circle>"#,
                sc.x(x),
                sc.y(y),
                escape(&s.name),
                x,
                y
            );
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/>"#,
            RIGHT + 15.0,
            RIGHT + 40.0
        );
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}">{}</text>"#,
            RIGHT + 46.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    o.push_str("</svg>\n");
    o
}

/// `50`, `2.5`, `0.25`: no trailing zeros.
fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() { "0".to_owned() } else { s.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `points` of every polyline, parsed back.
    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.split("<polyline ")
            .skip(1)
            .map(|rest| {
                let attr = rest.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
                attr.split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    // Expect: one polyline per series with one point per usable input
    // point, every point inside the plot area, x growing with N (log
    // scale: 1 → 10k spans four equal decades) and y shrinking as the cost
    // grows; unusable points are dropped; names are escaped; the document
    // is one <svg> element.
    #[test]
    fn svg_points_are_in_the_plot_area() {
        let series = vec![
            Series {
                name: "iptables <nf_tables>".into(),
                points: vec![(1.0, 190.0), (1000.0, 210.0), (10_000.0, 494.0)],
            },
            Series {
                name: "sluice".into(),
                points: vec![(10_000.0, 140.0), (1.0, 150.0), (0.0, 5.0), (10.0, f64::NAN)],
            },
            Series { name: "empty".into(), points: vec![] },
        ];
        let out = svg("cost & N", "services", "µs", &series);
        assert!(out.starts_with("<svg ") && out.trim_end().ends_with("</svg>"));
        assert_eq!(out.matches("<svg").count(), 1);
        assert!(out.contains("iptables &lt;nf_tables&gt;") && out.contains("cost &amp; N"));
        assert!(!out.contains("NaN") && !out.contains("inf"));
        let lines = polylines(&out);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 0]);
        let (l, t, r, b) = PLOT_AREA;
        for p in lines.iter().flatten() {
            assert!(p.0 >= l && p.0 <= r && p.1 >= t && p.1 <= b, "{p:?} outside");
        }
        let ipt = &lines[0];
        assert!((ipt[0].0 - l).abs() < 0.1, "N = 1 at the left edge: {ipt:?}");
        assert!((ipt[2].0 - r).abs() < 0.1, "N = 10k at the right edge: {ipt:?}");
        // 1000 is 3 of 4 decades along.
        assert!((ipt[1].0 - (l + 0.75 * (r - l))).abs() < 0.1, "{ipt:?}");
        assert!(ipt[2].1 < ipt[1].1 && ipt[1].1 < ipt[0].1, "higher cost is higher up");
        // The y axis runs from 0 to 500 (the nice ceiling of 494).
        let y494 = ipt[2].1;
        assert!((y494 - (b - 494.0 / 500.0 * (b - t))).abs() < 0.1, "{y494}");
        // Sorted by N, whatever the input order.
        assert!(lines[1][0].0 < lines[1][1].0);
        assert_eq!(out.matches("<circle ").count(), 5);
    }

    #[test]
    fn axis_helpers() {
        assert_eq!(nice_ceiling(494.0), 500.0);
        assert_eq!(nice_ceiling(150.0), 200.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(3), "1k");
        assert_eq!(decade_label(5), "100k");
        assert_eq!(decade_label(6), "1M");
        assert_eq!(trim_number(2.5), "2.5");
        assert_eq!(trim_number(100.0), "100");
        assert_eq!(trim_number(0.0), "0");
        // Nothing to draw still makes a document with axes.
        let out = svg("t", "x", "y", &[]);
        assert!(out.contains("</svg>") && polylines(&out).is_empty());
    }
}

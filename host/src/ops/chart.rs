//! Small server-rendered SVG line charts for the status page: no scripts,
//! no external resources, every text escaped.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

/// Line colours, one per series in order (colour-blind safe, Okabe-Ito).
const COLOURS: [&str; 8] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#f0e442", "#000000",
];

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 140.0;
/// Left margin for the y labels, bottom margin for the x labels.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;

/// One line: its name and its points `(time, value)`, oldest first.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A chart of `series` over `[now - span, now]` with its legend, `unit`
/// naming the y axis. The y axis runs from 0 to the largest value (at
/// least 1).
pub fn render(
    title: &str,
    unit: &str,
    series: &[Series<'_>],
    now: DateTime<Utc>,
    span: std::time::Duration,
) -> String {
    let span_secs = span.as_secs_f64().max(1.0);
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = nice_ceiling(max.max(1.0));
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let x = |t: DateTime<Utc>| {
        let ago = (now - t).num_milliseconds() as f64 / 1000.0;
        LEFT + plot_w * (1.0 - (ago / span_secs).clamp(0.0, 1.0))
    };
    let y = |v: f64| TOP + plot_h * (1.0 - (v.max(0.0) / top).min(1.0));
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure class=chart><figcaption>{}</figcaption>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=img aria-label=\"{}\">",
        esc(title),
        esc(title)
    );
    // Axes, the top value and the time labels.
    let bottom = TOP + plot_h;
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{bottom}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{}\" y2=\"{TOP}\" stroke=\"#eee\"/>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{bottom}\" font-size=\"10\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\" font-size=\"10\">-{} min</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">now</text>",
        LEFT + plot_w,
        LEFT + plot_w,
        LEFT - 4.0,
        TOP + 8.0,
        esc(&number(top)),
        LEFT - 4.0,
        HEIGHT - 4.0,
        (span_secs / 60.0).round(),
        LEFT + plot_w,
        HEIGHT - 4.0,
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|(t, v)| v.is_finite() && (now - *t).num_seconds() as f64 <= span_secs)
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        if points.is_empty() {
            continue;
        }
        let _ = write!(
            svg,
            "<polyline data-series=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            esc(s.name),
            points.join(" ")
        );
    }
    let _ = write!(svg, "</svg><div class=legend><span>{}:</span>", esc(unit));
    for (i, s) in series.iter().enumerate() {
        let last = s.points.last().map_or(0.0, |p| p.1);
        let _ = write!(
            svg,
            "<span><i style=\"background:{}\"></i>{} {}</span>",
            COLOURS[i % COLOURS.len()],
            esc(s.name),
            esc(&number(last))
        );
    }
    svg.push_str("</div></figure>");
    svg
}

/// The smallest of 1, 2, 5 × 10^n at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * magnitude)
}

/// A short number: thousands with k, one decimal under 10.
fn number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_lands_where_its_time_and_value_say() {
        let now = Utc::now();
        let span = std::time::Duration::from_secs(600);
        let svg = render(
            "rates",
            "events/s",
            &[Series {
                name: "order",
                // 10 min ago at 0, 5 min ago at 50, now at 100.
                points: vec![
                    (now - chrono::Duration::seconds(600), 0.0),
                    (now - chrono::Duration::seconds(300), 50.0),
                    (now, 100.0),
                ],
            }],
            now,
            span,
        );
        let plot_w = WIDTH - LEFT - 4.0;
        let (bottom, mid) = (TOP + (HEIGHT - BOTTOM - TOP), LEFT + plot_w / 2.0);
        let expected = format!(
            "points=\"{LEFT:.1},{bottom:.1} {mid:.1},{:.1} {:.1},{TOP:.1}\"",
            TOP + (bottom - TOP) / 2.0,
            LEFT + plot_w
        );
        assert!(svg.contains(&expected), "{expected} not in {svg}");
        assert!(svg.contains(">100</text>"), "the axis top is 100: {svg}");
    }

    #[test]
    fn names_are_escaped_and_old_points_left_out() {
        let now = Utc::now();
        let svg = render(
            "<b>",
            "x",
            &[Series {
                name: "<script>alert(1)</script>",
                points: vec![(now - chrono::Duration::seconds(2000), 5.0)],
            }],
            now,
            std::time::Duration::from_secs(900),
        );
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
        assert!(
            !svg.contains("<polyline"),
            "a point older than the span is not drawn"
        );
    }

    #[test]
    fn the_axis_top_is_a_round_number_at_or_above_the_largest_value() {
        for (v, top) in [
            (1.0, 1.0),
            (1.2, 2.0),
            (3.0, 5.0),
            (7.0, 10.0),
            (120.0, 200.0),
        ] {
            assert_eq!(nice_ceiling(v), top, "{v}");
        }
    }
}

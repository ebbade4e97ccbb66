//! The picture of a run (SVG): per second, the success rate, the p99 latency and the share of traffic
//! on each provider, with the fault window shaded.

use std::path::Path;

use plotters::prelude::*;

use crate::analysis::Bucket;

/// The fault window's shade.
const FAULT: RGBColor = RGBColor(230, 80, 60);

/// Draws the chart of a run to `path`.
pub fn draw(
    path: &Path,
    title: &str,
    timeline: &[Bucket],
    fault: Option<(f64, f64)>,
    duration_s: f64,
    bucket_s: f64,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    let root = SVGBackend::new(path, (960, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(e)?;
    let panels = root.split_evenly((3, 1));
    let x_end = duration_s.max(1.0);
    let mid = |b: &Bucket| b.t_s + bucket_s / 2.0;
    let shade = |lo: f64, hi: f64| {
        fault.map(|(a, b)| Rectangle::new([(a, lo), (b, hi)], FAULT.mix(0.18).filled()))
    };

    let mut chart = ChartBuilder::on(&panels[0])
        .margin(12)
        .caption("success rate (2xx / answered), %", ("sans-serif", 16))
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_end, 0f64..101f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("%")
        .draw()
        .map_err(e)?;
    chart.draw_series(shade(0.0, 101.0)).map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            timeline.iter().map(|b| (mid(b), b.success_pct)),
            BLUE.stroke_width(2),
        ))
        .map_err(e)?;

    let top = timeline.iter().map(|b| b.p99_ms).fold(1.0f64, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&panels[1])
        .margin(12)
        .caption(
            "p99 latency from intended send time, ms (log)",
            ("sans-serif", 16),
        )
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_end, (0.05f64..top).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms")
        .draw()
        .map_err(e)?;
    chart.draw_series(shade(0.05, top)).map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            timeline
                .iter()
                .filter(|b| b.requests > 0)
                .map(|b| (mid(b), b.p99_ms.max(0.05))),
            RED.stroke_width(2),
        ))
        .map_err(e)?;

    let mut chart = ChartBuilder::on(&panels[2])
        .margin(12)
        .caption("share of answers per provider, %", ("sans-serif", 16))
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_end, 0f64..101f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("%")
        .draw()
        .map_err(e)?;
    chart.draw_series(shade(0.0, 101.0)).map_err(e)?;
    let series = [
        (
            "primary",
            GREEN.mix(0.9),
            Box::new(|b: &Bucket| b.primary_pct) as Box<dyn Fn(&Bucket) -> f64>,
        ),
        (
            "backup",
            MAGENTA.mix(0.9),
            Box::new(|b: &Bucket| b.backup_pct),
        ),
    ];
    for (name, color, value) in series {
        chart
            .draw_series(LineSeries::new(
                timeline
                    .iter()
                    .filter(|b| b.requests > 0)
                    .map(|b| (mid(b), value(b))),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg() {
        let dir = std::env::temp_dir().join(format!("loadtest-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.svg");
        let timeline: Vec<Bucket> = (0..6)
            .map(|i| Bucket {
                t_s: i as f64,
                requests: 10,
                success_pct: if i == 2 { 80.0 } else { 100.0 },
                p99_ms: 1.0 + i as f64,
                primary_pct: if (2..4).contains(&i) { 0.0 } else { 100.0 },
                backup_pct: if (2..4).contains(&i) { 100.0 } else { 0.0 },
            })
            .collect();
        draw(
            &path,
            "outage / switchyard",
            &timeline,
            Some((2.0, 4.0)),
            6.0,
            1.0,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("outage / switchyard"));
        std::fs::remove_dir_all(&dir).ok();
    }
}

//! The latency histogram of `bench/compare-celery.sh`, as an SVG: for each concurrency, the share
//! of scripts in each latency bucket (log-spaced, ten a decade) of Cuttle and of Celery, all
//! rounds together, and each system's p50 and p99 (medians of the rounds) as vertical lines. A
//! system whose runs carry no per-script latencies (a `dispatcher bench` from before
//! `latencies_ms`) is drawn as its lines alone.
//!
//! `cargo run -p tests --example latency_histogram -- LATENCIES.jsonl OUT.svg`, where each line of
//! LATENCIES.jsonl is one run: `{"system", "concurrency", "p50_ms", "p99_ms", "latencies_ms": [...]}`.

use plotters::prelude::*;
use serde_json::Value;

const SYSTEMS: [(&str, &str, RGBColor); 2] =
    [("cuttle", "Cuttle", RGBColor(0, 114, 178)), ("celery", "Celery", RGBColor(213, 94, 0))];
const BUCKETS_PER_DECADE: f64 = 10.0;

/// One system's runs at one concurrency: every latency, and the medians of the runs' percentiles.
struct Latencies {
    samples: Vec<f64>,
    p50: f64,
    p99: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn latencies(runs: &[&Value]) -> Latencies {
    let figure = |key: &str| median(runs.iter().filter_map(|run| run[key].as_f64()).collect());
    let samples = runs.iter().flat_map(|run| run["latencies_ms"].as_array().into_iter().flatten());
    Latencies { samples: samples.filter_map(Value::as_f64).collect(), p50: figure("p50_ms"), p99: figure("p99_ms") }
}

/// The log-spaced buckets holding samples: (lower bound, upper bound, share of the samples in %).
fn buckets(samples: &[f64]) -> Vec<(f64, f64, f64)> {
    let mut counts = std::collections::BTreeMap::<i64, usize>::new();
    for ms in samples.iter().filter(|ms| **ms > 0.0) {
        *counts.entry((ms.log10() * BUCKETS_PER_DECADE).floor() as i64).or_default() += 1;
    }
    let bound = |i: i64| 10f64.powf(i as f64 / BUCKETS_PER_DECADE);
    counts.into_iter().map(|(i, n)| (bound(i), bound(i + 1), 100.0 * n as f64 / samples.len() as f64)).collect()
}

/// Labels of a log axis from `low` to `high` ms: 1, 2 and 5 times the powers of ten between.
fn ticks(low: f64, high: f64) -> Vec<f64> {
    let decades = low.log10().floor() as i32..=high.log10().ceil() as i32;
    let ticks = decades.flat_map(|decade| [1.0, 2.0, 5.0].map(|step| step * 10f64.powi(decade)));
    ticks.filter(|ms| (low / 1.25..=high * 1.25).contains(ms)).collect()
}

fn draw(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    runs: &[Value],
    concurrency: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let drawn: Vec<_> = SYSTEMS
        .iter()
        .map(|(key, name, colour)| {
            let mine: Vec<&Value> = runs
                .iter()
                .filter(|run| run["system"] == *key && run["concurrency"].as_u64() == Some(concurrency))
                .collect();
            (*name, *colour, latencies(&mine))
        })
        .filter(|(_, _, latencies)| latencies.p50.is_finite())
        .collect();
    let bars: Vec<_> = drawn.iter().map(|(_, _, latencies)| buckets(&latencies.samples)).collect();
    let all_ms = drawn.iter().flat_map(|(_, _, l)| l.samples.iter().chain([&l.p50, &l.p99])).filter(|ms| **ms > 0.0);
    let (low, high) = all_ms.fold((f64::MAX, f64::MIN), |(low, high), ms| (low.min(*ms), high.max(*ms)));
    if low > high {
        return Ok(()); // every script failed: nothing to draw at this concurrency
    }
    let top = bars.iter().flatten().map(|bar| bar.2).fold(1.0, f64::max) * 1.1;

    let mut chart = ChartBuilder::on(area)
        .caption(format!("{concurrency} in flight"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((low / 1.25..high * 1.25).log_scale().with_key_points(ticks(low, high)), 0.0..top)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|ms| format!("{ms}"))
        .light_line_style(WHITE)
        .x_desc("latency, ms (log scale)")
        .y_desc("% of scripts")
        .draw()?;
    for ((name, colour, latencies), bars) in drawn.iter().zip(&bars) {
        if !bars.is_empty() {
            let boxes = bars
                .iter()
                .map(|(from, to, share)| Rectangle::new([(*from, 0.0), (*to, *share)], colour.mix(0.45).filled()));
            chart
                .draw_series(boxes)?
                .label(format!("{name}: {} scripts", latencies.samples.len()))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], colour.mix(0.45).filled()));
        }
        let lines = [latencies.p50, latencies.p99]
            .map(|ms| PathElement::new(vec![(ms, 0.0), (ms, top)], colour.stroke_width(2)));
        let only = if bars.is_empty() { " (percentiles only)" } else { "" };
        chart
            .draw_series(lines)?
            .label(format!("{name}: p50 {:.1} ms, p99 {:.1} ms{only}", latencies.p50, latencies.p99))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], colour.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: latency_histogram LATENCIES.jsonl OUT.svg".into());
    };
    let text = std::fs::read_to_string(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    let runs: Vec<Value> =
        text.lines().filter(|line| !line.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let mut concurrencies: Vec<u64> = runs.iter().filter_map(|run| run["concurrency"].as_u64()).collect();
    concurrencies.sort_unstable();
    concurrencies.dedup();
    if concurrencies.is_empty() {
        return Err(format!("{input} holds no runs").into());
    }
    let root = SVGBackend::new(output, (900, 380 * concurrencies.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, concurrency) in root.split_evenly((concurrencies.len(), 1)).iter().zip(concurrencies) {
        draw(area, &runs, concurrency)?;
    }
    root.present()?;
    println!("wrote {output}");
    Ok(())
}

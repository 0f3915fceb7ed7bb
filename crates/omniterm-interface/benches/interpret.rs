//! The interpreter's speed: `cargo bench -p omniterm-interface --bench interpret`.
//!
//! First a latency report over every utterance of the development and held-out sets,
//! each interpreted on its own many times (p50 / p99 / max, against the 1 ms p99 budget)
//! and the model load (against the 100 ms budget); then criterion's statistics for the
//! whole set, the longest accepted input and the load. The baseline named in each ratio
//! is the budget of the acceptance criteria.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use omniterm_interface::nl::{Interpreter, Limits, parse_examples};

const DEV: &str = include_str!("../data/utterances-dev.jsonl");
const HOLDOUT: &str = include_str!("../data/holdout.jsonl");
const P99_BUDGET: Duration = Duration::from_millis(1);
const LOAD_BUDGET: Duration = Duration::from_millis(100);
const ROUNDS: usize = 200;

fn utterances() -> Vec<String> {
    [DEV, HOLDOUT]
        .iter()
        .flat_map(|set| parse_examples(set).expect("the sets parse"))
        .map(|example| example.text)
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency_report(interpreter: &Interpreter, lines: &[String]) {
    let mut samples = Vec::with_capacity(lines.len() * ROUNDS);
    for _ in 0..ROUNDS {
        for line in lines {
            let start = Instant::now();
            black_box(interpreter.interpret(black_box(line)).ok());
            samples.push(start.elapsed());
        }
    }
    samples.sort_unstable();
    let p99 = percentile(&samples, 0.99);
    println!(
        "interpret: {} utterances x {ROUNDS}: p50 {:?}  p99 {:?}  max {:?}  \
         (p99 / 1 ms budget = {:.3})",
        lines.len(),
        percentile(&samples, 0.50),
        p99,
        samples[samples.len() - 1],
        p99.as_secs_f64() / P99_BUDGET.as_secs_f64(),
    );
    let mut loads: Vec<Duration> = (0..20)
        .map(|_| {
            let start = Instant::now();
            black_box(Interpreter::new(Limits::default()));
            start.elapsed()
        })
        .collect();
    loads.sort_unstable();
    let median = percentile(&loads, 0.5);
    println!(
        "model load (training at start-up): median {median:?}  max {:?}  \
         (median / 100 ms budget = {:.3})",
        loads[loads.len() - 1],
        median.as_secs_f64() / LOAD_BUDGET.as_secs_f64(),
    );
}

fn main() {
    let interpreter = Interpreter::new(Limits::default());
    let lines = utterances();
    latency_report(&interpreter, &lines);

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("interpret");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("dev+holdout set", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(interpreter.interpret(black_box(line)).ok());
            }
        });
    });
    group.throughput(Throughput::Elements(1));
    let longest = format!(
        "please deploy the core engine version 1.4.2 as a ten percent canary to production {}",
        "and then check it again ".repeat(80)
    );
    let longest: String = longest
        .chars()
        .take(Limits::default().max_input_chars)
        .collect();
    group.bench_function("longest accepted input (2048 chars)", |b| {
        b.iter(|| black_box(interpreter.interpret(black_box(&longest)).ok()));
    });
    group.bench_function("oversized input (refused)", |b| {
        let huge = "x".repeat(1 << 20);
        b.iter(|| black_box(interpreter.interpret(black_box(&huge)).is_err()));
    });
    group.finish();
    criterion.bench_function("model load", |b| {
        b.iter(|| black_box(Interpreter::new(Limits::default())));
    });
    criterion.final_summary();
}

//! Summary statistics over `f64` series: count, sum, mean, variance, stddev, min, max,
//! exact quantiles (selection, not a full sort), approximate quantiles from a mergeable
//! DDSketch, histograms.
//!
//! The NaN/±inf rule ([`NonFinite`]): by default NaN values are dropped and counted,
//! infinities take part (so sum, mean and variance become ±inf or NaN, and min/max and
//! quantiles may be infinite); `Reject` fails on the first non-finite value naming its
//! index; `Skip` drops and counts both.
//!
//! Numerics: each chunk (fits in L2) is summed with 8 independent accumulators (the
//! compiler vectorises them), then its squared deviations from the chunk mean are summed
//! the same way while the chunk is still in cache; chunks are merged with Chan's
//! parallel formula, so the variance is as stable as two-pass and the data is read
//! from memory once. Above [`PARALLEL_MIN`] values the chunks run on rayon.

use rayon::prelude::*;
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::error::EngineError;

/// Values per chunk: 32 Ki f64 = 256 KiB, inside L2.
const CHUNK: usize = 32 * 1024;
/// Below this, one thread is faster than splitting.
pub(crate) const PARALLEL_MIN: usize = 256 * 1024;
/// The relative error bound of the approximate quantiles.
pub(crate) const SKETCH_RELATIVE_ERROR: f64 = 0.01;

/// What to do with NaN and infinities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonFinite {
    /// Drop and count NaN; keep infinities.
    DropNan,
    /// Fail on the first non-finite value.
    Reject,
    /// Drop and count NaN and infinities.
    Skip,
}

/// Count, sum, mean, M2 (sum of squared deviations), min, max of finite-or-kept values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Moments {
    pub(crate) count: u64,
    pub(crate) mean: f64,
    pub(crate) m2: f64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Moments {
    const EMPTY: Moments = Moments {
        count: 0,
        mean: 0.0,
        m2: 0.0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
    };

    /// Chan et al.'s merge of two partial results.
    fn merge(self, other: Moments) -> Moments {
        if self.count == 0 {
            return other;
        }
        if other.count == 0 {
            return self;
        }
        let count = self.count + other.count;
        let (na, nb, n) = (self.count as f64, other.count as f64, count as f64);
        let delta = other.mean - self.mean;
        Moments {
            count,
            mean: self.mean + delta * nb / n,
            m2: self.m2 + other.m2 + delta * delta * na * nb / n,
            sum: self.sum + other.sum,
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    /// Sample variance (n − 1); 0 for fewer than two values.
    pub(crate) fn variance(&self) -> f64 {
        if self.count < 2 {
            0.0
        } else {
            self.m2 / (self.count - 1) as f64
        }
    }
}

/// Sum with 8 independent accumulators (the compiler vectorises them).
fn lanes_sum(values: &[f64]) -> f64 {
    let mut sums = [0.0_f64; 8];
    let mut lanes = values.chunks_exact(8);
    for lane in &mut lanes {
        for i in 0..8 {
            sums[i] += lane[i];
        }
    }
    sums.iter().sum::<f64>() + lanes.remainder().iter().sum::<f64>()
}

/// Shifted sums in one pass: Σ(x−k), Σ(x−k)², min, max, in packed instructions of the
/// widest kind the CPU has (pulp picks SSE2, AVX2 or AVX-512 at run time). Written with
/// explicit vectors: left to itself the compiler paired Σd with Σd² and went scalar.
fn lanes_shifted(values: &[f64], k: f64) -> (f64, f64, f64, f64) {
    pulp::Arch::new().dispatch(Shifted { values, k })
}

struct Shifted<'a> {
    values: &'a [f64],
    k: f64,
}

impl pulp::WithSimd for Shifted<'_> {
    type Output = (f64, f64, f64, f64);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Self::Output {
        let (head, tail) = S::as_simd_f64s(self.values);
        let k = simd.splat_f64s(self.k);
        let zero = simd.splat_f64s(0.0);
        // Two accumulators per sum, so consecutive additions do not wait on each other.
        let (mut s1a, mut s1b, mut s2a, mut s2b) = (zero, zero, zero, zero);
        let mut mins = simd.splat_f64s(f64::INFINITY);
        let mut maxs = simd.splat_f64s(f64::NEG_INFINITY);
        let prefetch = Prefetch::new(self.values, 2 * size_of::<S::f64s>() / 8);
        let mut pairs = head.chunks_exact(2);
        for (index, pair) in (&mut pairs).enumerate() {
            prefetch.ahead_of(index);
            let (x, y) = (pair[0], pair[1]);
            let (dx, dy) = (simd.sub_f64s(x, k), simd.sub_f64s(y, k));
            s1a = simd.add_f64s(s1a, dx);
            s1b = simd.add_f64s(s1b, dy);
            s2a = simd.add_f64s(s2a, simd.mul_f64s(dx, dx));
            s2b = simd.add_f64s(s2b, simd.mul_f64s(dy, dy));
            mins = simd.min_f64s(mins, simd.min_f64s(x, y));
            maxs = simd.max_f64s(maxs, simd.max_f64s(x, y));
        }
        for &x in pairs.remainder() {
            let d = simd.sub_f64s(x, k);
            s1a = simd.add_f64s(s1a, d);
            s2a = simd.add_f64s(s2a, simd.mul_f64s(d, d));
            mins = simd.min_f64s(mins, x);
            maxs = simd.max_f64s(maxs, x);
        }
        let mut a = simd.reduce_sum_f64s(simd.add_f64s(s1a, s1b));
        let mut b = simd.reduce_sum_f64s(simd.add_f64s(s2a, s2b));
        let mut min = simd.reduce_min_f64s(mins);
        let mut max = simd.reduce_max_f64s(maxs);
        for &x in tail {
            let d = x - self.k;
            a += d;
            b += d * d;
            min = min.min(x);
            max = max.max(x);
        }
        (a, b, min, max)
    }
}

/// How far ahead of the values being summed their cache lines are requested: 8 KiB.
/// One core's hardware prefetchers alone keep too few lines in flight to read memory at
/// full speed. Measured over 1 GiB on the benchmark machine's Xeon: one core 7.7 GB/s
/// without, 11–12 GB/s with; two cores 14 and 24 GB/s.
const PREFETCH_AHEAD: usize = 1024;

/// Software prefetch of the cache lines [`PREFETCH_AHEAD`] values ahead of a loop over
/// `values` that consumes `step` values per iteration (x86-64 with AVX2; elsewhere a
/// no-op).
#[derive(Clone, Copy)]
struct Prefetch<'a> {
    values: &'a [f64],
    step: usize,
    #[cfg(target_arch = "x86_64")]
    arch: Option<pulp::x86::V3>,
}

impl<'a> Prefetch<'a> {
    fn new(values: &'a [f64], step: usize) -> Self {
        Self {
            values,
            step,
            #[cfg(target_arch = "x86_64")]
            arch: pulp::x86::V3::try_new(),
        }
    }

    /// Requests the lines iteration `index + PREFETCH_AHEAD / step` will read.
    #[inline(always)]
    fn ahead_of(&self, index: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(arch) = self.arch {
            let start = index * self.step + PREFETCH_AHEAD;
            // One request per 64-byte line (8 values).
            for at in (start..start + self.step).step_by(8) {
                if let Some(value) = self.values.get(at) {
                    arch.sse._mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        std::ptr::from_ref(value).cast(),
                    );
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = index;
    }
}

/// Values whose mean is the shift of a chunk's one-pass sums.
const PILOT: usize = 32;

/// One chunk, read from memory once: sums shifted by a pilot estimate of the mean (the
/// mean of the chunk's first [`PILOT`] values) give the mean and M2 = Σd² − (Σd)²/n.
/// When the pilot was far from the mean that subtraction cancels, so such a chunk (rare:
/// a trend inside the chunk; it is still in cache) is done again in two passes. A
/// non-finite sum means NaN or infinities (or overflow): the careful path.
fn chunk_moments(values: &[f64]) -> Moments {
    if values.is_empty() {
        return Moments::EMPTY;
    }
    let pilot = &values[..values.len().min(PILOT)];
    let k = pilot.iter().sum::<f64>() / pilot.len() as f64;
    let n = values.len() as f64;
    let (s1, s2, min, max) = lanes_shifted(values, k);
    let sum = s1 + k * n;
    if !(sum.is_finite() && s2.is_finite() && k.is_finite()) {
        return careful_moments(values);
    }
    let correction = s1 * s1 / n;
    let m2 = if correction > 0.5 * s2 {
        // Shifted by the mean itself, the correction term is negligible.
        let mean = lanes_sum(values) / n;
        let (d1, d2, _, _) = lanes_shifted(values, mean);
        d2 - d1 * d1 / n
    } else {
        s2 - correction
    };
    Moments {
        count: values.len() as u64,
        mean: k + s1 / n,
        m2,
        sum,
        min,
        max,
    }
}

/// The two-pass form, for chunks whose shifted sums would cancel and for NaN-free
/// subsets.
fn two_pass_moments(values: &[f64]) -> Moments {
    if values.is_empty() {
        return Moments::EMPTY;
    }
    let sum = lanes_sum(values);
    let mean = sum / values.len() as f64;
    let (d1, d2, min, max) = lanes_shifted(values, mean);
    let m2 = d2 - d1 * d1 / values.len() as f64;
    Moments {
        count: values.len() as u64,
        mean,
        m2,
        sum,
        min,
        max,
    }
}

/// NaN dropped; with infinities the sum, mean and variance follow IEEE arithmetic.
fn careful_moments(values: &[f64]) -> Moments {
    let kept: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if kept.is_empty() {
        return Moments::EMPTY;
    }
    let sum: f64 = kept.iter().sum();
    if sum.is_finite() {
        return two_pass_moments(&kept);
    }
    let mean = sum / kept.len() as f64;
    Moments {
        count: kept.len() as u64,
        mean,
        m2: f64::NAN,
        sum,
        min: kept.iter().copied().fold(f64::INFINITY, f64::min),
        max: kept.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Moments of `values`, ignoring NaN (callers apply the non-finite policy first).
pub(crate) fn moments(values: &[f64]) -> Moments {
    if values.len() < PARALLEL_MIN {
        values
            .chunks(CHUNK)
            .map(chunk_moments)
            .fold(Moments::EMPTY, Moments::merge)
    } else {
        values
            .par_chunks(CHUNK)
            .map(chunk_moments)
            .reduce(|| Moments::EMPTY, Moments::merge)
    }
}

/// Counts of NaN and infinite values, and the index of the first non-finite one.
fn non_finite(values: &[f64]) -> (u64, u64, Option<usize>) {
    let count = |chunk: &[f64]| -> (u64, u64) {
        chunk.iter().fold((0, 0), |(nan, inf), x| {
            (
                nan + u64::from(x.is_nan()),
                inf + u64::from(x.is_infinite()),
            )
        })
    };
    let (nan, inf) = if values.len() < PARALLEL_MIN {
        count(values)
    } else {
        values
            .par_chunks(CHUNK)
            .map(count)
            .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let first = (nan + inf > 0)
        .then(|| values.iter().position(|x| !x.is_finite()))
        .flatten();
    (nan, inf, first)
}

/// The ranks whose elements the linear interpolation of `qs` needs.
fn needed_ranks(len: usize, qs: &[f64]) -> Vec<usize> {
    let last = len - 1;
    let mut ranks: Vec<usize> = qs
        .iter()
        .flat_map(|q| {
            let lo = (q * last as f64).floor() as usize;
            [lo.min(last), (lo + 1).min(last)]
        })
        .collect();
    ranks.sort_unstable();
    ranks.dedup();
    ranks
}

/// numpy's linear interpolation from the elements at the needed ranks.
fn interpolate(len: usize, qs: &[f64], at: impl Fn(usize) -> f64) -> Vec<f64> {
    let last = len - 1;
    qs.iter()
        .map(|q| {
            let position = q * last as f64;
            let lo = (position.floor() as usize).min(last);
            let hi = (lo + 1).min(last);
            let fraction = position - lo as f64;
            let (a, b) = (at(lo), at(hi));
            if fraction == 0.0 || a == b {
                a
            } else {
                a + (b - a) * fraction
            }
        })
        .collect()
}

/// Exact quantiles by linear interpolation between closest ranks (numpy's default),
/// selecting only the ranks needed. `values` is reordered; it must hold no NaN.
pub(crate) fn quantiles(values: &mut [f64], qs: &[f64]) -> Vec<f64> {
    if values.is_empty() {
        return vec![f64::NAN; qs.len()];
    }
    if values.len() >= SAMPLED_MIN
        && let Some(found) = sampled_quantiles(values, qs)
    {
        return found;
    }
    let ranks = needed_ranks(values.len(), qs);
    select_ranks(values, 0, &ranks);
    interpolate(values.len(), qs, |rank| values[rank])
}

/// Exact quantiles of a slice left as it is: sampled when large (no copy), else a copy
/// and selection.
pub(crate) fn quantiles_of(values: &[f64], qs: &[f64]) -> Vec<f64> {
    if values.len() >= SAMPLED_MIN
        && let Some(found) = sampled_quantiles(values, qs)
    {
        return found;
    }
    quantiles(&mut values.to_vec(), qs)
}

/// Inputs at least this long use the sampling method.
const SAMPLED_MIN: usize = 1 << 20;
/// Values in the sample, and the half-width of each bracket in sample positions
/// (about 4 standard deviations of a sampled rank: a miss, then a full selection, is
/// rare).
const SAMPLE: usize = 1 << 16;
const BRACKET: usize = 512;

/// Quantiles without reordering or copying the input: a strided sample brackets every
/// needed rank between two values; one parallel pass counts what lies below each bracket
/// and keeps what lies inside; each rank is then selected among those few. `None` when
/// a bracket missed its rank (adversarial layouts), and the caller selects in full.
fn sampled_quantiles(values: &[f64], qs: &[f64]) -> Option<Vec<f64>> {
    let n = values.len();
    let ranks = needed_ranks(n, qs);
    let mut sample: Vec<f64> = (0..SAMPLE).map(|i| values[i * (n / SAMPLE)]).collect();
    sample.sort_unstable_by(f64::total_cmp);
    // One bracket per rank, merged where they overlap.
    let mut brackets: Vec<(f64, f64)> = Vec::new();
    for &rank in &ranks {
        let position = rank * SAMPLE / n;
        let lo = sample[position.saturating_sub(BRACKET)];
        let hi = sample[(position + BRACKET).min(SAMPLE - 1)];
        let lo = if position < BRACKET {
            f64::NEG_INFINITY
        } else {
            lo
        };
        let hi = if position + BRACKET >= SAMPLE {
            f64::INFINITY
        } else {
            hi
        };
        match brackets.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => brackets.push((lo, hi)),
        }
    }
    let k = brackets.len();
    // Position of x among the 2k bracket edges (branch-free): even = between brackets
    // (2j: below bracket j), odd = inside bracket (p − 1) / 2.
    let scan = |chunk: &[f64]| {
        let mut positions = vec![0_usize; 2 * k + 1];
        let mut inside: Vec<Vec<f64>> = vec![Vec::new(); k];
        for &x in chunk {
            let p: usize = brackets
                .iter()
                .map(|&(lo, hi)| usize::from(x >= lo) + usize::from(x > hi))
                .sum();
            positions[p] += 1;
            if p % 2 == 1 {
                inside[p / 2].push(x);
            }
        }
        (positions, inside)
    };
    let (positions, mut inside) = values.par_chunks(CHUNK).map(scan).reduce(
        || (vec![0; 2 * k + 1], vec![Vec::new(); k]),
        |(mut p1, mut i1), (p2, i2)| {
            for (a, b) in p1.iter_mut().zip(p2) {
                *a += b;
            }
            for (a, b) in i1.iter_mut().zip(i2) {
                a.extend(b);
            }
            (p1, i1)
        },
    );
    // Values below bracket j: every position up to 2j.
    let below: Vec<usize> = (0..k).map(|j| positions[..=2 * j].iter().sum()).collect();
    // Each rank must fall inside its bracket, which must stay small.
    let mut at = std::collections::HashMap::new();
    for &rank in &ranks {
        let j = (0..k).find(|&j| rank >= below[j] && rank < below[j] + inside[j].len())?;
        if inside[j].len() > n / 8 {
            return None;
        }
        let local = rank - below[j];
        let bucket = &mut inside[j];
        let (_, value, _) = bucket.select_nth_unstable_by(local, f64::total_cmp);
        at.insert(rank, *value);
    }
    Some(interpolate(n, qs, |rank| at[&rank]))
}

/// Puts the element of every rank in `ranks` (sorted, absolute, offset by `base`) at its
/// sorted position: the middle rank first, then both halves in parallel.
fn select_ranks(values: &mut [f64], base: usize, ranks: &[usize]) {
    if ranks.is_empty() || values.is_empty() {
        return;
    }
    let middle = ranks.len() / 2;
    let rank = ranks[middle] - base;
    let (left, _, right) = values.select_nth_unstable_by(rank, f64::total_cmp);
    let (left_ranks, right_ranks) = (&ranks[..middle], &ranks[middle + 1..]);
    if left.len() + right.len() > PARALLEL_MIN {
        rayon::join(
            || select_ranks(left, base, left_ranks),
            || select_ranks(right, base + rank + 1, right_ranks),
        );
    } else {
        select_ranks(left, base, left_ranks);
        select_ranks(right, base + rank + 1, right_ranks);
    }
}

/// A DDSketch of the finite values, and the infinities counted aside: the sketch maps a
/// value to a bin by its logarithm, and an infinite one has no bin.
struct Sketch {
    finite: DDSketch,
    negative_infinite: u64,
    positive_infinite: u64,
}

impl Sketch {
    fn new() -> Self {
        Self {
            finite: DDSketch::new(SketchConfig::new(SKETCH_RELATIVE_ERROR, 2048, 1.0e-9)),
            negative_infinite: 0,
            positive_infinite: 0,
        }
    }

    fn add(&mut self, x: f64) {
        if x == f64::NEG_INFINITY {
            self.negative_infinite += 1;
        } else if x == f64::INFINITY {
            self.positive_infinite += 1;
        } else {
            self.finite.add(x);
        }
    }

    fn merge(mut self, other: Self) -> Self {
        // Same configuration on both sides: merging cannot fail.
        let _ = self.finite.merge(&other.finite);
        self.negative_infinite += other.negative_infinite;
        self.positive_infinite += other.positive_infinite;
        self
    }

    /// The value at rank ⌊q · (n − 1)⌋, as DDSketch ranks: an infinity where the
    /// infinities lie, otherwise the finite sketch's estimate; NaN when empty.
    fn quantile(&self, q: f64) -> f64 {
        let estimate = |q: f64| self.finite.quantile(q).ok().flatten().unwrap_or(f64::NAN);
        if self.negative_infinite == 0 && self.positive_infinite == 0 {
            return estimate(q);
        }
        let finite = self.finite.count() as u64;
        let n = self.negative_infinite + finite + self.positive_infinite;
        let rank = (q * (n - 1) as f64) as u64;
        if rank < self.negative_infinite {
            f64::NEG_INFINITY
        } else if rank >= self.negative_infinite + finite {
            f64::INFINITY
        } else {
            // The same rank among the finite values: the least and greatest exactly (as
            // DDSketch answers q = 0 and 1), others half a rank up, so that rounding
            // cannot move the floor below it.
            let within = rank - self.negative_infinite;
            if within == 0 {
                estimate(0.0)
            } else if within == finite - 1 {
                estimate(1.0)
            } else {
                estimate((within as f64 + 0.5) / (finite - 1) as f64)
            }
        }
    }
}

/// Approximate quantiles from a DDSketch built per chunk and merged (infinities, which
/// the default NaN/±inf rule keeps, counted aside).
pub(crate) fn approx_quantiles(values: &[f64], qs: &[f64]) -> Vec<f64> {
    let build = |chunk: &[f64]| {
        let mut sketch = Sketch::new();
        for &x in chunk {
            sketch.add(x);
        }
        sketch
    };
    let sketch = if values.len() < PARALLEL_MIN {
        build(values)
    } else {
        values
            .par_chunks(CHUNK * 8)
            .map(build)
            .reduce(Sketch::new, Sketch::merge)
    };
    qs.iter().map(|q| sketch.quantile(*q)).collect()
}

/// Bin counts for `edges` (strictly increasing): bin i is [edges[i], edges[i+1]), the
/// last bin includes its right edge; values outside are not counted (numpy's rule).
pub(crate) fn histogram(values: &[f64], edges: &[f64]) -> Vec<u64> {
    let bins = edges.len().saturating_sub(1);
    let (first, last) = (edges[0], edges[bins]);
    let uniform_width = (last - first) / bins as f64;
    let uniform = edges
        .iter()
        .enumerate()
        .all(|(i, e)| (e - (first + uniform_width * i as f64)).abs() <= uniform_width * 1e-12);
    let count = |chunk: &[f64]| {
        let mut counts = vec![0_u64; bins];
        for &x in chunk {
            if !(x >= first && x <= last) {
                continue;
            }
            let mut bin = if uniform {
                (((x - first) / uniform_width) as usize).min(bins - 1)
            } else {
                edges
                    .partition_point(|e| *e <= x)
                    .saturating_sub(1)
                    .min(bins - 1)
            };
            // Floating-point rounding of the uniform index, corrected against the edges.
            while bin > 0 && x < edges[bin] {
                bin -= 1;
            }
            while bin + 1 < bins && x >= edges[bin + 1] {
                bin += 1;
            }
            counts[bin] += 1;
        }
        counts
    };
    let add = |mut a: Vec<u64>, b: Vec<u64>| {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
        a
    };
    if values.len() < PARALLEL_MIN {
        count(values)
    } else {
        values
            .par_chunks(CHUNK)
            .map(count)
            .reduce(|| vec![0; bins], add)
    }
}

/// What an Analyze call asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Request {
    pub(crate) quantiles: Vec<f64>,
    pub(crate) approx_quantiles: Vec<f64>,
    pub(crate) edges: Vec<f64>,
    pub(crate) bins: u32,
    pub(crate) histogram: bool,
}

/// Its answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    pub(crate) moments: Moments,
    pub(crate) quantiles: Vec<f64>,
    pub(crate) approx_quantiles: Vec<f64>,
    pub(crate) edges: Vec<f64>,
    pub(crate) counts: Vec<u64>,
    pub(crate) nan_count: u64,
    pub(crate) infinite_count: u64,
}

/// Most bins of an automatic or given histogram.
pub(crate) const MAX_BINS: usize = 100_000;

fn check_q(field: &str, qs: &[f64]) -> Result<(), EngineError> {
    match qs.iter().position(|q| !(0.0..=1.0).contains(q)) {
        Some(index) => Err(EngineError::invalid(
            format!("{field}[{index}]"),
            "must be between 0 and 1",
        )),
        None => Ok(()),
    }
}

/// Validates the request against its values (before any work).
pub(crate) fn validate(request: &Request) -> Result<(), EngineError> {
    check_q("quantiles", &request.quantiles)?;
    check_q("approx_quantiles", &request.approx_quantiles)?;
    if !request.edges.is_empty() {
        if request.edges.len() < 2 || request.edges.len() > MAX_BINS + 1 {
            return Err(EngineError::invalid(
                "histogram.edges",
                format!("between 2 and {} edges", MAX_BINS + 1),
            ));
        }
        if let Some(index) = request
            .edges
            .windows(2)
            .position(|pair| !(pair[0].is_finite() && pair[1].is_finite() && pair[0] < pair[1]))
        {
            return Err(EngineError::invalid(
                format!("histogram.edges[{}]", index + 1),
                "edges must be finite and strictly increasing",
            ));
        }
    }
    if request.bins as usize > MAX_BINS {
        return Err(EngineError::invalid(
            "histogram.bins",
            format!("at most {MAX_BINS}"),
        ));
    }
    Ok(())
}

/// Runs the analysis; `values` may be reordered (quantile selection works in place).
pub(crate) fn analyze(
    mut values: Vec<f64>,
    policy: NonFinite,
    request: &Request,
) -> Result<Report, EngineError> {
    validate(request)?;
    let (nan_count, infinite_count, first) = non_finite(&values);
    if let (NonFinite::Reject, Some(index)) = (policy, first) {
        return Err(EngineError::invalid(
            format!("values[{index}]"),
            "NaN or infinite (the policy is REJECT)",
        ));
    }
    let drop_inf = policy == NonFinite::Skip && infinite_count > 0;
    if nan_count > 0 || drop_inf {
        values.retain(|x| !(x.is_nan() || (drop_inf && x.is_infinite())));
    }
    let moments = moments(&values);
    let approx_quantiles = if request.approx_quantiles.is_empty() {
        Vec::new()
    } else {
        approx_quantiles(&values, &request.approx_quantiles)
    };
    let (edges, counts) = if !request.histogram {
        (Vec::new(), Vec::new())
    } else if !request.edges.is_empty() {
        let counts = histogram(&values, &request.edges);
        (request.edges.clone(), counts)
    } else if values.is_empty() || !(moments.min.is_finite() && moments.max.is_finite()) {
        (Vec::new(), Vec::new())
    } else {
        let bins = if request.bins == 0 {
            10
        } else {
            request.bins as usize
        };
        let (lo, hi) = if moments.min == moments.max {
            (moments.min - 0.5, moments.max + 0.5)
        } else {
            (moments.min, moments.max)
        };
        let width = (hi - lo) / bins as f64;
        let mut edges: Vec<f64> = (0..bins).map(|i| lo + width * i as f64).collect();
        edges.push(hi);
        let counts = histogram(&values, &edges);
        (edges, counts)
    };
    let quantiles = if request.quantiles.is_empty() {
        Vec::new()
    } else {
        quantiles(&mut values, &request.quantiles)
    };
    Ok(Report {
        moments,
        quantiles,
        approx_quantiles,
        edges,
        counts,
        nan_count,
        infinite_count,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The reference: a full sort and numpy's linear interpolation.
    fn sorted_quantile(values: &[f64], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        quantile_of_sorted(&sorted, q)
    }

    fn quantile_of_sorted(sorted: &[f64], q: f64) -> f64 {
        let position = q * (sorted.len() - 1) as f64;
        let lo = position.floor() as usize;
        let hi = (lo + 1).min(sorted.len() - 1);
        sorted[lo] + (sorted[hi] - sorted[lo]) * (position - lo as f64)
    }

    fn naive_variance(values: &[f64]) -> f64 {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        values.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (values.len() - 1) as f64
    }

    #[test]
    fn moments_are_stable_with_a_huge_offset() {
        // Welford-hostile: a large common offset, small spread.
        let values: Vec<f64> = (0..1_000_000).map(|i| 1e9 + f64::from(i % 7)).collect();
        let m = moments(&values);
        let spread: Vec<f64> = values.iter().map(|x| x - 1e9).collect();
        assert!(
            (m.variance() - naive_variance(&spread)).abs() < 1e-6,
            "{m:?}"
        );
        assert_eq!(m.count, 1_000_000);
        assert_eq!((m.min, m.max), (1e9, 1e9 + 6.0));
    }

    #[test]
    fn an_outlier_first_value_does_not_cancel_the_variance() {
        let mut values = vec![1e12];
        values.extend((0..10_000).map(|i| 1.0 + f64::from(i % 3) * 1e-3));
        let m = moments(&values);
        assert!((m.variance() - naive_variance(&values)).abs() <= naive_variance(&values) * 1e-9);
        let tail = moments(&values[1..]);
        assert!(
            (tail.variance() - naive_variance(&values[1..])).abs() < 1e-15,
            "{tail:?}"
        );
    }

    #[test]
    fn the_non_finite_rule() {
        let values = vec![1.0, f64::NAN, 3.0, f64::INFINITY];
        let request = Request::default();
        let report = analyze(values.clone(), NonFinite::DropNan, &request).unwrap();
        assert_eq!((report.nan_count, report.infinite_count), (1, 1));
        assert_eq!(report.moments.count, 3);
        assert_eq!(report.moments.max, f64::INFINITY);
        assert!(report.moments.sum.is_infinite());
        let report = analyze(values.clone(), NonFinite::Skip, &request).unwrap();
        assert_eq!(report.moments.count, 2);
        assert_eq!(report.moments.mean, 2.0);
        assert_eq!(
            analyze(values, NonFinite::Reject, &request).unwrap_err(),
            EngineError::invalid("values[1]", "NaN or infinite (the policy is REJECT)")
        );
    }

    #[test]
    fn histograms_given_and_automatic() {
        let values = [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 9.0, -1.0];
        let counts = histogram(&values, &[0.0, 1.0, 2.0]);
        assert_eq!(
            counts,
            [2, 4],
            "the last bin includes its right edge; outside ignored"
        );
        let counts = histogram(&values, &[0.0, 0.1, 2.0]);
        assert_eq!(counts, [1, 5], "uneven edges");
        let request = Request {
            histogram: true,
            bins: 4,
            ..Request::default()
        };
        let report = analyze(values.to_vec(), NonFinite::DropNan, &request).unwrap();
        assert_eq!(report.edges, [-1.0, 1.5, 4.0, 6.5, 9.0]);
        assert_eq!(report.counts.iter().sum::<u64>(), 8);
    }

    #[test]
    fn invalid_requests_name_the_field() {
        for (request, field) in [
            (
                Request {
                    quantiles: vec![0.5, 1.5],
                    ..Request::default()
                },
                "quantiles[1]",
            ),
            (
                Request {
                    approx_quantiles: vec![f64::NAN],
                    ..Request::default()
                },
                "approx_quantiles[0]",
            ),
            (
                Request {
                    edges: vec![0.0, 1.0, 1.0],
                    histogram: true,
                    ..Request::default()
                },
                "histogram.edges[2]",
            ),
        ] {
            match analyze(vec![1.0], NonFinite::DropNan, &request) {
                Err(EngineError::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Infinities (kept by the default rule) answer the ranks they hold; the rest come
    /// from the finite values' sketch within its bound. A fuzzer found that an infinity
    /// given to DDSketch overflowed its bin arithmetic (a panic with overflow checks,
    /// an index out of bounds without).
    #[test]
    fn approximate_quantiles_with_infinities_and_extremes() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        values.extend([f64::NEG_INFINITY; 10]);
        values.extend([f64::INFINITY; 5]);
        let qs = [0.0, 0.05, 0.1, 0.5, 0.9, 0.95, 1.0];
        let request = Request {
            approx_quantiles: qs.to_vec(),
            ..Request::default()
        };
        let report = analyze(values.clone(), NonFinite::DropNan, &request).unwrap();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for (q, approx) in qs.iter().zip(&report.approx_quantiles) {
            // DDSketch's bound is relative to the value at rank ⌊q · (n − 1)⌋.
            let exact = sorted[(q * (sorted.len() - 1) as f64) as usize];
            if exact.is_infinite() {
                assert_eq!(*approx, exact, "q = {q}");
            } else {
                assert!(
                    (approx - exact).abs() <= SKETCH_RELATIVE_ERROR * exact.abs() + 1e-9,
                    "q = {q}: {approx} vs {exact}"
                );
            }
        }
        assert_eq!(report.approx_quantiles[0], f64::NEG_INFINITY);
        assert_eq!(report.approx_quantiles[6], f64::INFINITY);
        // Only infinities; and the extremes of f64 with both signs and subnormals.
        let only = analyze(
            vec![f64::INFINITY, f64::NEG_INFINITY],
            NonFinite::DropNan,
            &request,
        )
        .unwrap();
        assert_eq!(only.approx_quantiles[0], f64::NEG_INFINITY);
        assert_eq!(only.approx_quantiles[6], f64::INFINITY);
        let extremes = vec![
            f64::MAX,
            -f64::MAX,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            1.0,
            f64::INFINITY,
        ];
        let report = analyze(extremes, NonFinite::DropNan, &request).unwrap();
        assert_eq!(report.approx_quantiles[0], -f64::MAX);
        assert_eq!(report.approx_quantiles[6], f64::INFINITY);
        // Over the parallel threshold, with infinities in several chunks.
        let mut large: Vec<f64> = (0..PARALLEL_MIN as u64 + 1000)
            .map(|i| (i % 1000) as f64)
            .collect();
        for i in (0..large.len()).step_by(PARALLEL_MIN / 4) {
            large[i] = f64::INFINITY;
        }
        let report = analyze(large, NonFinite::DropNan, &request).unwrap();
        assert_eq!(report.approx_quantiles[6], f64::INFINITY);
        assert!((report.approx_quantiles[3] - 500.0).abs() <= 500.0 * SKETCH_RELATIVE_ERROR + 1.0);
    }

    #[test]
    fn large_inputs_take_the_parallel_paths_and_agree() {
        let values: Vec<f64> = (0..600_001_u64)
            .map(|i| ((i.wrapping_mul(2_654_435_761) % 1_000_003) as f64) / 7.0 - 50_000.0)
            .collect();
        let qs = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0];
        let request = Request {
            quantiles: qs.to_vec(),
            approx_quantiles: qs.to_vec(),
            histogram: true,
            bins: 100,
            ..Request::default()
        };
        let report = analyze(values.clone(), NonFinite::DropNan, &request).unwrap();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for (q, got) in qs.iter().zip(&report.quantiles) {
            assert_eq!(*got, quantile_of_sorted(&sorted, *q), "q = {q}");
        }
        for (q, got) in qs.iter().zip(&report.approx_quantiles) {
            let exact = quantile_of_sorted(&sorted, *q);
            assert!(
                (got - exact).abs() <= SKETCH_RELATIVE_ERROR * exact.abs() + 1e-9,
                "q = {q}: {got} vs {exact}"
            );
        }
        assert_eq!(report.counts.iter().sum::<u64>(), values.len() as u64);
        let serial = values
            .chunks(CHUNK)
            .map(chunk_moments)
            .fold(Moments::EMPTY, Moments::merge);
        assert!((report.moments.variance() - serial.variance()).abs() <= serial.variance() * 1e-12);
    }

    #[test]
    fn sampled_quantiles_agree_with_selection_on_every_layout() {
        let n = SAMPLED_MIN + 12_345;
        let random: Vec<f64> = (0..n as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) % 1_000_003) as f64)
            .collect();
        let mut sorted = random.clone();
        sorted.sort_by(f64::total_cmp);
        let reversed: Vec<f64> = sorted.iter().rev().copied().collect();
        let constant = vec![4.25; n];
        // Period equal to the sample stride: the strided sample sees one value only.
        let periodic: Vec<f64> = (0..n).map(|i| (i % (n / SAMPLE)) as f64).collect();
        let qs = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0];
        for (name, values) in [
            ("random", random),
            ("sorted", sorted),
            ("reversed", reversed),
            ("constant", constant),
            ("periodic", periodic),
        ] {
            let mut reference = values.clone();
            reference.sort_by(f64::total_cmp);
            let expected: Vec<f64> = qs
                .iter()
                .map(|q| quantile_of_sorted(&reference, *q))
                .collect();
            assert_eq!(quantiles(&mut values.clone(), &qs), expected, "{name}");
        }
    }

    proptest! {
        #[test]
        fn exact_quantiles_match_a_full_sort(
            values in prop::collection::vec(-1e6_f64..1e6, 1..500),
            qs in prop::collection::vec(0.0_f64..=1.0, 1..6),
        ) {
            let got = quantiles(&mut values.clone(), &qs);
            for (q, got) in qs.iter().zip(got) {
                prop_assert_eq!(got, sorted_quantile(&values, *q));
            }
        }

        #[test]
        fn merged_sketches_stay_within_the_bound(
            a in prop::collection::vec(0.001_f64..1e6, 1..400),
            b in prop::collection::vec(0.001_f64..1e6, 1..400),
            q in 0.0_f64..=1.0,
        ) {
            let config = SketchConfig::new(SKETCH_RELATIVE_ERROR, 2048, 1.0e-9);
            let mut left = DDSketch::new(config);
            let mut right = DDSketch::new(config);
            a.iter().for_each(|x| left.add(*x));
            b.iter().for_each(|x| right.add(*x));
            left.merge(&right).unwrap();
            let all: Vec<f64> = a.iter().chain(&b).copied().collect();
            // DDSketch's guarantee is relative to a value of the right rank.
            let mut sorted = all.clone();
            sorted.sort_by(f64::total_cmp);
            let rank = (q * (sorted.len() - 1) as f64).floor() as usize;
            let estimate = left.quantile(q).unwrap().unwrap();
            let (lo, hi) = (sorted[rank.saturating_sub(1)], sorted[(rank + 1).min(sorted.len() - 1)]);
            prop_assert!(
                estimate >= lo * (1.0 - SKETCH_RELATIVE_ERROR) - 1e-9
                    && estimate <= hi * (1.0 + SKETCH_RELATIVE_ERROR) + 1e-9,
                "{} not within [{}, {}]", estimate, lo, hi
            );
        }

        #[test]
        fn moments_match_the_naive_formulas(values in prop::collection::vec(-1e3_f64..1e3, 2..300)) {
            let m = moments(&values);
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            prop_assert!((m.mean - mean).abs() < 1e-9);
            prop_assert!((m.variance() - naive_variance(&values)).abs() < 1e-6);
        }
    }
}

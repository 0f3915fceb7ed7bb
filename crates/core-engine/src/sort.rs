//! The parallel f64 sort of Compute: IEEE-754 total order, by radix on the bits.
//!
//! Each value becomes a `u64` key whose unsigned order is the total order. Then:
//!
//! 1. one read pass counts the keys' top 16 bits per thread segment;
//! 2. consecutive 16-bit bins are grouped into buckets of about [`BUCKET_TARGET`] keys,
//!    so the split follows the data's distribution (normal data crowds a few exponents);
//! 3. one pass scatters the keys from the source straight into their buckets in the
//!    output, each thread into its own slots;
//! 4. each bucket (a few thousand keys when the data spreads; normal data crowds single
//!    bins, so 10 M normal values give buckets of about 41,000 keys) is sorted in place
//!    by an LSD radix sort of two digits over its highest varying bits, with a buffer
//!    its worker reuses as the spare, so the scattered writes stay in cache; the rare
//!    groups equal in those bits are then sorted by comparison, and the keys turned
//!    back into values while the bucket is still in cache.
//!    Buckets are shared out by rayon. A bucket larger than [`HOT_MAX`] is split
//!    instead, recursively by its highest varying bits, into runs of a few keys sorted
//!    by comparison.
//!
//! The sort makes a sorted copy: the source is read twice and the output written about
//! twice, with no scratch buffer and no copy pass of its own. Measured on 10 M normal
//! f64, 2 threads (`ENGINE_BENCH_ONLY=sort cargo bench -p core-engine --bench engine`),
//! on a Xeon with 2 MiB of L2 per core: 55–64 ms into a new array, against 88–94 ms for
//! copying first and then sorting in place through an 80 MB scratch buffer; with the
//! copy made beforehand and not timed, the in-place sort took 65–167 ms (median 74) in
//! five runs alternating with five sorted copies into a new vector at 64–69 ms. On an
//! earlier Xeon, copy first: 104–107 ms, against 146–161 ms for the recursive split of
//! every bucket (step 4's fallback) and 386 ms for the LSD sort of two halves and a
//! merge before that.

use std::slice::IterMut;

use rayon::prelude::*;

/// Bits of the first split.
const TOP_BITS: u32 = 16;
const BINS: usize = 1 << TOP_BITS;
/// Keys per bucket aimed at, so that the bucket and its spare (2 × 64 KiB) stay in L2;
/// a bin holding more makes a larger bucket.
const BUCKET_TARGET: usize = 8 * 1024;
/// The largest bucket sorted by [`sort_bucket`], with a worker's reused buffer (2 MiB)
/// as its spare.
const HOT_MAX: usize = 256 * 1024;
/// Runs this short are sorted by comparison.
const SMALL: usize = 32;
/// Keys per sub-run an MSD pass aims at.
const KEYS_PER_RUN: usize = 4;
/// The widest MSD digit (4,096 counters).
const MAX_DIGIT_BITS: u32 = 12;

/// The key whose unsigned order is `f64::total_cmp`'s order: negative values have all
/// bits flipped, positive ones only the sign bit.
#[inline(always)]
fn key(value: f64) -> u64 {
    let bits = value.to_bits();
    bits ^ ((((bits as i64) >> 63) as u64) | (1 << 63))
}

/// The inverse of [`key`].
#[inline(always)]
fn value(key: u64) -> f64 {
    f64::from_bits(key ^ (!(((key as i64) >> 63) as u64) | (1 << 63)))
}

/// Writes `source`'s values to `out` (as long) sorted by `f64::total_cmp`, on the
/// current rayon pool: a sorted copy, as `numpy.sort` returns. The keys are scattered
/// straight into `out` and each bucket is sorted there, in cache, so a copy costs no
/// pass of its own and needs no scratch buffer.
///
/// # Panics
/// If `out` is not as long as `source`.
pub(crate) fn sort_f64_into(source: &[f64], out: &mut [f64]) {
    assert_eq!(
        source.len(),
        out.len(),
        "a sorted copy needs room for every value"
    );
    if source.len() <= SMALL || u32::try_from(source.len()).is_err() {
        out.copy_from_slice(source);
        out.par_sort_unstable_by(f64::total_cmp);
        return;
    }
    let out: &mut [u64] = bytemuck::cast_slice_mut(out);
    let sizes = scatter(source, out);
    sort_buckets(&sizes, out);
}

/// Steps 1–3: counts the top bits of `values`, groups the bins into buckets and
/// scatters the keys into `target` (as long), bucket after bucket. `values` holds more
/// than [`SMALL`] and at most `u32::MAX` values. Returns the buckets' sizes, in order.
fn scatter(values: &[f64], target: &mut [u64]) -> Vec<usize> {
    let n = values.len();
    let threads = rayon::current_num_threads().max(1);
    let segment = n.div_ceil(threads);

    // 1. Top-16-bit histograms (counts are u32: half the cache of usize), one per
    //    thread segment.
    let histograms: Vec<Vec<u32>> = values
        .par_chunks(segment)
        .map(|part| {
            let mut histogram = vec![0_u32; BINS];
            for &x in part {
                histogram[(key(x) >> (64 - TOP_BITS)) as usize] += 1;
            }
            histogram
        })
        .collect();

    // 2. Bins to buckets.
    let mut bucket_of = vec![0_u32; BINS];
    let mut sizes: Vec<usize> = Vec::new();
    let mut current = 0;
    for (bin, bucket) in bucket_of.iter_mut().enumerate() {
        let count: usize = histograms.iter().map(|h| h[bin] as usize).sum();
        if current > 0 && current + count > BUCKET_TARGET {
            sizes.push(current);
            current = 0;
        }
        *bucket = sizes.len() as u32;
        current += count;
    }
    sizes.push(current);
    let buckets = sizes.len();

    // 3. Scatter: bucket b holds thread 0's keys, then thread 1's, and so on.
    let mut counts = vec![vec![0_usize; buckets]; histograms.len()];
    for (histogram, counts) in histograms.iter().zip(&mut counts) {
        for (bin, &count) in histogram.iter().enumerate() {
            counts[bucket_of[bin] as usize] += count as usize;
        }
    }
    let mut slots: Vec<Vec<IterMut<'_, u64>>> = (0..histograms.len())
        .map(|_| Vec::with_capacity(buckets))
        .collect();
    let mut rest = target;
    for bucket in 0..buckets {
        for (thread, counts) in counts.iter().enumerate() {
            let (part, tail) = rest.split_at_mut(counts[bucket]);
            slots[thread].push(part.iter_mut());
            rest = tail;
        }
    }
    let bucket_of = &bucket_of;
    values
        .par_chunks(segment)
        .zip(slots.par_iter_mut())
        .for_each(|(part, slots)| {
            for &x in part {
                let k = key(x);
                let bucket = bucket_of[(k >> (64 - TOP_BITS)) as usize] as usize;
                if let Some(slot) = slots[bucket].next() {
                    *slot = k;
                }
            }
        });
    sizes
}

/// Step 4: each bucket of `keys` (`sizes` long each) sorted in place, in cache, leaving
/// the values' bits.
fn sort_buckets(sizes: &[usize], keys: &mut [u64]) {
    let mut buckets: Vec<&mut [u64]> = Vec::with_capacity(sizes.len());
    let mut rest = keys;
    for &size in sizes {
        let (bucket, tail) = rest.split_at_mut(size);
        buckets.push(bucket);
        rest = tail;
    }
    // Buckets up to HOT_MAX keys are sorted with a buffer each worker reuses as the
    // spare (so the radix passes' scattered writes stay in cache); a larger bucket (one
    // bin holding more) is split recursively.
    let largest = sizes.iter().copied().max().unwrap_or(0).min(HOT_MAX);
    buckets
        .into_par_iter()
        .for_each_init(Vec::new, |hot: &mut Vec<u64>, keys| {
            if keys.len() > HOT_MAX {
                sort_in_place(keys, &mut vec![0; keys.len()]);
            } else {
                if hot.len() < largest {
                    hot.resize(largest, 0);
                }
                sort_bucket(keys, &mut hot[..keys.len()]);
            }
            // The bucket is in cache: its keys become the values there.
            for k in keys.iter_mut() {
                *k = value(*k).to_bits();
            }
        });
}

/// Sorts a bucket's `keys` in place, with `spare` (as long) as scratch: an LSD radix
/// sort of two digits over the highest varying bits, about 8 times as many slots as
/// keys, then each group of keys equal in those bits (rare, unless values crowd) sorted
/// by comparison.
fn sort_bucket(keys: &mut [u64], spare: &mut [u64]) {
    let n = keys.len();
    let varying = varying_bits(keys);
    if n <= SMALL || varying == 0 {
        keys.sort_unstable();
        return;
    }
    let top = 64 - varying.leading_zeros();
    let bits = (usize::BITS - n.leading_zeros() + 3).min(top);
    let shift = top - bits;
    let low = bits / 2;
    let (low_mask, high_mask) = ((1_usize << low) - 1, (1_usize << (bits - low)) - 1);
    // Both digits counted in one pass, then turned into starting offsets.
    let mut low_at = vec![0_u32; low_mask + 1];
    let mut high_at = vec![0_u32; high_mask + 1];
    for &k in keys.iter() {
        let digits = (k >> shift) as usize;
        low_at[digits & low_mask] += 1;
        high_at[(digits >> low) & high_mask] += 1;
    }
    for counts in [&mut low_at, &mut high_at] {
        let mut total = 0;
        for count in counts.iter_mut() {
            (*count, total) = (total, total + *count);
        }
    }
    for &k in keys.iter() {
        let at = &mut low_at[(k >> shift) as usize & low_mask];
        spare[*at as usize] = k;
        *at += 1;
    }
    for &k in spare.iter() {
        let at = &mut high_at[(k >> (shift + low)) as usize & high_mask];
        keys[*at as usize] = k;
        *at += 1;
    }
    if shift > 0 {
        // Only keys equal in the sorted bits can be out of order: find each inversion,
        // sort the group of keys sharing its prefix, go on after the group.
        let mut from = 0;
        while let Some(at) = keys[from..].windows(2).position(|w| w[1] < w[0]) {
            let i = from + at + 1;
            let prefix = keys[i] >> shift;
            let start = keys[..i]
                .iter()
                .rposition(|&k| k >> shift != prefix)
                .map_or(0, |p| p + 1);
            let end = keys[i..]
                .iter()
                .position(|&k| k >> shift != prefix)
                .map_or(n, |p| i + p);
            keys[start..end].sort_unstable();
            from = end;
        }
    }
}

/// The bits of `keys` that differ somewhere among them.
fn varying_bits(keys: &[u64]) -> u64 {
    let (mut all, mut any) = (u64::MAX, 0_u64);
    for &k in keys {
        all &= k;
        any |= k;
    }
    all ^ any
}

/// Sorts the keys of `source` into `target` (as long); `source` is left as scratch.
fn sort_into(source: &mut [u64], target: &mut [u64]) {
    if source.len() <= SMALL {
        source.sort_unstable();
        target.copy_from_slice(source);
        return;
    }
    let varying = varying_bits(source);
    if varying == 0 {
        target.copy_from_slice(source);
        return;
    }
    let counts = split(source, target, varying);
    for_each_run(&counts, target, source, sort_in_place);
}

/// Sorts `keys` in place, with `spare` (as long) as scratch.
fn sort_in_place(keys: &mut [u64], spare: &mut [u64]) {
    if keys.len() <= SMALL {
        keys.sort_unstable();
        return;
    }
    let varying = varying_bits(keys);
    if varying == 0 {
        return;
    }
    let counts = split(keys, spare, varying);
    for_each_run(&counts, spare, keys, sort_into);
}

/// Calls `sort` on each run of `counts`: the run's part of `data` and the same part of
/// `other`.
fn for_each_run(
    counts: &[usize],
    data: &mut [u64],
    other: &mut [u64],
    sort: fn(&mut [u64], &mut [u64]),
) {
    let (mut data, mut other) = (data, other);
    for &count in counts {
        let (run, data_tail) = data.split_at_mut(count);
        let (spare, other_tail) = other.split_at_mut(count);
        sort(run, spare);
        (data, other) = (data_tail, other_tail);
    }
}

/// One MSD radix pass: `source`'s keys go to `target` grouped by their highest varying
/// bits, as many bits as leave about [`KEYS_PER_RUN`] keys per run (the longest common
/// prefix is skipped). Returns the length of each run, in order.
fn split(source: &[u64], target: &mut [u64], varying: u64) -> Vec<usize> {
    let top = 64 - varying.leading_zeros();
    let wanted = (source.len() / KEYS_PER_RUN)
        .next_power_of_two()
        .trailing_zeros();
    let width = wanted.clamp(1, MAX_DIGIT_BITS).min(top);
    let shift = top - width;
    let mask = (1_u64 << width) - 1;
    let mut counts = vec![0_usize; 1 << width];
    for &k in source {
        counts[((k >> shift) & mask) as usize] += 1;
    }
    let mut offsets = Vec::with_capacity(counts.len());
    let mut total = 0;
    for &count in &counts {
        offsets.push(total);
        total += count;
    }
    for &k in source {
        let d = ((k >> shift) & mask) as usize;
        target[offsets[d]] = k;
        offsets[d] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A sorted copy against the standard library's sort, bit for bit.
    fn check(values: Vec<f64>) {
        let mut expected = values.clone();
        expected.sort_by(f64::total_cmp);
        let mut copy = vec![0.0; values.len()];
        sort_f64_into(&values, &mut copy);
        let same = copy
            .iter()
            .zip(&expected)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && copy.len() == expected.len(), "not in total order");
    }

    /// xorshift, fixed seed.
    fn numbers(n: usize, seed: u64) -> impl Iterator<Item = u64> {
        let mut state = seed | 1;
        (0..n).map(move |_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
    }

    #[test]
    fn keys_order_like_total_cmp_and_invert() {
        let specials = [
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            5e-324,
            -5e-324,
            f64::MAX,
            f64::MIN,
            1.0,
            -1.0,
        ];
        for &a in &specials {
            assert_eq!(value(key(a)).to_bits(), a.to_bits());
            for &b in &specials {
                assert_eq!(key(a).cmp(&key(b)), a.total_cmp(&b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn large_inputs_of_many_shapes_come_out_in_total_order() {
        let n = 300_000;
        // Bits of every kind: NaNs, infinities, subnormals, both zeros.
        check(numbers(n, 1).map(f64::from_bits).collect());
        // Normal-like: a few exponents hold most values.
        check(
            numbers(n, 2)
                .map(|x| ((x >> 11) as f64 / (1_u64 << 53) as f64 - 0.5) * 8.0)
                .collect(),
        );
        // One 16-bit bin holds everything (uniform in [1, 1 + 2^-4)).
        check(
            numbers(n, 3)
                .map(|x| 1.0 + (x >> 11) as f64 / (1_u64 << 57) as f64)
                .collect(),
        );
        // Most values crowd within 2^-40 of 1.0, the rest spread wide: in the crowd's
        // bucket the radix digits see one group, sorted by comparison.
        check(
            numbers(100_000, 6)
                .map(|x| {
                    if x % 10 == 0 {
                        (x >> 11) as f64 / (1_u64 << 40) as f64 - 4096.0
                    } else {
                        1.0 + (x >> 40) as f64 / (1_u64 << 52) as f64
                    }
                })
                .collect(),
        );
        // Few distinct values, and all equal.
        check(numbers(n, 4).map(|x| (x % 7) as f64 - 3.0).collect());
        check(vec![-0.0; n]);
        // Already sorted, and reversed.
        let sorted: Vec<f64> = (0..n).map(|i| i as f64 * 0.25 - 1000.0).collect();
        check(sorted.clone());
        check(sorted.into_iter().rev().collect());
        // On a pool of three threads (segments of unequal length).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        pool.install(|| check(numbers(n + 1, 5).map(f64::from_bits).collect()));
    }

    proptest! {
        #[test]
        fn any_values_come_out_in_total_order(bits in prop::collection::vec(any::<u64>(), 0..3000)) {
            check(bits.into_iter().map(f64::from_bits).collect());
        }

        #[test]
        fn clustered_values_come_out_in_total_order(
            values in prop::collection::vec(prop_oneof![Just(0.0), Just(-0.0), -2.0..2.0_f64, Just(f64::NAN)], 0..3000),
        ) {
            check(values);
        }
    }
}

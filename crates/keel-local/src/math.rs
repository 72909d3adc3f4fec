//! The elementwise kernels of the encoder (layer norm, softmax, GELU) over
//! `f32` rows. They are written without branches or library calls in the
//! inner loops so the compiler vectorises them; `exp` and `erf` are
//! polynomial approximations accurate to a few ulp, which keeps the model's
//! outputs on the reference while costing a few multiply-adds per element.
//! They use `a * b + c`, not `mul_add`: without FMA in the build's target
//! features `mul_add` is a library call per element. Sums and maxima keep
//! [`LANES`] partial results, because a single running total is a chain the
//! compiler may not reorder into vectors. Each public kernel also exists
//! compiled for AVX-512, chosen at run time, since the build targets
//! baseline x86-64 (4 lanes).

/// Partial sums kept by the reductions: one AVX-512 register of `f32`.
const LANES: usize = 16;

/// Defines `pub fn $name` so that its body runs compiled for AVX-512 when
/// the CPU has it, else for the build's baseline.
macro_rules! dispatched {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

#[inline(always)]
fn lane_sum(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += term(v);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| term(v)).sum::<f32>()
}

#[inline(always)]
fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes
        .iter()
        .chain(chunks.remainder())
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// `exp(x)` for `x ≤ 0` (softmax after subtracting the row maximum);
/// inputs below −87 flush to 0 as in `f32`.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    // Rounds to nearest with the 1.5·2^23 trick: `round()` is a library call
    // on baseline x86-64 and would stop vectorisation.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial on [−ln2/2, ln2/2].
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r * r + r + 1.0;
    // The low mantissa bits of `shifted` hold n; move them into the exponent.
    let scale = f32::from_bits((shifted.to_bits().wrapping_add(127)) << 23);
    p * scale
}

/// `erf(x)`: the rational approximation Eigen and XLA use for `f32`
/// (exact to float precision once clamped to [−4, 4]).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = (((((-2.726_142_3e-10 * x2 + 2.770_681_4e-8) * x2 - 2.101_024e-6) * x2
        - 5.692_506_4e-5)
        * x2
        - 7.349_906_3e-4)
        * x2
        - 2.954_600_1e-3)
        * x2
        - 1.609_603_3e-2;
    let q = (((-1.456_607_2e-5 * x2 - 2.133_740_6e-4) * x2 - 1.682_827e-3) * x2 - 7.373_329_2e-3)
        * x2
        - 1.426_474e-2;
    x * p / q
}

dispatched! {
    /// `GELU(x + bias)` over rows of `bias.len()`, in place: GELU as BERT
    /// defines it, `x·Φ(x)` with the exact (erf) normal CDF.
    pub fn bias_gelu(rows: &mut [f32], bias: &[f32]) {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                let x = *v + b;
                *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

dispatched! {
    /// Softmax of each row of `rows` (row length `width`), in place.
    pub fn softmax_rows(rows: &mut [f32], width: usize) {
        for row in rows.chunks_exact_mut(width) {
            let max = lane_max(row);
            for v in row.iter_mut() {
                *v = exp_non_positive(*v - max);
            }
            let inverse = 1.0 / lane_sum(row, |v| v);
            for v in row.iter_mut() {
                *v *= inverse;
            }
        }
    }
}

dispatched! {
    /// Layer normalisation of each row of `rows` (row length `gamma.len()`)
    /// after adding `bias` to it, if any, in place.
    pub fn layer_norm_rows(
        rows: &mut [f32],
        bias: Option<&[f32]>,
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
    ) {
        let width = gamma.len();
        for row in rows.chunks_exact_mut(width) {
            if let Some(bias) = bias {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
            let mean = lane_sum(row, |v| v) / width as f32;
            let variance = lane_sum(row, |v| (v - mean) * (v - mean)) / width as f32;
            let inverse_std = 1.0 / (variance + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                *v = (*v - mean) * inverse_std * g + b;
            }
        }
    }
}

dispatched! {
    /// Adds `bias` to each row of `rows` (row length `bias.len()`).
    pub fn add_row(rows: &mut [f32], bias: &[f32]) {
        for row in rows.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series in f64, the reference for the approximation
    /// (past |x| = 4, erf is within 2e-8 of ±1 and the series loses digits).
    fn erf_reference(x: f64) -> f64 {
        if x.abs() > 4.0 {
            return x.signum();
        }
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_the_series_to_float_precision() {
        let worst = (-6000..=6000)
            .map(|i| i as f64 / 1000.0)
            .map(|x| (erf(x as f32) as f64 - erf_reference(x)).abs())
            .fold(0.0, f64::max);
        // A few ulp of values near 1 (ulp 1.2e-7).
        assert!(worst < 5e-7, "worst erf error {worst}");
    }

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (got, want) = (exp_non_positive(x), x.exp());
            assert!(
                (got - want).abs() <= want * 4.0 * f32::EPSILON,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_non_positive(-1000.0), exp_non_positive(-87.0));
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let mut rows = vec![1.0, 2.0, 3.0, -50.0, 0.0, 0.0];
        softmax_rows(&mut rows, 3);
        assert!((rows[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(rows[0] < rows[1] && rows[1] < rows[2]);
        assert!((rows[4] - 0.5).abs() < 1e-6 && rows[3] < 1e-20);
    }

    /// Rows wider than [`LANES`], so the vectorised reductions run too.
    fn wide_rows(width: usize) -> Vec<f32> {
        (0..3 * width)
            .map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0)
            .collect()
    }

    #[test]
    fn wide_softmax_matches_a_direct_computation() {
        let width = 37;
        let mut rows = wide_rows(width);
        let want: Vec<f64> = rows
            .chunks(width)
            .flat_map(|row| {
                let max = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
                let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                row.iter().map(move |&v| (v as f64 - max).exp() / sum)
            })
            .collect();
        softmax_rows(&mut rows, width);
        for (got, want) in rows.iter().zip(&want) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn wide_layer_norm_matches_a_direct_computation() {
        let width = 40;
        let mut rows = wide_rows(width);
        let gamma: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 / 10.0).collect();
        let beta: Vec<f32> = (0..width).map(|i| i as f32 / 20.0).collect();
        let bias: Vec<f32> = (0..width).map(|i| i as f32 / 7.0).collect();
        let mut biased = rows.clone();
        add_row(&mut biased, &bias);
        let want: Vec<f64> = biased
            .chunks(width)
            .flat_map(|row| {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                let variance =
                    row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                let (gamma, beta) = (&gamma, &beta);
                row.iter().enumerate().map(move |(i, &v)| {
                    (v as f64 - mean) / (variance + 1e-12).sqrt() * gamma[i] as f64 + beta[i] as f64
                })
            })
            .collect();
        layer_norm_rows(&mut rows, Some(&bias), &gamma, &beta, 1e-12);
        layer_norm_rows(&mut biased, None, &gamma, &beta, 1e-12);
        assert_eq!(rows, biased, "the bias is added before normalising");
        for (got, want) in rows.iter().zip(&want) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut rows = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm_rows(&mut rows, None, &[1.0, 2.0], &[0.0, 1.0], 0.0);
        assert_eq!(rows, [-1.0, 3.0, -1.0, 3.0]);
    }

    #[test]
    fn gelu_matches_its_definition() {
        let values: Vec<f32> = vec![-3.0, -1.0, 0.0, 0.5, 2.0];
        let want: Vec<f32> = values
            .iter()
            .map(|&x| {
                let x = f64::from(x);
                (0.5 * x * (1.0 + erf_reference(x / 2f64.sqrt()))) as f32
            })
            .collect();
        // As one row with a bias of 1, shifted back.
        let mut shifted: Vec<f32> = values.iter().map(|v| v - 1.0).collect();
        bias_gelu(&mut shifted, &[1.0; 5]);
        for (got, want) in shifted.iter().zip(&want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}

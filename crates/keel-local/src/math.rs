//! The elementwise kernels of the encoder (layer norm, softmax, GELU) over
//! `f32` rows. They are written without branches or library calls in the
//! inner loops so the compiler vectorises them; `exp` and `erf` are
//! polynomial approximations accurate to a few ulp, which keeps the model's
//! outputs on the reference while costing a few multiply-adds per element.
//! They use `a * b + c`, not `mul_add`: without FMA in the build's target
//! features `mul_add` is a library call per element.

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

/// GELU as BERT defines it, `x·Φ(x)` with the exact (erf) normal CDF, in place.
pub fn gelu(values: &mut [f32]) {
    for v in values {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Softmax of each row of `rows` (row length `width`), in place.
pub fn softmax_rows(rows: &mut [f32], width: usize) {
    for row in rows.chunks_exact_mut(width) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = exp_non_positive(*v - max);
            sum += *v;
        }
        let inverse = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inverse;
        }
    }
}

/// Layer normalisation of each row of `rows` (row length `gamma.len()`), in place.
pub fn layer_norm_rows(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let width = gamma.len();
    for row in rows.chunks_exact_mut(width) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inverse_std = 1.0 / (variance + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = (*v - mean) * inverse_std * g + b;
        }
    }
}

/// Adds `bias` to each row of `rows` (row length `bias.len()`).
pub fn add_row(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
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

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut rows = vec![1.0, 2.0, 3.0, 4.0];
        layer_norm_rows(&mut rows, &[1.0, 2.0], &[0.0, 1.0], 0.0);
        assert_eq!(rows, [-1.0, 3.0, -1.0, 3.0]);
    }

    #[test]
    fn gelu_matches_its_definition() {
        let mut values: Vec<f32> = vec![-3.0, -1.0, 0.0, 0.5, 2.0];
        let want: Vec<f32> = values
            .iter()
            .map(|&x| {
                let x = f64::from(x);
                (0.5 * x * (1.0 + erf_reference(x / 2f64.sqrt()))) as f32
            })
            .collect();
        gelu(&mut values);
        for (got, want) in values.iter().zip(&want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}

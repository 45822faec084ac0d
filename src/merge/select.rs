//! Exact rank selection of magnitudes, with ties broken by element index.
//!
//! A magnitude |δ| ≥ 0 and its index j are packed into one u64 key so that
//! the keys are all distinct and their order is the order we select in:
//! the bits of a non-negative f32 sort as the values do (NaN above +inf).
//! Selecting the k-th key (`select_nth_unstable`, O(n)) gives a threshold
//! that picks exactly k elements, whatever the ties.

/// Order "largest magnitude first, lower index first among equals".
#[inline]
pub(crate) fn desc_key(mag: f32, idx: usize) -> u64 {
    (((!mag.to_bits()) as u64) << 32) | idx as u64
}

/// Order "smallest magnitude first, lower index first among equals".
#[inline]
pub(crate) fn asc_key(mag: f32, idx: usize) -> u64 {
    ((mag.to_bits() as u64) << 32) | idx as u64
}

/// Largest element count the keys can index.
pub(crate) const MAX_LEN: usize = 1 << 32;

/// The key of rank `k` (0-based, ascending); reorders `keys`.
pub(crate) fn nth(keys: &mut [u64], k: usize) -> u64 {
    *keys.select_nth_unstable(k).1
}

/// Which entries of one task vector survive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Sel {
    All,
    Nothing,
    /// Keep where `desc_key < pivot` (the `k` first in descending order).
    Below(u64),
    /// Keep where `lo ≤ asc_key` and `asc_key < hi` (no upper bound when `None`).
    Range {
        lo: u64,
        hi: Option<u64>,
    },
    /// Keep where the block's next draw is below the density.
    Bernoulli {
        density: f64,
    },
}

impl Sel {
    /// Whether the entry of magnitude `mag` at `idx` is kept (not for `Bernoulli`).
    #[inline]
    pub(crate) fn keeps(&self, mag: f32, idx: usize) -> bool {
        match *self {
            Sel::All => true,
            Sel::Nothing => false,
            Sel::Below(p) => desc_key(mag, idx) < p,
            Sel::Range { lo, hi } => {
                let k = asc_key(mag, idx);
                k >= lo && hi.is_none_or(|h| k < h)
            }
            Sel::Bernoulli { .. } => unreachable!("Bernoulli masks come from the rng"),
        }
    }
}

/// TIES's selection of k = max(1, ⌊d·n⌋) largest, from magnitudes filled into `keys`
/// by `fill(keys)` with [`desc_key`] (called only when a pivot is needed).
pub(crate) fn top_k(
    density: f64,
    n: usize,
    keys: &mut Vec<u64>,
    fill: impl FnOnce(&mut [u64]),
) -> Sel {
    if density >= 1.0 {
        return Sel::All;
    }
    if density <= 0.0 || n == 0 {
        return Sel::Nothing;
    }
    let k = ((density * n as f64) as usize).max(1);
    if k >= n {
        return Sel::All;
    }
    keys.resize(n, 0);
    fill(keys);
    Sel::Below(nth(keys, k))
}

/// Breadcrumbs' selection (mergekit's `magnitude_outliers`): ascending ranks
/// [b, b + ⌊d·n⌋), b = max(0, n − ⌊d·n⌋ − ⌊γ·n⌋), from [`asc_key`]s.
pub(crate) fn outliers(
    density: f64,
    gamma: f64,
    n: usize,
    keys: &mut Vec<u64>,
    fill: impl FnOnce(&mut [u64]),
) -> Sel {
    if density >= 1.0 {
        return Sel::All;
    }
    let target = (density * n as f64) as usize;
    let n_top = (gamma * n as f64) as usize;
    if target == 0 {
        return Sel::Nothing;
    }
    let lo = n.saturating_sub(target + n_top);
    let hi = lo + target;
    keys.resize(n, 0);
    fill(keys);
    let lo_key = nth(keys, lo);
    let hi_key = (hi < n).then(|| nth(&mut keys[lo + 1..], hi - lo - 1));
    Sel::Range {
        lo: lo_key,
        hi: hi_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(sel: Sel, mags: &[f32]) -> Vec<usize> {
        (0..mags.len()).filter(|&j| sel.keeps(mags[j], j)).collect()
    }

    #[test]
    fn top_k_breaks_ties_by_index() {
        let mags = [1.0, 3.0, 2.0, 3.0, 0.0, 3.0];
        let mut keys = Vec::new();
        let sel = top_k(0.5, mags.len(), &mut keys, |k| {
            for (j, s) in k.iter_mut().enumerate() {
                *s = desc_key(mags[j], j);
            }
        });
        assert_eq!(kept(sel, &mags), vec![1, 3, 5]);
        let sel = top_k(0.34, mags.len(), &mut keys, |k| {
            for (j, s) in k.iter_mut().enumerate() {
                *s = desc_key(mags[j], j);
            }
        });
        // ⌊0.34·6⌋ = 2: the two 3.0 with the lowest indices.
        assert_eq!(kept(sel, &mags), vec![1, 3]);
        // At least one survives; d = 0 keeps none; d = 1 all.
        let fill = |k: &mut [u64]| {
            for (j, s) in k.iter_mut().enumerate() {
                *s = desc_key(mags[j], j);
            }
        };
        assert_eq!(kept(top_k(0.01, 6, &mut keys, fill), &mags), vec![1]);
        assert_eq!(top_k(0.0, 6, &mut keys, fill), Sel::Nothing);
        assert_eq!(top_k(1.0, 6, &mut keys, fill), Sel::All);
    }

    #[test]
    fn outliers_drop_both_ends() {
        // 10 distinct magnitudes 0..9 shuffled; d = 0.5, γ = 0.2: keep ranks [3, 8).
        let mags: Vec<f32> = [4.0, 9.0, 0.0, 7.0, 2.0, 8.0, 1.0, 6.0, 3.0, 5.0].to_vec();
        let fill = |k: &mut [u64]| {
            for (j, s) in k.iter_mut().enumerate() {
                *s = asc_key(mags[j], j);
            }
        };
        let mut keys = Vec::new();
        let sel = outliers(0.5, 0.2, 10, &mut keys, fill);
        let mut got: Vec<f32> = kept(sel, &mags).into_iter().map(|j| mags[j]).collect();
        got.sort_by(f32::total_cmp);
        assert_eq!(got, vec![3.0, 4.0, 5.0, 6.0, 7.0]);
        // d + γ > 1: fewer outliers dropped so that ⌊d·n⌋ remain.
        let sel = outliers(0.9, 0.2, 10, &mut keys, fill);
        assert_eq!(kept(sel, &mags).len(), 9);
        let sel = outliers(0.05, 0.0, 10, &mut keys, fill);
        assert_eq!(sel, Sel::Nothing);
    }
}

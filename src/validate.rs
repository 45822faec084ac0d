//! The one validation layer for numbers a user types: every numeric flag of the command line
//! is parsed by one of these functions (they are clap value parsers: `fn(&str) -> Result<T,
//! String>`), and so are the values of `--config` files, `MNEMO_*` variables and `--set`,
//! which `cmd/config.rs` checks with the flag's own parser. Each accepts only finite numbers
//! in its stated range, so NaN, ±inf and out-of-range values are refused before any work,
//! with clap's message naming the flag (or the config layer naming the file and key).
//!
//! Sizes are bounded here too: [`size`] and [`count`] refuse values that could not be
//! allocated, and [`alloc_bytes`] is the one check every size that comes from an input
//! file or a flag goes through before memory is reserved for it.

use crate::{MnemoError, Result};

/// The largest allocation mnemo will attempt for one buffer sized by an input or a flag:
/// the machine's memory (MemTotal from /proc/meminfo), or 64 GiB where that is unknown.
/// A size beyond it is refused with an error naming it instead of aborting in the allocator.
pub fn max_alloc_bytes() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb.saturating_mul(1024))
            .unwrap_or(64 << 30)
    })
}

/// The size in bytes of `count` elements of `elem_size` bytes, refused (naming `what`) when
/// it overflows or exceeds [`max_alloc_bytes`].
pub fn alloc_bytes(what: &str, count: u64, elem_size: u64) -> Result<usize> {
    let max = max_alloc_bytes();
    match count.checked_mul(elem_size) {
        Some(b) if b <= max && usize::try_from(b).is_ok() => Ok(b as usize),
        _ => Err(MnemoError::TooLarge {
            what: what.to_string(),
            reason: format!(
                "{count} × {elem_size} bytes exceeds the {max}-byte limit (this machine's memory)"
            ),
        }),
    }
}

/// The number of elements of a shape, refused (naming `what`) when the product overflows or
/// the elements, at `elem_size` bytes each, exceed [`max_alloc_bytes`].
pub fn elements(what: &str, dims: &[usize], elem_size: u64) -> Result<usize> {
    let mut n: u64 = 1;
    for &d in dims {
        n = n
            .checked_mul(d as u64)
            .ok_or_else(|| MnemoError::TooLarge {
                what: what.to_string(),
                reason: format!("shape {dims:?} overflows"),
            })?;
    }
    alloc_bytes(what, n, elem_size)?;
    Ok(n as usize)
}

fn number(s: &str) -> std::result::Result<f64, String> {
    let t = s.trim();
    let v: f64 = t.parse().map_err(|_| format!("'{t}' is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{t} is not a finite number"))
    }
}

fn within(s: &str, ok: impl Fn(f64) -> bool, range: &str) -> std::result::Result<f64, String> {
    let v = number(s)?;
    if ok(v) {
        Ok(v)
    } else {
        Err(format!("{v} is not in {range}"))
    }
}

fn narrow(v: f64) -> std::result::Result<f32, String> {
    let x = v as f32;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{v} does not fit in a 32-bit float"))
    }
}

/// Any finite number.
pub fn finite(s: &str) -> std::result::Result<f64, String> {
    number(s)
}

/// A finite number ≥ 0.
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| v >= 0.0, "[0, ∞) (a finite number ≥ 0)")
}

/// A finite number > 0.
pub fn positive(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| v > 0.0, "(0, ∞) (a finite number > 0)")
}

/// A number in [0, 1].
pub fn unit_closed(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| (0.0..=1.0).contains(&v), "[0, 1]")
}

/// A number in [0, 1).
pub fn unit_half_open(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| (0.0..1.0).contains(&v), "[0, 1)")
}

/// A number in (0, 1).
pub fn unit_open(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| v > 0.0 && v < 1.0, "(0, 1)")
}

/// A finite number ≤ 1 (torchvision's focal α: negative means no weighting).
pub fn at_most_one(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| v <= 1.0, "(-∞, 1]")
}

/// The largest learning rate accepted: beyond it every optimizer diverges in one update.
pub const MAX_LR: f64 = 1e3;

/// A learning rate: [0, 1000].
pub fn learning_rate(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| (0.0..=MAX_LR).contains(&v), "[0, 1000]")
}

/// A duration in seconds: (0, 10^6].
pub fn seconds(s: &str) -> std::result::Result<f64, String> {
    within(s, |v| v > 0.0 && v <= 1e6, "(0, 1000000] seconds")
}

/// [`non_negative`] as an f32.
pub fn non_negative_f32(s: &str) -> std::result::Result<f32, String> {
    narrow(non_negative(s)?)
}

/// [`unit_closed`] as an f32.
pub fn unit_closed_f32(s: &str) -> std::result::Result<f32, String> {
    narrow(unit_closed(s)?)
}

/// [`unit_half_open`] as an f32 (Adam's β: torch requires 0 ≤ β < 1).
pub fn unit_half_open_f32(s: &str) -> std::result::Result<f32, String> {
    let v = narrow(unit_half_open(s)?)?;
    // 0.99999999 rounds to 1.0 in f32.
    if v < 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "{} rounds to 1 as a 32-bit float; must be < 1",
            s.trim()
        ))
    }
}

/// [`positive`] as an f32 that stays positive (Adam's ε).
pub fn positive_f32(s: &str) -> std::result::Result<f32, String> {
    let v = narrow(positive(s)?)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{} rounds to 0 as a 32-bit float", s.trim()))
    }
}

/// The largest count (epochs, resamples, ranks, capacities, window sizes) accepted from a
/// flag: 2^32. Larger values are refused rather than looping or allocating for ever.
pub const MAX_COUNT: u64 = 1 << 32;

fn integer(s: &str, lo: u64) -> std::result::Result<u64, String> {
    let t = s.trim();
    let v: u64 = t
        .parse()
        .map_err(|_| format!("'{t}' is not a non-negative integer"))?;
    if v < lo {
        return Err(format!("{v} is less than {lo}"));
    }
    if v > MAX_COUNT {
        return Err(format!("{v} exceeds the limit of {MAX_COUNT}"));
    }
    Ok(v)
}

/// An integer in [0, 2^32].
pub fn size(s: &str) -> std::result::Result<usize, String> {
    integer(s, 0).map(|v| v as usize)
}

/// An integer in [1, 2^32].
pub fn count(s: &str) -> std::result::Result<usize, String> {
    integer(s, 1).map(|v| v as usize)
}

/// An integer in [1, 2^32], as u64.
pub fn count_u64(s: &str) -> std::result::Result<u64, String> {
    integer(s, 1)
}

/// The longest token row (`data import text --seq-len`): 2^20 tokens, far beyond any
/// model's context.
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// A row length in tokens: an integer in [1, [`MAX_SEQ_LEN`]].
pub fn seq_len(s: &str) -> std::result::Result<usize, String> {
    let v = integer(s, 1)?;
    if v > MAX_SEQ_LEN as u64 {
        return Err(format!("{v} exceeds the limit of {MAX_SEQ_LEN} tokens"));
    }
    Ok(v as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parser_refuses_non_finite_values() {
        type P = fn(&str) -> std::result::Result<f64, String>;
        let parsers: [P; 9] = [
            finite,
            non_negative,
            positive,
            unit_closed,
            unit_half_open,
            unit_open,
            at_most_one,
            learning_rate,
            seconds,
        ];
        for p in parsers {
            for bad in [
                "nan", "NaN", "inf", "-inf", "infinity", "1e309", "", "x", "1,5",
            ] {
                assert!(p(bad).is_err(), "{bad}");
            }
        }
        assert!(non_negative("-1").is_err());
        assert!(positive("0").is_err());
        assert!(unit_closed("1.5").is_err());
        assert!(unit_half_open("1").is_err());
        assert!(learning_rate("1e30").is_err());
        assert!(seconds("1e12").is_err());
        assert_eq!(unit_closed(" 0.5 "), Ok(0.5));
        assert!(unit_half_open_f32("0.999999999").is_err());
        assert!(positive_f32("1e-50").is_err());
        assert!(non_negative_f32("1e39").is_err());
        assert!(size("1e12").is_err() && size("-1").is_err() && size("5000000000").is_err());
        assert!(count("0").is_err());
        assert_eq!(count("3"), Ok(3));
        assert!(seq_len("0").is_err() && seq_len("1048577").is_err() && seq_len("1e3").is_err());
        assert_eq!(seq_len("1048576"), Ok(1 << 20));
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(alloc_bytes("x", u64::MAX, 4).is_err());
        assert!(alloc_bytes("x", max_alloc_bytes() + 1, 1).is_err());
        assert_eq!(alloc_bytes("x", 10, 4).unwrap(), 40);
        assert!(elements("x", &[usize::MAX, 2], 1).is_err());
        assert_eq!(elements("x", &[3, 4], 4).unwrap(), 12);
    }
}

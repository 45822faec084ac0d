//! safetensors element types and their conversion to and from f32.
//! Conversions read bytes as little-endian one element at a time, so
//! unaligned tensors are copied, never cast in place.

use half::{bf16, f16};
use rayon::prelude::*;
use std::fmt;

/// The element types of the safetensors format that mnemo reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    F8E8M0,
    U16,
    I16,
    F16,
    BF16,
    U32,
    I32,
    F32,
    U64,
    I64,
    F64,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::Bool,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E4M3" => Dtype::F8E4M3,
            "F8_E5M2" => Dtype::F8E5M2,
            "F8_E8M0" => Dtype::F8E8M0,
            "U16" => Dtype::U16,
            "I16" => Dtype::I16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "U32" => Dtype::U32,
            "I32" => Dtype::I32,
            "F32" => Dtype::F32,
            "U64" => Dtype::U64,
            "I64" => Dtype::I64,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }

    /// The name used in safetensors headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::U16 => "U16",
            Dtype::I16 => "I16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::F32 => "F32",
            Dtype::U64 => "U64",
            Dtype::I64 => "I64",
            Dtype::F64 => "F64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::F8E8M0 => {
                1
            }
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F8E4M3
                | Dtype::F8E5M2
                | Dtype::F8E8M0
                | Dtype::F16
                | Dtype::BF16
                | Dtype::F32
                | Dtype::F64
        )
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn f8_e4m3_to_f32(b: u8) -> f32 {
    // OCP FP8 E4M3 ("fn" variant used by torch.float8_e4m3fn): no infinities, 0x7f/0xff are NaN.
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

fn f8_e5m2_to_f32(b: u8) -> f32 {
    // E5M2 is the top byte of an IEEE half.
    f16::from_bits((b as u16) << 8).to_f32()
}

fn f8_e8m0_to_f32(b: u8) -> f32 {
    // Unsigned power of two (MX scale format); 0xff is NaN.
    if b == 0xff {
        f32::NAN
    } else {
        2f32.powi(b as i32 - 127)
    }
}

/// Decodes little-endian `bytes` of `dtype` into `out` (whose length sets the count).
pub fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    let sz = dtype.size();
    debug_assert_eq!(bytes.len(), n * sz);
    macro_rules! conv {
        ($w:expr, $f:expr) => {
            out.iter_mut()
                .zip(bytes.chunks_exact($w))
                .for_each(|(o, c)| *o = $f(c))
        };
    }
    match dtype {
        Dtype::Bool => conv!(1, |c: &[u8]| (c[0] != 0) as u8 as f32),
        Dtype::U8 => conv!(1, |c: &[u8]| c[0] as f32),
        Dtype::I8 => conv!(1, |c: &[u8]| c[0] as i8 as f32),
        Dtype::F8E4M3 => conv!(1, |c: &[u8]| f8_e4m3_to_f32(c[0])),
        Dtype::F8E5M2 => conv!(1, |c: &[u8]| f8_e5m2_to_f32(c[0])),
        Dtype::F8E8M0 => conv!(1, |c: &[u8]| f8_e8m0_to_f32(c[0])),
        Dtype::U16 => conv!(2, |c: &[u8]| u16::from_le_bytes([c[0], c[1]]) as f32),
        Dtype::I16 => conv!(2, |c: &[u8]| i16::from_le_bytes([c[0], c[1]]) as f32),
        Dtype::F16 => conv!(2, |c: &[u8]| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        // bf16 is the top half of an f32: a shift, exact for every value (NaN payloads too),
        // and a loop the compiler vectorises.
        Dtype::BF16 => conv!(2, |c: &[u8]| f32::from_bits(
            (u16::from_le_bytes([c[0], c[1]]) as u32) << 16
        )),
        Dtype::U32 => conv!(4, |c: &[u8]| u32::from_le_bytes(c.try_into().unwrap())
            as f32),
        Dtype::I32 => conv!(4, |c: &[u8]| i32::from_le_bytes(c.try_into().unwrap())
            as f32),
        Dtype::F32 => conv!(4, |c: &[u8]| f32::from_le_bytes(c.try_into().unwrap())),
        Dtype::U64 => conv!(8, |c: &[u8]| u64::from_le_bytes(c.try_into().unwrap())
            as f32),
        Dtype::I64 => conv!(8, |c: &[u8]| i64::from_le_bytes(c.try_into().unwrap())
            as f32),
        Dtype::F64 => conv!(8, |c: &[u8]| f64::from_le_bytes(c.try_into().unwrap())
            as f32),
    }
}

/// Decodes a whole tensor to f32, in parallel chunks for large tensors.
pub fn decode(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / dtype.size();
    let mut out = vec![0f32; n];
    const CHUNK: usize = 1 << 16;
    if n <= CHUNK {
        decode_into(dtype, bytes, &mut out);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * dtype.size()))
            .for_each(|(o, b)| decode_into(dtype, b, o));
    }
    out
}

/// Decodes integer tensors exactly (i64), for class labels and counters.
pub fn decode_i64(dtype: Dtype, bytes: &[u8]) -> Option<Vec<i64>> {
    let sz = dtype.size();
    let it = bytes.chunks_exact(sz);
    Some(match dtype {
        Dtype::U8 | Dtype::Bool => it.map(|c| c[0] as i64).collect(),
        Dtype::I8 => it.map(|c| c[0] as i8 as i64).collect(),
        Dtype::U16 => it
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        Dtype::I16 => it
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        Dtype::U32 => it
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        Dtype::I32 => it
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        Dtype::I64 => it
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::U64 => it
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()).min(i64::MAX as u64) as i64)
            .collect(),
        _ => return None,
    })
}

/// Encodes f32 values as `dtype` (round to nearest even for f16/bf16, as torch does).
pub fn encode(dtype: Dtype, values: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    match dtype {
        Dtype::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        Dtype::F16 => values
            .iter()
            .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
        Dtype::BF16 => values
            .iter()
            .for_each(|v| out.extend(bf16::from_f32(*v).to_le_bytes())),
        Dtype::F64 => values
            .iter()
            .for_each(|v| out.extend((*v as f64).to_le_bytes())),
        _ => return None,
    }
    Some(out)
}

/// `values` encoded as `dtype` (as [`encode`]), with the index of the first element that
/// is not finite as written: a NaN or inf kept, or a finite f32 beyond f16's ±65504.
pub fn encode_checked(dtype: Dtype, values: &[f32]) -> Option<(Vec<u8>, Option<usize>)> {
    let data = encode(dtype, values)?;
    let bad = match dtype {
        Dtype::F32 | Dtype::F64 => values.iter().position(|x| !x.is_finite()),
        _ => decode(dtype, &data).iter().position(|x| !x.is_finite()),
    };
    Some((data, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in [
            Dtype::Bool,
            Dtype::F8E4M3,
            Dtype::BF16,
            Dtype::I64,
            Dtype::F64,
        ] {
            assert_eq!(Dtype::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dtype::parse("F4"), None);
    }

    #[test]
    fn unaligned_f32_is_copied() {
        let mut bytes = vec![0u8];
        bytes.extend(1.5f32.to_le_bytes());
        bytes.extend((-2.0f32).to_le_bytes());
        let mut out = [0f32; 2];
        decode_into(Dtype::F32, &bytes[1..], &mut out);
        assert_eq!(out, [1.5, -2.0]);
    }

    #[test]
    fn fp8_known_values() {
        // 0x38 = 1.0 in E4M3, 0x3c = 1.0 in E5M2, 0x7f = 1.0 in E8M0; E4M3 max is 448.
        assert_eq!(f8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3_to_f32(0x7e), 448.0);
        assert!(f8_e4m3_to_f32(0x7f).is_nan());
        assert_eq!(f8_e5m2_to_f32(0x3c), 1.0);
        assert_eq!(f8_e8m0_to_f32(0x7f), 1.0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        let v = 1.0f32 + 2f32.powi(-8);
        let b = encode(Dtype::BF16, &[v]).unwrap();
        let mut out = [0f32];
        decode_into(Dtype::BF16, &b, &mut out);
        assert_eq!(out[0], 1.0);
    }
}

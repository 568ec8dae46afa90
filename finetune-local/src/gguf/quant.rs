//! ggml's tensor types and their dequantization to f32.
//!
//! Each quantized type stores a tensor as blocks of a fixed number of
//! values (32, or 256 for the K-quants) with one or two f16 scales per block
//! and packed integers. The arithmetic here follows ggml's reference
//! `dequantize_row_*` functions operation for operation, so the result is
//! the same f32 values (checked against the `gguf` Python package's
//! `dequantize` by `tests/gguf.rs`).

use std::fmt;

/// Values per block of the K-quants.
const QK_K: usize = 256;

/// A ggml tensor type, by its number in a GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: an f16 scale and 4-bit values offset by 8.
    Q4_0,
    /// 32 values: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 values: an f16 scale and 8-bit values.
    Q8_0,
    /// 256 values in 8 sub-blocks with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// As Q4_K with a fifth bit per value.
    Q5K,
    /// 256 values in 16 sub-blocks with 8-bit scales, 6-bit values.
    Q6K,
    /// A type this crate does not dequantize (its number in the file).
    Other(u32),
}

impl GgmlType {
    /// The type numbered `id` in ggml's enum.
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// `(values per block, bytes per block)`, or `None` for a type this
    /// crate does not read.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 2 + 16),
            Self::Q4_1 => (32, 2 + 2 + 16),
            Self::Q8_0 => (32, 2 + 32),
            Self::Q4K => (QK_K, 2 + 2 + 12 + QK_K / 2),
            Self::Q5K => (QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),
            Self::Q6K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
            Self::Other(_) => return None,
        })
    }

    /// The bytes `n` values of this type take, or `None` when the type is
    /// not read here or `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (values, bytes) = self.block()?;
        n.is_multiple_of(values as u64).then(|| n / values as u64 * bytes as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::F32 => f.write_str("F32"),
            Self::F16 => f.write_str("F16"),
            Self::BF16 => f.write_str("BF16"),
            Self::Q4_0 => f.write_str("Q4_0"),
            Self::Q4_1 => f.write_str("Q4_1"),
            Self::Q8_0 => f.write_str("Q8_0"),
            Self::Q4K => f.write_str("Q4_K"),
            Self::Q5K => f.write_str("Q5_K"),
            Self::Q6K => f.write_str("Q6_K"),
            Self::Other(id) => write!(f, "ggml type {id}"),
        }
    }
}

/// Dequantizes `bytes`, a whole number of blocks of `ty`, to f32 values
/// appended to `out`. Returns `false` (appending nothing) for a type not
/// read here or a length that is not a whole number of blocks.
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) -> bool {
    let Some((values, block_bytes)) = ty.block() else { return false };
    if !bytes.len().is_multiple_of(block_bytes) {
        return false;
    }
    out.reserve(bytes.len() / block_bytes * values);
    for block in bytes.chunks_exact(block_bytes) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes([block[0], block[1], block[2], block[3]])),
            GgmlType::F16 => out.push(f16_at(block, 0)),
            GgmlType::BF16 => {
                out.push(f32::from_bits(u32::from(u16::from_le_bytes([block[0], block[1]])) << 16))
            }
            GgmlType::Q4_0 => q4_0(block, out),
            GgmlType::Q4_1 => q4_1(block, out),
            GgmlType::Q8_0 => q8_0(block, out),
            GgmlType::Q4K => q4_k(block, out),
            GgmlType::Q5K => q5_k(block, out),
            GgmlType::Q6K => q6_k(block, out),
            GgmlType::Other(_) => return false,
        }
    }
    true
}

/// The IEEE half at `block[at..at + 2]`, widened exactly to f32.
fn f16_at(block: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[at], block[at + 1]]))
}

/// Widens IEEE binary16 bits to f32 (exact: every half is an f32).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    let bits = match (exponent, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise the mantissa.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

fn q4_0(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let qs = &block[2..18];
    out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - 8.0) * d));
    out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - 8.0) * d));
}

fn q4_1(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..20];
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

fn q8_0(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    out.extend(block[2..34].iter().map(|&q| f32::from(q as i8) * d));
}

/// The 6-bit scale and minimum of sub-block `j` from the 12 packed bytes of
/// a Q4_K/Q5_K block (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (f32::from(d), f32::from(m))
}

fn q4_k(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16];
    let qs = &block[16..16 + QK_K / 2];
    for (pair, q) in qs.chunks_exact(32).enumerate() {
        let (sc, m) = scale_min_k4(2 * pair, scales);
        let (d1, m1) = (d * sc, dmin * m);
        let (sc, m) = scale_min_k4(2 * pair + 1, scales);
        let (d2, m2) = (d * sc, dmin * m);
        out.extend(q.iter().map(|&b| d1 * f32::from(b & 0x0f) - m1));
        out.extend(q.iter().map(|&b| d2 * f32::from(b >> 4) - m2));
    }
}

fn q5_k(block: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16];
    let qh = &block[16..16 + QK_K / 8];
    let qs = &block[16 + QK_K / 8..16 + QK_K / 8 + QK_K / 2];
    for (pair, ql) in qs.chunks_exact(32).enumerate() {
        let (u1, u2) = (1u8 << (2 * pair), 2u8 << (2 * pair));
        let (sc, m) = scale_min_k4(2 * pair, scales);
        let (d1, m1) = (d * sc, dmin * m);
        let (sc, m) = scale_min_k4(2 * pair + 1, scales);
        let (d2, m2) = (d * sc, dmin * m);
        let high = |h: u8, bit: u8| if h & bit != 0 { 16.0 } else { 0.0 };
        out.extend(ql.iter().zip(qh).map(|(&l, &h)| d1 * (f32::from(l & 0x0f) + high(h, u1)) - m1));
        out.extend(ql.iter().zip(qh).map(|(&l, &h)| d2 * (f32::from(l >> 4) + high(h, u2)) - m2));
    }
}

fn q6_k(block: &[u8], out: &mut Vec<f32>) {
    let ql_all = &block[..QK_K / 2];
    let qh_all = &block[QK_K / 2..QK_K / 2 + QK_K / 4];
    let sc_all = &block[QK_K / 2 + QK_K / 4..QK_K / 2 + QK_K / 4 + QK_K / 16];
    let d = f16_at(block, QK_K / 2 + QK_K / 4 + QK_K / 16);
    for half in 0..2 {
        let ql = &ql_all[64 * half..64 * half + 64];
        let qh = &qh_all[32 * half..32 * half + 32];
        let sc = &sc_all[8 * half..8 * half + 8];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let scale = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = scale(0) * q1 as f32;
            y[l + 32] = scale(2) * q2 as f32;
            y[l + 64] = scale(4) * q3 as f32;
            y[l + 96] = scale(6) * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_widen_exactly() {
        for (bits, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x0400, 6.103_515_6e-5),
            (0x8000, -0.0),
        ] {
            assert_eq!(f16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    #[test]
    fn a_q8_0_block_scales_its_integers() {
        let mut block = vec![0u8; 34];
        block[..2].copy_from_slice(&0x3800u16.to_le_bytes()); // 0.5
        block[2] = 4;
        block[3] = (-6i8) as u8;
        let mut out = Vec::new();
        assert!(dequantize_into(GgmlType::Q8_0, &block, &mut out));
        assert_eq!(&out[..3], &[2.0, -3.0, 0.0]);
        assert_eq!(out.len(), 32);
        assert!(!dequantize_into(GgmlType::Q8_0, &block[..33], &mut out));
        assert!(!dequantize_into(GgmlType::Other(20), &block, &mut out));
    }
}

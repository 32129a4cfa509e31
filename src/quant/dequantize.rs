//! The CPU dequantizer: `e2m1(code) * (e4m3(scale) * global_scale)`, the scale product rounded to f32
//! first, then one rounding to the output type (ModelOpt, TensorRT-LLM's CPU reference, FlashInfer).

use rayon::prelude::*;

use super::{BLOCK, Nvfp4Tensor};
use crate::error::{Error, Result};
use crate::format::{Element, e2m1, e4m3};

/// Dequantizes to a new row-major `[rows, cols]` buffer (padding columns dropped).
///
/// ```
/// use nvfp4::quant::{quantize, dequantize, QuantizeOptions};
/// let w = [6.0f32; 16];
/// let q = quantize("w", &w, 1, 16, &QuantizeOptions::default()).unwrap();
/// assert_eq!(dequantize::<f32>(&q), w);
/// ```
pub fn dequantize<T: Element>(t: &Nvfp4Tensor) -> Vec<T> {
    let mut out = vec![T::from_f32(0.0); t.rows * t.cols];
    fill(t, &mut out);
    out
}

/// Dequantizes into `out`, which must hold exactly `rows * cols` elements.
pub fn dequantize_into<T: Element>(t: &Nvfp4Tensor, out: &mut [T]) -> Result<()> {
    if out.len() != t.rows * t.cols {
        return Err(Error::length(
            "dequantize output",
            &t.shape(),
            t.rows * t.cols,
            out.len(),
        ));
    }
    fill(t, out);
    Ok(())
}

fn fill<T: Element>(t: &Nvfp4Tensor, out: &mut [T]) {
    if t.cols == 0 {
        return;
    }
    // Every output is T(e2m1[code] * f32(e4m3[scale] * S2)): one of 256 x 16 values. Tabulating them
    // once turns the element loop into a lookup; each entry is computed exactly as the formula says.
    let s2 = t.global_scale;
    let table: Vec<[T; 16]> = (0..=255u8)
        .map(|sf| {
            let scale = e4m3::decode_f32(sf) * s2;
            std::array::from_fn(|c| T::from_f32(e2m1::decode_f32(c as u8) * scale))
        })
        .collect();
    let bc = t.block_cols();
    out.par_chunks_mut(t.cols)
        .zip(t.codes.par_chunks(t.cols_padded / 2))
        .enumerate()
        .for_each(|(r, (o, c))| {
            for (b, (o, c)) in o.chunks_mut(BLOCK).zip(c.chunks_exact(BLOCK / 2)).enumerate() {
                let row = &table[t.scales[t.scale_layout.offset(r, b, bc)] as usize];
                for (pair, &byte) in o.chunks_mut(2).zip(c) {
                    pair[0] = row[(byte & 0xF) as usize];
                    if let Some(hi) = pair.get_mut(1) {
                        *hi = row[(byte >> 4) as usize];
                    }
                }
            }
        });
}

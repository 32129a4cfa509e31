//! Where the block scale of (row `r`, block-column `c`) lives in memory.
//!
//! Two layouts exist in the wild: linear `[rows, K/16]` (ModelOpt/HF checkpoints) and the 128x4
//! swizzled layout the tensor cores read (cuBLASLt `VEC16_UE4M3`, CUTLASS sm100/sm120, ComfyUI files).
//! The index functions here are the only place the swizzle is written down; kernels, the MMA model and
//! the converters all call them (nvfp4-format.md §0.6).

use crate::error::{Error, Result};

/// A block-scale memory layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ScaleLayout {
    /// Row-major `[rows, block_cols]`, no padding.
    #[default]
    Linear,
    /// Rows padded to 128, block-columns to 4, tiles of 128x4 scales stored as 512 bytes with the
    /// K-tile index fastest; padding bytes are 0x00.
    Swizzled128x4,
}

/// Rows of one swizzle tile.
pub const TILE_ROWS: usize = 128;
/// Block-columns of one swizzle tile.
pub const TILE_COLS: usize = 4;

impl ScaleLayout {
    /// Bytes the layout needs for `rows` x `block_cols` scales (padding included).
    pub const fn len(self, rows: usize, block_cols: usize) -> usize {
        match self {
            ScaleLayout::Linear => rows * block_cols,
            ScaleLayout::Swizzled128x4 => padded_rows(rows) * padded_cols(block_cols),
        }
    }

    /// Byte offset of the scale of (row `r`, block-column `c`).
    #[inline]
    pub const fn offset(self, r: usize, c: usize, block_cols: usize) -> usize {
        match self {
            ScaleLayout::Linear => r * block_cols + c,
            ScaleLayout::Swizzled128x4 => swizzled_offset(r, c, block_cols),
        }
    }
}

/// Rows padded to a whole number of 128-row tiles.
#[inline]
pub const fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(TILE_ROWS) * TILE_ROWS
}

/// Block-columns padded to a whole number of 4-column tiles.
#[inline]
pub const fn padded_cols(block_cols: usize) -> usize {
    block_cols.div_ceil(TILE_COLS) * TILE_COLS
}

/// Offset of (r, c) in the 128x4 swizzled layout of a matrix with `block_cols` block-columns.
///
/// A 128x4 tile is 512 bytes viewed as `[32][4 row-groups][4 columns]`: row `r` of the tile sits in
/// 16-byte line `r % 32`, at 4-byte slot `r / 32`, so the four scales one tensor-core thread needs for
/// rows r, r+32, r+64, r+96 are adjacent.
#[inline]
pub const fn swizzled_offset(r: usize, c: usize, block_cols: usize) -> usize {
    let k_tiles = padded_cols(block_cols) / TILE_COLS;
    (r / TILE_ROWS) * k_tiles * 512
        + (c / TILE_COLS) * 512
        + (r % 32) * 16
        + ((r % TILE_ROWS) / 32) * 4
        + c % 4
}

fn check_len(what: &str, got: usize, expected: usize, rows: usize, block_cols: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::length(what, &[rows, block_cols], expected, got))
    }
}

/// Converts scales from `from` to `to` layout. Padding bytes of a swizzled result are 0x00; padding
/// bytes of a swizzled source are ignored.
pub fn convert(
    src: &[u8],
    rows: usize,
    block_cols: usize,
    from: ScaleLayout,
    to: ScaleLayout,
) -> Result<Vec<u8>> {
    check_len("scales", src.len(), from.len(rows, block_cols), rows, block_cols)?;
    if from == to {
        return Ok(src.to_vec());
    }
    let mut dst = vec![0u8; to.len(rows, block_cols)];
    for r in 0..rows {
        for c in 0..block_cols {
            dst[to.offset(r, c, block_cols)] = src[from.offset(r, c, block_cols)];
        }
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_offsets_of_the_reference() {
        // nvfp4-format.md §0.6: R = 300, K/16 = 10.
        let l = ScaleLayout::Swizzled128x4;
        assert_eq!(l.len(300, 10), 4608);
        let cases = [
            ((0, 0), 0),
            ((1, 0), 16),
            ((31, 0), 496),
            ((32, 0), 4),
            ((127, 0), 508),
            ((0, 1), 1),
            ((0, 4), 512),
            ((128, 0), 1536),
            ((5, 6), 594),
            ((299, 9), 4277),
        ];
        for ((r, c), off) in cases {
            assert_eq!(l.offset(r, c, 10), off, "({r},{c})");
        }
    }
}

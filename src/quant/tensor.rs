//! [`Nvfp4Tensor`]: packed codes, block scales and the global scale of one 2-D tensor.

use super::BLOCK;
use crate::error::{Error, Result, element_count};
use crate::format::{ScaleLayout, e4m3};

/// One NVFP4 tensor of shape `[rows, cols]` (a weight `[N, K]` or an activation `[M, K]`), quantized
/// along `cols`.
///
/// - `codes`: `[rows, cols_padded / 2]` bytes, element `2i` in the low nibble.
/// - `scales`: one E4M3 byte per 16 elements of a row, in [`Nvfp4Tensor::scale_layout`].
/// - `global_scale`: f32 in the decode convention (`amax / 2688`, ModelOpt's `weight_scale_2`), so
///   an element is `e2m1(code) * (e4m3(scale) * global_scale)`.
///
/// `cols_padded` is `cols` rounded up to 16; it differs from `cols` only when the tensor was quantized
/// with zero padding of K.
#[derive(Clone, Debug, PartialEq)]
pub struct Nvfp4Tensor {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) cols_padded: usize,
    pub(crate) codes: Vec<u8>,
    pub(crate) scales: Vec<u8>,
    pub(crate) scale_layout: ScaleLayout,
    pub(crate) global_scale: f32,
}

impl Nvfp4Tensor {
    /// Builds a tensor from raw parts, as a checkpoint holds them, validating every length and value.
    ///
    /// `cols` must be a multiple of 16; `codes` must hold `rows * cols / 2` bytes, `scales` the size of
    /// `scale_layout` for `rows x cols/16`; `global_scale` must be finite and non-negative; no scale byte
    /// may be NaN (0x7F/0xFF), since that would silently decode to NaN.
    ///
    /// ```
    /// use nvfp4::{Nvfp4Tensor, format::ScaleLayout};
    /// let t = Nvfp4Tensor::from_parts("w", 1, 16, vec![0x21; 8], vec![0x38], ScaleLayout::Linear, 0.5)
    ///     .unwrap();
    /// assert_eq!(t.shape(), [1, 16]);
    /// ```
    pub fn from_parts(
        name: &str,
        rows: usize,
        cols: usize,
        codes: Vec<u8>,
        scales: Vec<u8>,
        scale_layout: ScaleLayout,
        global_scale: f32,
    ) -> Result<Self> {
        let shape = [rows, cols];
        element_count(name, &shape)?;
        if cols % BLOCK != 0 {
            return Err(Error::shape(
                name,
                &shape,
                "the last dimension (K) must be a multiple of 16",
            ));
        }
        let t = Nvfp4Tensor {
            rows,
            cols,
            cols_padded: cols,
            codes,
            scales,
            scale_layout,
            global_scale,
        };
        t.validate(name)?;
        Ok(t)
    }

    pub(crate) fn validate(&self, name: &str) -> Result<()> {
        let shape = [self.rows, self.cols];
        let code_bytes = self.rows * (self.cols_padded / 2);
        if self.codes.len() != code_bytes {
            return Err(Error::length(
                &format!("{name}.codes"),
                &shape,
                code_bytes,
                self.codes.len(),
            ));
        }
        let scale_bytes = self.scale_layout.len(self.rows, self.block_cols());
        if self.scales.len() != scale_bytes {
            return Err(Error::length(
                &format!("{name}.scales"),
                &shape,
                scale_bytes,
                self.scales.len(),
            ));
        }
        if !self.global_scale.is_finite() || self.global_scale.is_sign_negative() {
            return Err(Error::invalid(
                name,
                format!(
                    "global scale {} must be finite and non-negative",
                    self.global_scale
                ),
            ));
        }
        if let Some(i) = self.scales.iter().position(|&b| e4m3::decode_f32(b).is_nan()) {
            return Err(Error::invalid(
                name,
                format!("scale byte {i} is 0x{:02X} (E4M3 NaN)", self.scales[i]),
            ));
        }
        Ok(())
    }

    /// `[rows, cols]`, the logical shape.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Rows (N of a weight, M of an activation).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Logical columns (K).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Columns as stored: `cols` rounded up to 16.
    pub fn cols_padded(&self) -> usize {
        self.cols_padded
    }

    /// Block scales per row: `cols_padded / 16`.
    pub fn block_cols(&self) -> usize {
        self.cols_padded / BLOCK
    }

    /// Packed E2M1 codes, `[rows, cols_padded / 2]`, element `2i` in the low nibble.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// E4M3 block scales in [`Self::scale_layout`].
    pub fn scales(&self) -> &[u8] {
        &self.scales
    }

    /// Layout of [`Self::scales`].
    pub fn scale_layout(&self) -> ScaleLayout {
        self.scale_layout
    }

    /// The f32 global scale, decode convention (`amax / 2688`).
    pub fn global_scale(&self) -> f32 {
        self.global_scale
    }

    /// The scale byte of (row, block-column), whatever the layout.
    pub fn scale_at(&self, row: usize, block_col: usize) -> u8 {
        self.scales[self.scale_layout.offset(row, block_col, self.block_cols())]
    }

    /// The same tensor with its scales in `layout` (a copy of the scales; codes are moved).
    ///
    /// ```
    /// use nvfp4::{quant::{quantize, QuantizeOptions}, format::ScaleLayout};
    /// let q = quantize("w", &[1.0f32; 32], 1, 32, &QuantizeOptions::default()).unwrap();
    /// let s = q.clone().with_scale_layout(ScaleLayout::Swizzled128x4).unwrap();
    /// assert_eq!(s.scales().len(), 128 * 4);
    /// assert_eq!(s.with_scale_layout(ScaleLayout::Linear).unwrap(), q);
    /// ```
    pub fn with_scale_layout(mut self, layout: ScaleLayout) -> Result<Self> {
        self.scales = crate::format::scale_layout::convert(
            &self.scales,
            self.rows,
            self.block_cols(),
            self.scale_layout,
            layout,
        )?;
        self.scale_layout = layout;
        Ok(self)
    }

    /// The codes, the scales (in [`Nvfp4Tensor::scale_layout`]) and the global scale, moved out
    /// without a copy (for writers that hand the buffers on).
    ///
    /// ```
    /// use nvfp4::quant::{quantize, QuantizeOptions};
    /// let q = quantize("w", &[1.0f32; 32], 1, 32, &QuantizeOptions::default()).unwrap();
    /// let (codes, scales, s2) = q.into_parts();
    /// assert_eq!((codes.len(), scales.len(), s2), (16, 2, 1.0 / 2688.0));
    /// ```
    pub fn into_parts(self) -> (Vec<u8>, Vec<u8>, f32) {
        (self.codes, self.scales, self.global_scale)
    }

    /// Bytes of codes plus scales plus the global scale: what the tensor costs in memory.
    pub fn size_bytes(&self) -> usize {
        self.codes.len() + self.scales.len() + 4
    }
}

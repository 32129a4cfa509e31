//! A model as the offload layer sees it: blocks of named tensors in host memory, and the byte layout
//! a tensor has in a staging buffer and in a device slot (the same layout, so one copy moves it).

use half::bf16;

use crate::cuda::TensorId;
use crate::error::{Error, Result};
use crate::format::ScaleLayout;
use crate::quant::Nvfp4Tensor;

/// Alignment of every part of a tensor inside a slot: 256 bytes, what `cudaMalloc` guarantees, so a
/// part read through a view is as aligned as a buffer of its own (16-byte vector loads, f32 scale).
pub const PART_ALIGN: usize = 256;

/// The weights of one tensor.
#[derive(Clone, Debug)]
pub enum Weight {
    /// NVFP4: codes, block scales and the global scale.
    Nvfp4(Nvfp4Tensor),
    /// bf16 `[rows, cols]`, row-major.
    Bf16 {
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
        /// `rows * cols` values.
        data: Vec<bf16>,
    },
    /// Opaque bytes (biases, norms, anything the engine reads itself).
    Bytes(Vec<u8>),
}

impl Weight {
    /// The parts as host byte slices, in slot order.
    pub(crate) fn parts(&self) -> Vec<&[u8]> {
        match self {
            Weight::Nvfp4(t) => vec![t.codes(), t.scales(), bytemuck::bytes_of(&t.global_scale)],
            Weight::Bf16 { data, .. } => vec![bytemuck::cast_slice(data)],
            Weight::Bytes(b) => vec![b],
        }
    }
}

/// One named tensor of a block, with the caller's id (the [`crate::cuda::PinnedPool`] key).
#[derive(Clone, Debug)]
pub struct HostTensor {
    /// Unique over the model: the pool keys staged bytes by it.
    pub id: TensorId,
    /// For error messages and lookups (`DeviceBlock::get`).
    pub name: String,
    /// The weights.
    pub weight: Weight,
}

impl HostTensor {
    /// A tensor; checks a bf16 weight's length against its shape.
    pub fn new(id: TensorId, name: impl Into<String>, weight: Weight) -> Result<Self> {
        let name = name.into();
        if let Weight::Bf16 { rows, cols, data } = &weight {
            let n = rows.checked_mul(*cols).ok_or_else(|| Error::ShapeOverflow {
                name: name.clone(),
                shape: vec![*rows, *cols],
            })?;
            if n != data.len() {
                return Err(Error::length(&name, &[*rows, *cols], n, data.len()));
            }
        }
        Ok(HostTensor { id, name, weight })
    }
}

/// One transformer block (or any unit the engine computes at once): its tensors.
#[derive(Clone, Debug, Default)]
pub struct HostBlock {
    /// The tensors, in the order `DeviceBlock::tensor(j)` returns them.
    pub tensors: Vec<HostTensor>,
}

impl HostBlock {
    /// The bytes the block has on the device (every part at a multiple of [`PART_ALIGN`], zero
    /// padding): what `DeviceBlock::bytes` holds, for checksums.
    ///
    /// ```
    /// use nvfp4::offload::{HostBlock, HostTensor, Weight};
    /// let b = HostBlock { tensors: vec![HostTensor::new(1, "bias", Weight::Bytes(vec![7; 3]))?] };
    /// let image = b.device_image()?;
    /// assert_eq!(image.len(), 256);
    /// assert_eq!(&image[..4], &[7, 7, 7, 0]);
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn device_image(&self) -> Result<Vec<u8>> {
        let (layouts, total) = layout_block(self)?;
        let mut out = vec![0u8; total];
        for (t, l) in self.tensors.iter().zip(&layouts) {
            write_staged(t, l, &mut out[l.offset..l.offset + l.len]);
        }
        Ok(out)
    }

    /// Bytes of the block on the device.
    pub fn device_bytes(&self) -> Result<usize> {
        Ok(layout_block(self)?.1)
    }
}

/// Where a tensor's parts lie inside its block's bytes.
#[derive(Clone, Debug)]
pub(crate) struct TensorLayout {
    /// Offset of the tensor in the block (of its first part).
    pub offset: usize,
    /// Bytes from `offset` to the next tensor (the copy's length, padding included).
    pub len: usize,
    /// (offset from `offset`, length) of each part.
    pub parts: Vec<(usize, usize)>,
}

/// Lays out a block: every part at a multiple of [`PART_ALIGN`]. Returns the layouts and the block's
/// total bytes.
pub(crate) fn layout_block(block: &HostBlock) -> Result<(Vec<TensorLayout>, usize)> {
    let mut at = 0usize;
    let mut out = Vec::with_capacity(block.tensors.len());
    let overflow = |name: &str| Error::ShapeOverflow {
        name: name.to_string(),
        shape: vec![],
    };
    for t in &block.tensors {
        let start = at;
        let mut parts = Vec::new();
        let mut end = at;
        for p in t.weight.parts() {
            let off = end
                .checked_next_multiple_of(PART_ALIGN)
                .ok_or_else(|| overflow(&t.name))?;
            parts.push((off - start, p.len()));
            end = off.checked_add(p.len()).ok_or_else(|| overflow(&t.name))?;
        }
        // The copy covers the padding to the next tensor too, so every byte of a block's range in a
        // slot is written by its own upload (no stale bytes of the slot's previous block remain).
        at = end
            .checked_next_multiple_of(PART_ALIGN)
            .ok_or_else(|| overflow(&t.name))?;
        out.push(TensorLayout {
            offset: start,
            len: at - start,
            parts,
        });
    }
    Ok((out, at))
}

/// Writes a tensor's parts into `dst` (its staging buffer, `layout.len` bytes) at their offsets.
pub(crate) fn write_staged(t: &HostTensor, layout: &TensorLayout, dst: &mut [u8]) {
    dst.fill(0);
    for (p, &(off, len)) in t.weight.parts().into_iter().zip(&layout.parts) {
        dst[off..off + len].copy_from_slice(p);
    }
}

/// The scale layout and shape an NVFP4 part set carries, for views.
pub(crate) fn nvfp4_meta(w: &Weight) -> Option<(usize, usize, ScaleLayout)> {
    match w {
        Weight::Nvfp4(t) => Some((t.rows(), t.cols_padded(), t.scale_layout())),
        _ => None,
    }
}

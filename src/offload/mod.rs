//! Weight streaming: the BlockSwap [`LayerPrefetcher`] and the [`ModelOffloader`], built on the
//! [`crate::cuda::PinnedPool`] and [`crate::cuda::StreamSet`].
//!
//! A model bigger than VRAM runs from pinned host memory: a block's upload (copy engine, upload stream)
//! overlaps the previous block's compute (compute stream), ordered by events only. Depends on
//! [`crate::cuda`] and [`crate::ops`]; no FFI and no `unsafe` here.

mod model;
mod offloader;
mod prefetcher;

pub use model::{HostBlock, HostTensor, PART_ALIGN, Weight};
pub use offloader::ModelOffloader;
pub use prefetcher::{DeviceBlock, DeviceTensor, LayerPrefetcher, PassStats, PrefetchConfig};

/// The CPU twin of the checksum kernel ([`crate::cuda::checksum`]): the wrapping sum over `i` of
/// `(data[i] + 1) * ((i + 1) * 0x9E3779B97F4A7C15)`. Position-weighted, so shifted, stale or partly
/// copied bytes change it.
///
/// ```
/// assert_eq!(nvfp4::offload::checksum(&[]), 0);
/// assert_ne!(nvfp4::offload::checksum(&[1, 2]), nvfp4::offload::checksum(&[2, 1]));
/// ```
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().enumerate().fold(0u64, |acc, (i, &b)| {
        acc.wrapping_add((b as u64 + 1).wrapping_mul((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    })
}

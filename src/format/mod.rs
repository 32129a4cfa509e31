//! The NVFP4 number formats as scalar codecs: E2M1 element codes, E4M3/UE4M3 block scales, UE8M0
//! (MXFP4) scales, nibble packing and the block-scale memory layouts.
//!
//! This module owns the bit-level rules only; it knows nothing of tensors, threads or GPUs. Every rule
//! follows `shared/reference/nvfp4-format.md`; where implementations disagree the choice is a named
//! mode (see [`e2m1::ZeroSign`], [`e4m3::Overflow`]).

pub mod dtype;
pub mod e2m1;
pub mod e4m3;
pub mod packing;
pub mod scale_layout;
pub mod ue8m0;

pub use dtype::{Dtype, Element};
pub use e2m1::ZeroSign;
pub use e4m3::Overflow;
pub use packing::NibbleOrder;
pub use scale_layout::ScaleLayout;

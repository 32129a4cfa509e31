//! Weight streaming: the pinned pool's users, the BlockSwap layer prefetcher and the model offloader.
//!
//! Depends on [`crate::cuda`] and [`crate::ops`]; all FFI stays in `cuda`.

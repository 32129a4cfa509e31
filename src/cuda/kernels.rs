//! The kernels embedded at build time: one fatbin per `csrc/*.cu`, every kernel named once here.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub(crate) use generated::{FATBINS, NO_KERNELS_REASON};
pub use generated::{NVCC_VERSION, TARGETS};

/// Every kernel the crate launches. The name is the `extern "C"` symbol; the unit is the `.cu` file
/// (and so the fatbin) that holds it. A GPU test loads every one, so a renamed kernel fails in CI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelId {
    /// Absolute maximum of finite elements and the first non-finite index.
    Amax,
    /// Global scale from the amax, on the device.
    GlobalScale,
    /// NVFP4 quantize (codes and block scales).
    Quantize,
    /// NVFP4 dequantize.
    Dequantize,
    /// Block-scale layout conversion.
    ScaleLayout,
    /// Position-weighted byte checksum (offload tests and benchmarks).
    Checksum,
}

impl KernelId {
    /// Every kernel.
    pub const ALL: [KernelId; 6] = [
        KernelId::Amax,
        KernelId::GlobalScale,
        KernelId::Quantize,
        KernelId::Dequantize,
        KernelId::ScaleLayout,
        KernelId::Checksum,
    ];

    /// The `extern "C"` symbol.
    pub const fn symbol(self) -> &'static str {
        match self {
            KernelId::Amax => "nvfp4_amax",
            KernelId::GlobalScale => "nvfp4_global_scale",
            KernelId::Quantize => "nvfp4_quantize",
            KernelId::Dequantize => "nvfp4_dequantize",
            KernelId::ScaleLayout => "nvfp4_scale_layout",
            KernelId::Checksum => "nvfp4_checksum",
        }
    }

    /// The translation unit (`csrc/<unit>.cu`) that defines it.
    pub const fn unit(self) -> &'static str {
        match self {
            KernelId::Amax
            | KernelId::GlobalScale
            | KernelId::Quantize
            | KernelId::Dequantize
            | KernelId::ScaleLayout => "quantize",
            KernelId::Checksum => "offload",
        }
    }
}

/// (unit, bytes) of every embedded fatbin.
pub fn fatbin_sizes() -> Vec<(&'static str, usize)> {
    FATBINS.iter().map(|(n, b)| (*n, b.len())).collect()
}

//! cuBLAS bf16 GEMM, the baseline `nvfp4 bench gemm` measures the NVFP4 kernels against (feature
//! `cublas`, on with `cli`). cuBLAS is loaded at run time like the driver, so it adds no link-time
//! dependency.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::error::{Error, Result};

/// A cuBLAS handle on one stream computing row-major `C[M, N] = A[M, K] · W[N, K]ᵀ` in bf16 with f32
/// accumulation (cuBLAS's default compute type for bf16).
///
/// ```no_run
/// use nvfp4::cuda::{CublasBf16, Device, alloc_zeros};
/// use half::bf16;
/// let dev = Device::new(0)?;
/// let blas = CublasBf16::new(dev.stream())?;
/// let a = alloc_zeros::<bf16>(dev.stream(), "a", 2 * 32)?;
/// let w = alloc_zeros::<bf16>(dev.stream(), "w", 8 * 32)?;
/// let mut c = alloc_zeros::<bf16>(dev.stream(), "c", 2 * 8)?;
/// blas.gemm(2, 8, 32, &a, &w, &mut c)?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub struct CublasBf16 {
    blas: CudaBlas,
}

impl CublasBf16 {
    /// Creates the handle, bound to `stream`.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let blas = CudaBlas::new(stream.clone()).map_err(|e| Error::Cublas {
            context: "creating a cuBLAS handle".into(),
            message: format!("{e:?}"),
        })?;
        Ok(CublasBf16 { blas })
    }

    /// Enqueues `c = a · wᵀ` (`a` `[m, k]`, `w` `[n, k]`, `c` `[m, n]`, all row-major).
    pub fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        c: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        for (name, shape, len) in [
            ("A", [m, k], a.len()),
            ("W", [n, k], w.len()),
            ("C", [m, n], c.len()),
        ] {
            if shape[0] * shape[1] != len {
                return Err(Error::length(name, &shape, shape[0] * shape[1], len));
            }
        }
        let dims = [m, n, k];
        if dims.iter().any(|&d| d == 0 || d > i32::MAX as usize) {
            return Err(Error::shape(
                "cuBLAS GEMM [M, N, K]",
                &dims,
                "each dimension in 1..=2^31-1",
            ));
        }
        // Column-major view: C^T [n, m] = W [n, k] (stored as k x n, transposed) times A^T [k, m].
        let cfg = GemmConfig {
            transa: sys::cublasOperation_t::CUBLAS_OP_T,
            transb: sys::cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: bf16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: bf16::ZERO,
            ldc: n as i32,
        };
        // SAFETY: the lengths were checked against the shape above, so with these leading dimensions
        // cuBLAS reads exactly A's m*k and W's n*k elements and writes C's m*n.
        unsafe { self.blas.gemm(cfg, w, a, c) }.map_err(|e| Error::Cublas {
            context: format!("bf16 GEMM [{m}, {n}, {k}]"),
            message: format!("{e:?}"),
        })
    }
}

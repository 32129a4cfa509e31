//! cuBLASLt FP8 (E4M3 × E4M3 → bf16, f32 accumulation): the second baseline of `nvfp4 bench gemm`, the
//! fastest dense format an sm_89 / sm_90 GPU multiplies natively. Loaded at run time like cuBLAS; a GPU
//! or library without FP8 GEMM is an error, which the bench reports and skips.
//!
//! cuBLASLt runs FP8 only in the "TN" arrangement (A transposed, B not, in its column-major terms),
//! which is exactly row-major `C[M, N] = A[M, K] · W[N, K]ᵀ` seen column-major: `Cᵀ = W · Aᵀ` with W
//! the transposed operand. Its other requirements (16-byte aligned pointers, leading dimensions
//! multiples of 16 bytes) are what [`CublasFp8::new`] checks K against.

use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::blas::{blas_err, check_lengths};
use super::memory::{alloc_zeros, cuda};
use crate::error::{Error, Result};

/// Whether libcublasLt can be loaded in this process: `Ok`, or why not (probed once, like
/// [`super::cublas_loadable`]).
///
/// ```
/// match nvfp4::cuda::cublaslt_loadable() {
///     Ok(()) => println!("cuBLASLt found"),
///     Err(why) => println!("no cuBLASLt: {why}"),
/// }
/// ```
pub fn cublaslt_loadable() -> std::result::Result<(), String> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to open the library (dlopen of each candidate name) and closes it again.
    let present = *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() });
    if present {
        Ok(())
    } else {
        Err(format!(
            "libcublasLt was not found by the dynamic loader (tried {})",
            cudarc::get_lib_name_candidates("cublasLt").join(", ")
        ))
    }
}

/// One FP8 GEMM shape, set up once (handle, descriptors, the heuristic's algorithm, a workspace) so
/// that each [`CublasFp8::gemm`] only enqueues: `c = alpha · a · wᵀ` with `a` `[m, k]` and `w` `[n, k]`
/// E4M3 bytes, row-major, and `c` `[m, n]` bf16.
///
/// ```no_run
/// use nvfp4::cuda::{CublasFp8, Device, alloc_zeros};
/// use half::bf16;
/// let dev = Device::new(0)?;
/// let s = dev.stream();
/// let (m, n, k) = (2, 16, 32);
/// let fp8 = CublasFp8::new(s, m, n, k)?;
/// let a = alloc_zeros::<u8>(s, "a", m * k)?;
/// let w = alloc_zeros::<u8>(s, "w", n * k)?;
/// let mut c = alloc_zeros::<bf16>(s, "c", m * n)?;
/// fp8.gemm(&a, &w, 1.0, &mut c)?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub struct CublasFp8 {
    dims: [usize; 3],
    handle: sys::cublasLtHandle_t,
    desc: sys::cublasLtMatmulDesc_t,
    /// W, A, C (also D) layouts, in cuBLASLt's column-major terms.
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
}

// SAFETY: the handle and descriptors are only read by cuBLASLt calls made through `&self`, which
// cuBLASLt documents as thread-safe for a handle used with one stream at a time; nothing is shared
// mutably.
unsafe impl Send for CublasFp8 {}

impl CublasFp8 {
    /// Sets up `[m, k] · [n, k]ᵀ` on `stream`. Errors: [`Error::Shape`] for a zero dimension, one past
    /// `i32::MAX`, or K not a multiple of 16 (cuBLASLt's FP8 alignment); [`Error::Cublas`] when
    /// cuBLASLt cannot be loaded or has no FP8 algorithm for this GPU and shape (any GPU below sm_89).
    pub fn new(stream: &Arc<CudaStream>, m: usize, n: usize, k: usize) -> Result<Self> {
        let dims = [m, n, k];
        if dims.iter().any(|&d| d == 0 || d > i32::MAX as usize) || k % 16 != 0 {
            return Err(Error::shape(
                "cuBLASLt FP8 GEMM [M, N, K]",
                &dims,
                "each dimension in 1..=2^31-1 and K a multiple of 16",
            ));
        }
        cublaslt_loadable().map_err(|message| Error::Cublas {
            context: "loading cuBLASLt".into(),
            message,
        })?;
        let what = format!("FP8 GEMM [{m}, {n}, {k}]");
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda(format!("{what}: binding the context")))?;
        let workspace = alloc_zeros::<u8>(stream, "cuBLASLt workspace", 32 << 20)?;
        let handle =
            lt::create_handle().map_err(blas_err::<lt::CublasError>(format!("{what}: creating a handle")))?;
        let mut g = CublasFp8 {
            dims,
            handle,
            desc: std::ptr::null_mut(),
            layouts: [std::ptr::null_mut(); 3],
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            workspace,
            stream: stream.clone(),
        };
        // From here on `g`'s Drop frees whatever was created, on every error path.
        g.desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(blas_err::<lt::CublasError>(format!(
            "{what}: creating the matmul descriptor"
        )))?;
        // cublasLt.h takes cublas_api.h's cublasOperation_t, which cudarc binds in its cuBLAS module.
        let transa = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
        // SAFETY: the descriptor is live; the value is a cublasOperation_t of the size passed.
        unsafe {
            lt::set_matmul_desc_attribute(
                g.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&transa as *const cudarc::cublas::sys::cublasOperation_t).cast(),
                size_of::<cudarc::cublas::sys::cublasOperation_t>(),
            )
        }
        .map_err(blas_err::<lt::CublasError>(format!("{what}: transposing W")))?;
        let (m64, n64, k64) = (m as u64, n as u64, k as u64);
        let e4m3 = sys::cudaDataType_t::CUDA_R_8F_E4M3;
        let specs = [
            (e4m3, k64, n64, k as i64, "W"),
            (e4m3, k64, m64, k as i64, "A"),
            (sys::cudaDataType_t::CUDA_R_16BF, n64, m64, n as i64, "C"),
        ];
        for (i, (ty, rows, cols, ld, name)) in specs.into_iter().enumerate() {
            g.layouts[i] = lt::create_matrix_layout(ty, rows, cols, ld).map_err(
                blas_err::<lt::CublasError>(format!("{what}: the layout of {name}")),
            )?;
        }
        let pref = lt::create_matmul_pref().map_err(blas_err::<lt::CublasError>(format!(
            "{what}: creating preferences"
        )))?;
        let bytes = g.workspace.len();
        // SAFETY: every handle passed is live (created above, `pref` destroyed right after); the
        // workspace size is a usize as the attribute requires.
        let heuristic = unsafe {
            let r = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&bytes as *const usize).cast(),
                size_of::<usize>(),
            )
            .and_then(|()| {
                lt::get_matmul_algo_heuristic(
                    g.handle,
                    g.desc,
                    g.layouts[0],
                    g.layouts[1],
                    g.layouts[2],
                    g.layouts[2],
                    pref,
                )
            });
            let _ = lt::destroy_matmul_pref(pref);
            r
        }
        .map_err(blas_err::<lt::CublasError>(format!(
            "{what}: no cuBLASLt FP8 algorithm (FP8 GEMM needs sm_89 or newer)"
        )))?;
        g.algo = heuristic.algo;
        Ok(g)
    }

    /// Enqueues `c = alpha · a · wᵀ` on the stream given to [`CublasFp8::new`]: `a` holds `[m, k]`
    /// E4M3 bytes, `w` `[n, k]`, `c` `[m, n]` bf16 (row-major). [`Error::Length`] when a buffer does
    /// not hold its shape.
    pub fn gemm(
        &self,
        a: &CudaSlice<u8>,
        w: &CudaSlice<u8>,
        alpha: f32,
        c: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        let [m, n, k] = self.dims;
        check_lengths(self.dims, [a.len(), w.len(), c.len()])?;
        let s = &self.stream;
        let beta = 0f32;
        let (pa, _ra) = a.device_ptr(s);
        let (pw, _rw) = w.device_ptr(s);
        let (pc, _rc) = c.device_ptr_mut(s);
        let (pws, _rws) = self.workspace.device_ptr(s);
        // SAFETY: the layouts were built for exactly these shapes and the lengths were checked, so
        // cuBLASLt reads m*k and n*k bytes and writes m*n bf16; alpha and beta are host f32 (the
        // descriptor's scale type, host pointer mode by default); the workspace is the size the
        // heuristic was given, and every buffer is used on the stream the records above track.
        unsafe {
            lt::matmul(
                self.handle,
                self.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                pw as *const c_void,
                self.layouts[0],
                pa as *const c_void,
                self.layouts[1],
                pc as *const c_void,
                self.layouts[2],
                pc as *mut c_void,
                self.layouts[2],
                &self.algo,
                pws as *mut c_void,
                self.workspace.len(),
                s.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(blas_err::<lt::CublasError>(format!("FP8 GEMM [{m}, {n}, {k}]")))
    }
}

impl Drop for CublasFp8 {
    fn drop(&mut self) {
        // SAFETY: each object was created by this value and is destroyed once; null ones (a failed
        // `new`) are skipped. Errors are ignored: nothing can be done about them in a drop.
        unsafe {
            for l in self.layouts {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

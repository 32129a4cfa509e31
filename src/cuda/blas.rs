//! cuBLAS (feature `cublas`, on with `cli`): the bf16 baseline `nvfp4 bench gemm` measures the NVFP4
//! kernels against, and the GEMM of the dequantize + cuBLAS route of `ops::GemmPlan` (`BlasGemm`, with
//! the route's two small kernels, `csrc/gemm_blas.cu`). cuBLAS is loaded at run time like the driver, so
//! it adds no link-time dependency, and a machine without it gets an error or a fallback, never a panic.

use std::sync::{Arc, OnceLock};

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, result as blas_result, sys};
use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use half::bf16;

use super::abi;
use super::device::Device;
use super::kernels::KernelId;
use super::launch::{dtype_code, need};
use super::memory::{alloc_zeros, cuda};
use crate::error::{Error, Result};
use crate::format::{Dtype, Element};

/// Whether libcublas can be loaded in this process: `Ok`, or why not. Probed once; cudarc would panic
/// on the first cuBLAS call without the library, and this is what lets callers avoid that call.
///
/// ```
/// match nvfp4::cuda::cublas_loadable() {
///     Ok(()) => println!("cuBLAS found"),
///     Err(why) => println!("no cuBLAS: {why}"),
/// }
/// ```
pub fn cublas_loadable() -> std::result::Result<(), String> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to open the library (dlopen of each candidate name) and closes it again; no
    // symbol of it is called.
    let present = *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() });
    if present {
        Ok(())
    } else {
        let names = cudarc::get_lib_name_candidates("cublas");
        Err(format!(
            "libcublas was not found by the dynamic loader ({} names tried, such as {})",
            names.len(),
            names.iter().rev().take(3).cloned().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Maps a cuBLAS or cuBLASLt status (two types in cudarc) to [`Error::Cublas`] with `context`.
pub(super) fn blas_err<E: std::fmt::Debug>(context: impl Into<String>) -> impl FnOnce(E) -> Error {
    let context = context.into();
    move |e| Error::Cublas {
        context,
        message: format!("{e:?}"),
    }
}

/// cuBLAS takes each GEMM dimension as an `i32`, and an empty product is the caller's to skip.
fn check_dims(m: usize, n: usize, k: usize) -> Result<()> {
    let dims = [m, n, k];
    if dims.iter().any(|&d| d == 0 || d > i32::MAX as usize) {
        return Err(Error::shape(
            "cuBLAS GEMM [M, N, K]",
            &dims,
            "each dimension in 1..=2^31-1",
        ));
    }
    Ok(())
}

/// [`Error::Length`] unless A, W and C hold `[m, k]`, `[n, k]` and `[m, n]` elements (`lens` in that order).
pub(super) fn check_lengths([m, n, k]: [usize; 3], lens: [usize; 3]) -> Result<()> {
    for ((name, shape), len) in [("A", [m, k]), ("W", [n, k]), ("C", [m, n])]
        .into_iter()
        .zip(lens)
    {
        if shape[0] * shape[1] != len {
            return Err(Error::length(name, &shape, shape[0] * shape[1], len));
        }
    }
    Ok(())
}

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
    /// Creates the handle, bound to `stream`; [`Error::Cublas`] when libcublas cannot be loaded.
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        cublas_loadable().map_err(|message| Error::Cublas {
            context: "loading cuBLAS".into(),
            message,
        })?;
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
        check_lengths([m, n, k], [a.len(), w.len(), c.len()])?;
        check_dims(m, n, k)?;
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

/// The cuBLAS workspace [`BlasGemm`] gives its handle: NVIDIA's recommendation (cuBLAS docs,
/// `cublasSetWorkspace`), 32 MiB on Hopper and newer, 4 MiB before.
pub(crate) fn blas_workspace_bytes(cc: (u32, u32)) -> usize {
    if cc.0 >= 9 { 32 << 20 } else { 4 << 20 }
}

/// A cuBLAS handle for the dequantize + cuBLAS GEMM route: alpha and beta read from device memory (so a
/// device-side global scale needs no host round trip), no reduced-precision split-K reductions (every
/// partial sum stays f32, as in the mma.sync kernels), and its own workspace (so cuBLAS allocates
/// nothing while a launch is being captured into a CUDA graph).
///
pub(crate) struct BlasGemm {
    // Declared (so dropped) before the workspace the handle points at.
    blas: CudaBlas,
    workspace: CudaSlice<u8>,
    /// The stream the handle is bound to.
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for BlasGemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlasGemm")
            .field("workspace_bytes", &self.workspace.len())
            .finish_non_exhaustive()
    }
}

impl BlasGemm {
    /// Loads cuBLAS, creates a handle on `stream` and gives it a workspace of
    /// [`blas_workspace_bytes`]; [`Error::Cublas`] when cuBLAS cannot be loaded or set up.
    pub(crate) fn new(dev: &Device, stream: &Arc<CudaStream>) -> Result<Self> {
        dev.check_stream(stream)?;
        cublas_loadable().map_err(|message| Error::Cublas {
            context: "loading cuBLAS".into(),
            message,
        })?;
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("creating a cuBLAS handle"))?;
        blas.set_pointer_mode(sys::cublasPointerMode_t::CUBLAS_POINTER_MODE_DEVICE)
            .map_err(blas_err("setting device pointer mode"))?;
        // SAFETY: the handle is live (owned by `blas`); the mode is one of the enum's values.
        unsafe {
            sys::cublasSetMathMode(
                *blas.handle(),
                sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
            )
        }
        .result()
        .map_err(blas_err("disallowing reduced-precision reductions"))?;
        let bytes = blas_workspace_bytes(dev.info().compute_capability);
        let workspace = alloc_zeros::<u8>(stream, "cuBLAS workspace", bytes)?;
        let mut g = BlasGemm {
            blas,
            workspace,
            stream: stream.clone(),
        };
        g.attach_workspace(stream)?;
        Ok(g)
    }

    /// Bytes of the handle's workspace.
    pub(crate) fn workspace_bytes(&self) -> usize {
        self.workspace.len()
    }

    /// Points the handle at its workspace; needed after every stream change, which resets it to
    /// cuBLAS's own pool.
    fn attach_workspace(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let len = self.workspace.len();
        let (p, _g) = self.workspace.device_ptr_mut(stream);
        // SAFETY: `p` is this handle's own live allocation of `len` bytes (cudaMalloc'ed, so 256-byte
        // aligned as cuBLAS requires); it outlives the handle because both are fields of `self` and the
        // handle is dropped first (field order).
        unsafe { sys::cublasSetWorkspace_v2(*self.blas.handle(), p as *mut _, len) }
            .result()
            .map_err(blas_err("setting the cuBLAS workspace"))
    }

    /// Enqueues row-major `c[m, n] = alpha · a[m, k] · w[n, k]ᵀ + beta · c` on `stream` with f32
    /// accumulation (`CUBLAS_COMPUTE_32F`), alpha and beta single f32s in device memory. `a` and `w` are
    /// both bf16 or both f16; `c` has their type or f32 (the pairs cublasGemmEx supports). With a zero
    /// beta, `c` is not read (BLAS semantics). The stream may differ from the last call's (the handle
    /// follows it), but calls sharing the handle must not overlap: they share its workspace.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm<A: Element, W: Element, O: Element>(
        &mut self,
        stream: &Arc<CudaStream>,
        m: usize,
        n: usize,
        k: usize,
        a: &impl DevicePtr<A>,
        w: &impl DevicePtr<W>,
        alpha: &impl DevicePtr<f32>,
        beta: &impl DevicePtr<f32>,
        c: &mut impl DevicePtrMut<O>,
    ) -> Result<()> {
        check_dims(m, n, k)?;
        let type_of = |d: Dtype| match d {
            Dtype::F32 => sys::cudaDataType_t::CUDA_R_32F,
            Dtype::F16 => sys::cudaDataType_t::CUDA_R_16F,
            Dtype::Bf16 => sys::cudaDataType_t::CUDA_R_16BF,
        };
        if A::DTYPE != W::DTYPE || A::DTYPE == Dtype::F32 || !(O::DTYPE == A::DTYPE || O::DTYPE == Dtype::F32)
        {
            return Err(Error::invalid(
                "cuBLAS GEMM",
                format!(
                    "A {:?}, W {:?}, C {:?}: A and W must both be bf16 or both f16, C their type or f32",
                    A::DTYPE,
                    W::DTYPE,
                    O::DTYPE
                ),
            ));
        }
        need("A", &[m, k], m * k, a.len())?;
        need("W", &[n, k], n * k, w.len())?;
        need("C", &[m, n], m * n, c.len())?;
        need("alpha", &[1], 1, alpha.len())?;
        need("beta", &[1], 1, beta.len())?;
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda("binding the context for cuBLAS"))?;
        if self.stream.cu_stream() != stream.cu_stream() {
            // SAFETY: launches through this handle are ordered on one stream at a time (this method
            // takes `&mut self`), and cudarc's events order every buffer touched below on `stream`.
            unsafe { self.blas.set_stream(stream.clone()) }.map_err(blas_err("setting the cuBLAS stream"))?;
            self.stream = stream.clone();
            self.attach_workspace(stream)?;
        }
        let (ap, _ga) = a.device_ptr(stream);
        let (wp, _gw) = w.device_ptr(stream);
        let (alp, _gal) = alpha.device_ptr(stream);
        let (bep, _gbe) = beta.device_ptr(stream);
        let (cp, _gc) = c.device_ptr_mut(stream);
        // cuBLAS writes its workspace on `stream`: ordering it through cudarc's events keeps a launch
        // on another stream from overlapping the last one's use.
        let (_wsp, _gws) = self.workspace.device_ptr_mut(stream);
        // Column-major view: C^T [n, m] = W [n, k] (stored as k x n, transposed) times A^T [k, m].
        // SAFETY: every length was checked against the shape above, so with these leading dimensions
        // cuBLAS reads exactly A's m*k and W's n*k elements and writes C's m*n; alpha and beta are one
        // live f32 each in device memory, which the handle's device pointer mode (set in `new`) expects;
        // the types are a pair cublasGemmEx supports for CUBLAS_COMPUTE_32F (checked above).
        unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                alp as *const _,
                wp as *const _,
                type_of(W::DTYPE),
                k as i32,
                ap as *const _,
                type_of(A::DTYPE),
                k as i32,
                bep as *const _,
                cp as *mut _,
                type_of(O::DTYPE),
                n as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err(format!(
            "cublasGemmEx [{m}, {n}, {k}] {:?} x {:?} -> {:?}",
            A::DTYPE,
            W::DTYPE,
            O::DTYPE
        )))
    }
}

/// Largest grid dimensions the driver accepts (x, and y/z).
const MAX_GRID_X: usize = (1 << 31) - 1;
const MAX_GRID_Y: usize = 65535;
/// Threads per block of both kernels of csrc/gemm_blas.cu.
const THREADS: u32 = 256;

fn launch_one<P: DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    k: KernelId,
    grid: (u32, u32, u32),
    block: u32,
    params: &P,
) -> Result<()> {
    dev.check_stream(stream)?;
    let f = dev.function(k)?;
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(f);
    b.arg(params);
    // SAFETY: `params` is the kernel's single by-value parameter (its struct in csrc/nvfp4.h; the bindgen
    // test holds the layouts equal); the callers checked every pointer's buffer length against the
    // shape in the struct, and both kernels stride over their work, so any grid within the driver's
    // limits stays in bounds.
    unsafe { b.launch(cfg) }.map_err(cuda(format!("launching `{}`", k.symbol())))?;
    Ok(())
}

/// Enqueues `alpha[0] = a_global_scale[0] · w_global_scale[0]` (one f32 rounding) on the device: the
/// W4A4 alpha of the dequantize + cuBLAS route, the same product the mma.sync kernels form.
pub(crate) fn blas_alpha(
    dev: &Device,
    stream: &Arc<CudaStream>,
    a_global_scale: &impl DevicePtr<f32>,
    w_global_scale: &impl DevicePtr<f32>,
    alpha: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    need("a_global_scale", &[1], 1, a_global_scale.len())?;
    need("w_global_scale", &[1], 1, w_global_scale.len())?;
    need("alpha", &[1], 1, alpha.len())?;
    let (ap, _ga) = a_global_scale.device_ptr(stream);
    let (wp, _gw) = w_global_scale.device_ptr(stream);
    let (op, _go) = alpha.device_ptr_mut(stream);
    let p = abi::nvfp4_blas_alpha_params {
        a_global_scale: ap as *const f32,
        w_global_scale: wp as *const f32,
        alpha: op as *mut f32,
    };
    launch_one(dev, stream, KernelId::BlasAlpha, (1, 1, 1), 32, &p)
}

/// Enqueues `out[r, c] = narrow(src[r, c] + bias[c])` over `rows x n` (no add without a bias): the
/// mma.sync kernels' epilogue after cuBLAS's `alpha · acc`, each step one f32 rounding, then one
/// round-to-nearest-even to `O`. `src: None` reads `out` itself, which must then be f32 (in place).
pub(crate) fn blas_epilogue<O: Element + DeviceRepr>(
    dev: &Device,
    stream: &Arc<CudaStream>,
    rows: usize,
    n: usize,
    src: Option<&CudaView<'_, f32>>,
    bias: Option<&CudaSlice<O>>,
    out: &mut impl DevicePtrMut<O>,
) -> Result<()> {
    let shape = [rows, n];
    need("out", &shape, rows * n, out.len())?;
    if let Some(s) = src {
        need("f32 GEMM result", &shape, rows * n, s.len())?;
    } else if O::DTYPE != Dtype::F32 {
        return Err(Error::invalid(
            "out",
            format!("an in-place epilogue needs an f32 output, not {:?}", O::DTYPE),
        ));
    }
    if let Some(b) = bias {
        need("bias", &[n], n, b.len())?;
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let (bp, _gb) = match bias {
        Some(b) => {
            let (p, g) = b.device_ptr(stream);
            (p, Some(g))
        }
        None => (0, None),
    };
    let (sp, _gs) = match src {
        Some(s) => {
            let (p, g) = s.device_ptr(stream);
            (Some(p), Some(g))
        }
        None => (None, None),
    };
    let (op, _go) = out.device_ptr_mut(stream);
    let p = abi::nvfp4_blas_epilogue_params {
        src: sp.unwrap_or(op) as *const f32,
        bias: bp as *const _,
        out: op as *mut _,
        rows: rows as u64,
        n: n as u64,
        out_dtype: dtype_code(O::DTYPE),
        bias_dtype: dtype_code(O::DTYPE),
    };
    let gx = n.div_ceil(THREADS as usize).clamp(1, MAX_GRID_X) as u32;
    let gy = rows.clamp(1, MAX_GRID_Y) as u32;
    launch_one(dev, stream, KernelId::BlasEpilogue, (gx, gy, 1), THREADS, &p)
}

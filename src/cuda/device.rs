//! [`Device`]: one GPU, its context, and the crate's kernels loaded into it.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, sys};
use cudarc::nvrtc::Ptx;

use super::kernels::{FATBINS, KernelId, NO_KERNELS_REASON};
use super::memory::cuda;
use crate::error::{Error, Result};

/// What a device is, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Ordinal.
    pub ordinal: usize,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0).
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Device memory in bytes.
    pub total_memory: usize,
    /// Driver version as `cuDriverGetVersion` gives it (e.g. 13000 for 13.0).
    pub driver_version: u32,
}

impl DeviceInfo {
    /// "sm_90" style name of the architecture.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.compute_capability.0, self.compute_capability.1)
    }
}

/// One GPU: its cudarc context, a default stream, and every kernel of the embedded fatbins.
///
/// The crate never creates hidden contexts: an engine that has a `CudaContext` passes it to
/// [`Device::from_context`]; ops take the caller's `Arc<CudaStream>`.
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    functions: Result<HashMap<KernelId, CudaFunction>, String>,
    _modules: Vec<Arc<CudaModule>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The oldest architecture the kernels are built for.
const MIN_CC: (u32, u32) = (8, 0);

impl Device {
    /// Opens device `ordinal`. Without a driver or a GPU this is [`Error::NoDevice`], never a panic.
    ///
    /// ```no_run
    /// let dev = nvfp4::cuda::Device::new(0)?;
    /// println!("{} ({})", dev.info().name, dev.info().arch());
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only checks whether the driver library can be loaded; cudarc would panic on first
        // use otherwise, and this turns that into an error.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::NoDevice(
                "the CUDA driver library (libcuda.so) was not found".into(),
            ));
        }
        let count =
            CudaContext::device_count().map_err(|e| Error::NoDevice(format!("cuInit failed: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDevice(format!(
                "device {ordinal} requested, {count} present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::NoDevice(format!("device {ordinal}: {e}")))?;
        Self::from_context(ctx)
    }

    /// Wraps an existing cudarc context (an engine's own) and loads the kernels into it.
    pub fn from_context(ctx: Arc<CudaContext>) -> Result<Self> {
        let attr = |a| {
            ctx.attribute(a)
                .map(|v| v as u32)
                .map_err(cuda("reading a device attribute"))
        };
        use sys::CUdevice_attribute as A;
        let mut driver_version = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(cuda("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            ordinal: ctx.ordinal(),
            name: ctx.name().map_err(cuda("reading the device name"))?,
            compute_capability: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            total_memory: ctx.total_mem().map_err(cuda("reading the memory size"))?,
            driver_version: driver_version as u32,
        };
        let stream = ctx.default_stream();
        let mut modules = Vec::new();
        let functions = Self::load(&ctx, &info, &mut modules)?;
        Ok(Device {
            ctx,
            stream,
            info,
            functions,
            _modules: modules,
        })
    }

    /// Loads every fatbin. `Ok(Err(reason))` when this build or this GPU has no kernels: the device
    /// is still usable for memory and copies, and kernel launches report the reason.
    fn load(
        ctx: &Arc<CudaContext>,
        info: &DeviceInfo,
        modules: &mut Vec<Arc<CudaModule>>,
    ) -> Result<Result<HashMap<KernelId, CudaFunction>, String>> {
        if let Some(reason) = NO_KERNELS_REASON {
            return Ok(Err(reason.to_string()));
        }
        if info.compute_capability < MIN_CC {
            return Ok(Err(format!(
                "the nvfp4 kernels need sm_{}{} or newer, found {} ({})",
                MIN_CC.0,
                MIN_CC.1,
                info.arch(),
                info.name
            )));
        }
        let mut by_unit = HashMap::new();
        for (unit, bytes) in FATBINS {
            let module = ctx.load_module(Ptx::from_binary(bytes.to_vec())).map_err(|e| {
                if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_BINARY_FOR_GPU {
                    Error::UnsupportedArch {
                        what: format!("kernel module `{unit}`"),
                        needed: "one of the built targets".into(),
                        found: info.arch(),
                    }
                } else {
                    Error::Cuda {
                        context: format!("loading kernel module `{unit}`"),
                        source: e,
                    }
                }
            })?;
            by_unit.insert(*unit, module.clone());
            modules.push(module);
        }
        let mut functions = HashMap::new();
        for k in KernelId::ALL {
            let module = by_unit
                .get(k.unit())
                .ok_or_else(|| Error::NoKernels(format!("no module `{}`", k.unit())))?;
            let f = module
                .load_function(k.symbol())
                .map_err(cuda(format!("loading kernel `{}`", k.symbol())))?;
            functions.insert(k, f);
        }
        Ok(Ok(functions))
    }

    /// What the device is.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The context's default stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A new non-default stream on this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx.new_stream().map_err(cuda("creating a stream"))
    }

    /// The loaded kernel, or why there is none.
    pub(crate) fn function(&self, k: KernelId) -> Result<&CudaFunction> {
        match &self.functions {
            Ok(f) => f
                .get(&k)
                .ok_or_else(|| Error::NoKernels(format!("kernel `{}` not loaded", k.symbol()))),
            Err(reason) => Err(Error::NoKernels(reason.clone())),
        }
    }

    /// Whether every kernel is loaded (false in a build without nvcc or on a too-old GPU).
    pub fn has_kernels(&self) -> bool {
        self.functions.is_ok()
    }

    /// Checks that `stream` belongs to this device's context.
    pub(crate) fn check_stream(&self, stream: &Arc<CudaStream>) -> Result<()> {
        if Arc::ptr_eq(stream.context(), &self.ctx) {
            Ok(())
        } else {
            Err(Error::invalid(
                "stream",
                "the stream belongs to another CUDA context than the device",
            ))
        }
    }
}

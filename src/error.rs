//! The crate's one error type. Every variant carries what a user needs to act: the tensor's name, its
//! shape, and what was expected.

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A shape does not meet a requirement (for example K not a multiple of 16).
    #[error("tensor `{name}` with shape {shape:?}: {expected}")]
    Shape {
        /// The tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What the shape must satisfy.
        expected: String,
    },
    /// A buffer's length does not match its shape.
    #[error("tensor `{name}` with shape {shape:?} needs {expected} elements, got {actual}")]
    Length {
        /// The tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Elements (or bytes, for packed data) the shape needs.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// The product of a shape does not fit in `usize`.
    #[error("tensor `{name}`: shape {shape:?} has more elements than this machine can address")]
    ShapeOverflow {
        /// The tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A NaN or infinity where the chosen mode refuses them.
    #[error(
        "tensor `{name}` with shape {shape:?}: element {index} (row {row}, column {col}) is {value}; \
         NVFP4 has no Inf or NaN (choose NonFinite::Saturate to encode it as ±6)"
    )]
    NonFinite {
        /// The tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Flat index of the first non-finite element.
        index: usize,
        /// Its row.
        row: usize,
        /// Its column.
        col: usize,
        /// The value (NaN or ±Inf).
        value: f32,
    },
    /// A value out of its allowed range (a negative global scale, a NaN scale byte, ...).
    #[error("tensor `{name}`: {what}")]
    InvalidValue {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// This build holds no GPU kernels (nvcc was not found when it was compiled).
    #[error("the nvfp4 GPU kernels were not built: {0}")]
    NoKernels(String),
    /// No usable CUDA driver or device.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// The device is older than what a kernel needs.
    #[error("{what} needs {needed} or newer, found {found}")]
    UnsupportedArch {
        /// What was asked for.
        what: String,
        /// The oldest architecture that runs it (e.g. "sm_80").
        needed: String,
        /// The device's architecture.
        found: String,
    },
    /// A device allocation failed for lack of memory.
    #[error("out of device memory allocating {bytes} bytes for `{name}`")]
    OutOfMemory {
        /// What the memory was for.
        name: String,
        /// Bytes requested.
        bytes: usize,
    },
    /// A CUDA driver call failed.
    #[error("CUDA {context}: {source}")]
    Cuda {
        /// The call or operation.
        context: String,
        /// The driver's error.
        source: cudarc::driver::DriverError,
    },
    /// A cuBLAS call failed (the benchmark baseline, feature `cublas`).
    #[error("cuBLAS {context}: {message}")]
    Cublas {
        /// The call or operation.
        context: String,
        /// cuBLAS's status.
        message: String,
    },
    /// A safetensors header that cannot be used: truncated, not JSON, or inconsistent with itself.
    #[error("{file}: corrupt safetensors header: {what}")]
    CorruptHeader {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// A tensor whose data offsets fall outside the file's data section.
    #[error(
        "{file}: tensor `{tensor}` has data offsets {start}..{end} but the data section holds {data_len} bytes"
    )]
    TensorOutOfBounds {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// Start offset, relative to the data section.
        start: usize,
        /// End offset, relative to the data section.
        end: usize,
        /// Bytes in the data section.
        data_len: usize,
    },
    /// A tensor whose dtype this operation cannot use.
    #[error("{file}: tensor `{tensor}` has dtype {dtype}; expected {expected}")]
    UnsupportedDtype {
        /// The file.
        file: String,
        /// The tensor.
        tensor: String,
        /// Its dtype, as safetensors spells it.
        dtype: String,
        /// What would do.
        expected: String,
    },
    /// A shard named by a sharded checkpoint's index that is not there.
    #[error("{index}: shard `{shard}` (holding `{tensor}`) does not exist")]
    MissingShard {
        /// The index file.
        index: String,
        /// The shard's file name.
        shard: String,
        /// A tensor the index places in it.
        tensor: String,
    },
    /// A block-scale (or global-scale) tensor whose shape does not fit its weight.
    #[error("{file}: scale tensor `{tensor}` has shape {shape:?}; expected {expected}")]
    ScaleShape {
        /// The file.
        file: String,
        /// The scale tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The shape its weight implies.
        expected: String,
    },
    /// An output that exists already (pass `force` to replace it).
    #[error("{path} exists; refusing to overwrite it (use --force)")]
    OutputExists {
        /// The output path.
        path: String,
    },
    /// An I/O error with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn shape(name: &str, shape: &[usize], expected: impl Into<String>) -> Self {
        Error::Shape {
            name: name.to_string(),
            shape: shape.to_vec(),
            expected: expected.into(),
        }
    }

    pub(crate) fn length(name: &str, shape: &[usize], expected: usize, actual: usize) -> Self {
        Error::Length {
            name: name.to_string(),
            shape: shape.to_vec(),
            expected,
            actual,
        }
    }

    /// [`Error::NonFinite`] for element `index` (row-major) of the `[rows, cols]` tensor `name`.
    pub(crate) fn non_finite(name: &str, shape: [usize; 2], index: usize, value: f32) -> Self {
        Error::NonFinite {
            name: name.to_string(),
            shape: shape.to_vec(),
            index,
            row: index / shape[1],
            col: index % shape[1],
            value,
        }
    }

    pub(crate) fn invalid(name: &str, what: impl Into<String>) -> Self {
        Error::InvalidValue {
            name: name.to_string(),
            what: what.into(),
        }
    }
}

impl Error {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The element count of `shape`, or [`Error::ShapeOverflow`].
pub(crate) fn element_count(name: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::ShapeOverflow {
            name: name.to_string(),
            shape: shape.to_vec(),
        })
}

//! The one memory map of the crate outside `src/cuda/`: a read-only view of a checkpoint file.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Opens `path` read-only and maps it into memory.
///
/// Mapping instead of reading lets a multi-gigabyte checkpoint be quantized tensor by tensor out of the
/// page cache without a second copy in the heap.
pub(crate) fn map_read_only(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: `Mmap::map` is unsafe because the mapped bytes can change (or vanish, giving SIGBUS) if
    // another process modifies or truncates the file while the map lives; Rust's `&[u8]` promises they
    // cannot. This crate opens the file read-only (`File::open`), never writes to it, and never maps a
    // path it is writing (outputs go to a fresh temporary file that is renamed into place, and the
    // CLI refuses an output path equal to an input). The residual risk is an external process
    // truncating or rewriting the checkpoint while we read it: documented, and the same contract every
    // safetensors loader (safetensors' own `load_file`, candle, PyTorch's `safe_open`) lives with.
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(path, e))?;
    // Every byte is read once, front to back: tell the kernel, so it reads ahead in large chunks and
    // maps them with fewer faults.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

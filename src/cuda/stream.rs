//! Timing on a stream with CUDA events, for benchmarks.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaStream, sys};

use super::memory::cuda;
use crate::error::Result;

/// A pair of timing events around work enqueued on one stream.
pub struct GpuTimer {
    start: CudaEvent,
    stop: CudaEvent,
}

impl GpuTimer {
    /// Records the start event on `stream`.
    pub fn start(stream: &Arc<CudaStream>) -> Result<Self> {
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = stream
            .record_event(flags)
            .map_err(cuda("recording a timing event"))?;
        let stop = stream
            .context()
            .new_event(flags)
            .map_err(cuda("creating a timing event"))?;
        Ok(GpuTimer { start, stop })
    }

    /// Records the stop event on `stream`, waits for it, and returns the elapsed milliseconds.
    pub fn stop_ms(self, stream: &Arc<CudaStream>) -> Result<f32> {
        self.stop
            .record(stream)
            .map_err(cuda("recording a timing event"))?;
        self.stop
            .synchronize()
            .map_err(cuda("waiting for a timing event"))?;
        self.start
            .elapsed_ms(&self.stop)
            .map_err(cuda("reading a timing event"))
    }
}

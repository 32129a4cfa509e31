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

/// The three streams of weight streaming: uploads (host to device), downloads (device to host) and
/// compute. Events order them (an upload waits for the compute that last read its slot, compute waits
/// for its upload); nothing in the steady state waits on the host.
///
/// ```no_run
/// use nvfp4::cuda::{Device, StreamSet};
/// let dev = Device::new(0)?;
/// let s = StreamSet::new(&dev)?;
/// let uploaded = s.record(&s.upload)?;
/// s.wait(&s.compute, &uploaded)?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct StreamSet {
    /// Host-to-device copies.
    pub upload: Arc<CudaStream>,
    /// Device-to-host copies.
    pub download: Arc<CudaStream>,
    /// Kernels.
    pub compute: Arc<CudaStream>,
}

impl StreamSet {
    /// Three new streams on `dev`.
    pub fn new(dev: &super::Device) -> Result<Self> {
        Ok(StreamSet {
            upload: dev.new_stream()?,
            download: dev.new_stream()?,
            compute: dev.new_stream()?,
        })
    }

    /// New copy streams around the engine's own compute stream (which must be `dev`'s context).
    pub fn with_compute(dev: &super::Device, compute: Arc<CudaStream>) -> Result<Self> {
        dev.check_stream(&compute)?;
        Ok(StreamSet {
            upload: dev.new_stream()?,
            download: dev.new_stream()?,
            compute,
        })
    }

    /// Records an event (no timing) after the work enqueued on `stream` so far.
    pub fn record(&self, stream: &Arc<CudaStream>) -> Result<CudaEvent> {
        stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(cuda("recording an event"))
    }

    /// Makes later work on `stream` wait for `event` (on the device; the host does not wait).
    pub fn wait(&self, stream: &Arc<CudaStream>, event: &CudaEvent) -> Result<()> {
        stream.wait(event).map_err(cuda("waiting for an event"))
    }

    /// Waits on the host for all three streams (at the end of a pass, never inside one).
    pub fn synchronize(&self) -> Result<()> {
        for s in [&self.upload, &self.download, &self.compute] {
            s.synchronize().map_err(cuda("synchronizing a stream"))?;
        }
        Ok(())
    }
}

/// A reusable event that can be re-recorded: the prefetcher keeps one per slot and per block.
pub(crate) fn new_event(stream: &Arc<CudaStream>, timing: bool) -> Result<CudaEvent> {
    let flags = if timing {
        sys::CUevent_flags::CU_EVENT_DEFAULT
    } else {
        sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
    };
    stream
        .context()
        .new_event(Some(flags))
        .map_err(cuda("creating an event"))
}

//! [`GpuQuantizer`]: the GPU twin of `checkpoint::cpu_quantizer` for whole checkpoints, a
//! [`CheckpointQuantizer`] that also measures each layer's error on the device.
//!
//! Quantizing a checkpoint on a GPU moves every input byte over PCIe once, so the aim is a pipeline
//! whose slowest stage is the disk (or the page cache) or the link, never the host's own copying or
//! arithmetic. Per tensor:
//!
//! 1. **read**: the tensor's bytes, straight from the memory-mapped file, are copied into one of two
//!    pinned staging buffers in chunks (rayon, in parallel: this is where the page faults of the map
//!    are taken, on every core);
//! 2. **H2D**: each chunk is copied asynchronously into the device buffer while the host fills the
//!    other staging buffer with the next chunk (a buffer is refilled only when its copy has finished:
//!    [`PinnedBuffer`] records an event per copy);
//! 3. **kernels**: amax, global scale, quantize and the error sums (`ops::error_stats`'s kernels) on
//!    the device, once the whole tensor is there (the global scale needs all of it);
//! 4. **D2H**: codes, scales and the small results (global scale, first non-finite index, error sums)
//!    into pinned memory, one copy each;
//! 5. **unpack**: the codes and scales copied (in parallel) into the `Vec`s of the returned
//!    [`Nvfp4Tensor`], which the checkpoint writer's thread then writes while the next tensor runs.
//!
//! Device and pinned buffers are kept and grow to the largest tensor seen, so the steady state
//! allocates only the result's `Vec`s. [`GpuQuantizer::stages`] has the time and bytes of each stage,
//! so a reader can see which one bounds the run. The tensors are [`crate::quant::quantize`]'s bytes
//! and errors (the kernels are its byte-identical twins; shapes it refuses are refused the same way,
//! and tensors with nothing to move are handed to it).
//!
//! The one dependency of `ops` on `checkpoint`: this type implements its [`CheckpointQuantizer`] and
//! reads its [`Dense`] tensors (`checkpoint` itself never depends on `cuda`).

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, sys};
use rayon::prelude::*;

use super::GpuElement;
use crate::checkpoint::{CheckpointQuantizer, Dense};
use crate::cuda::launch::{self, QuantizeShape};
use crate::cuda::{
    Device, KernelId, PinnedBuffer, PinnedFlags, alloc_zeros, cast_view, cast_view_mut, copy_d2h_async,
    copy_h2d_async, cuda_err,
};
use crate::error::{Error, Result, element_count};
use crate::format::ScaleLayout;
use crate::quant::{
    self, BLOCK, ErrorStats, GlobalScale, NonFinite, Nvfp4Tensor, QuantizeOptions, check_given_scale,
    padded_k,
};

/// Bytes per host-to-device chunk. Small enough that a 32 MiB tensor (a 4096 x 4096 bf16 weight) is
/// four chunks, so its copy overlaps the reading of three of them; large enough that a chunk's
/// fixed costs (a rayon dispatch, two events, one copy call: tens of microseconds) stay below 10% of
/// its transfer (150 us at 55 GB/s).
pub const DEFAULT_CHUNK_BYTES: usize = 8 << 20;

/// Bytes each rayon task copies: a chunk is 32 tasks, enough to spread over a 16-core host.
const COPY_PIECE: usize = 256 << 10;

/// Buffers grow in steps of this many bytes, so a slightly larger tensor does not reallocate.
const GROW_STEP: usize = 2 << 20;

/// Layout of the small results, one device buffer so that one copy brings all of them back:
/// amax bits (u32), global scale (f32), first non-finite index (u64), error sums (3 x f64).
const AMAX_AT: Range<usize> = 0..4;
const SCALE_AT: Range<usize> = 4..8;
const FIRST_AT: Range<usize> = 8..16;
const SUMS_AT: Range<usize> = 16..40;
const SCALARS: usize = 64;
// The u64 and f64 fields are read through typed views: they must be 8-byte aligned and fit.
const _: () = assert!(FIRST_AT.start % 8 == 0 && SUMS_AT.start % 8 == 0 && SUMS_AT.end <= SCALARS);

/// Time and bytes of one stage of [`GpuQuantizer`], summed over the tensors it quantized.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTime {
    /// Bytes the stage moved or processed.
    pub bytes: u64,
    /// Seconds it was busy: host wall time for host stages, CUDA-event time for device stages.
    pub seconds: f64,
}

impl StageTime {
    /// Throughput while busy, in GB/s (10^9 bytes); 0 when the stage never ran.
    pub fn gb_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / 1e9 / self.seconds
        } else {
            0.0
        }
    }

    fn add(&mut self, bytes: usize, seconds: f64) {
        self.bytes += bytes as u64;
        self.seconds += seconds;
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "bytes": self.bytes, "seconds": self.seconds, "gb_per_s": self.gb_per_s() })
    }
}

/// Where [`GpuQuantizer`]'s time went (module docs: the stages). The stage with the lowest GB/s
/// bounds the run, unless the waits say the host sat idle.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QuantizeStages {
    /// Tensors quantized on the device.
    pub tensors: usize,
    /// Seconds inside [`GpuQuantizer`]'s quantize calls, all stages and waits included.
    pub seconds: f64,
    /// Mapped file to pinned staging (host, parallel copies; input bytes).
    pub read: StageTime,
    /// Pinned staging to the device (input bytes).
    pub h2d: StageTime,
    /// amax, global scale, quantize and error sums on the device (input bytes).
    pub kernels: StageTime,
    /// Codes, scales and results to pinned memory (output bytes).
    pub d2h: StageTime,
    /// Pinned memory to the result's `Vec`s (host, parallel copies; output bytes).
    pub unpack: StageTime,
    /// Seconds the host waited for a staging buffer's copy to finish (the link slower than the read).
    pub staging_wait: f64,
    /// Seconds the host waited for the device after the last chunk (the final copy, the kernels, D2H).
    pub device_wait: f64,
}

impl QuantizeStages {
    /// One line: each stage's GB/s and the waits.
    pub fn summary(&self) -> String {
        format!(
            "read {:.2} GB/s, H2D {:.2} GB/s, kernels {:.1} GB/s, D2H {:.2} GB/s, unpack {:.2} GB/s; \
             waits: staging {:.3} s, device {:.3} s; {} tensors in {:.3} s",
            self.read.gb_per_s(),
            self.h2d.gb_per_s(),
            self.kernels.gb_per_s(),
            self.d2h.gb_per_s(),
            self.unpack.gb_per_s(),
            self.staging_wait,
            self.device_wait,
            self.tensors,
            self.seconds
        )
    }

    /// The stages as JSON (bytes, seconds and GB/s of each; the waits in seconds).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tensors": self.tensors,
            "seconds": self.seconds,
            "read": self.read.to_json(),
            "h2d": self.h2d.to_json(),
            "kernels": self.kernels.to_json(),
            "d2h": self.d2h.to_json(),
            "unpack": self.unpack.to_json(),
            "staging_wait_seconds": self.staging_wait,
            "device_wait_seconds": self.device_wait,
        })
    }
}

/// The byte ranges of the host-to-device chunks of a `len`-byte tensor: `chunk` bytes each, the last
/// one shorter; none for an empty tensor.
pub(crate) fn chunk_ranges(len: usize, chunk: usize) -> impl Iterator<Item = Range<usize>> {
    let chunk = chunk.max(1);
    (0..len.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(len))
}

/// The new capacity of a buffer holding `have` bytes that must hold `need`: `None` when it already
/// does, else `need` rounded up to [`GROW_STEP`].
pub(crate) fn grown_capacity(have: usize, need: usize) -> Option<usize> {
    (need > have).then(|| need.next_multiple_of(GROW_STEP))
}

/// `dst.copy_from_slice(src)` spread over the rayon pool.
fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    dst.par_chunks_mut(COPY_PIECE)
        .zip(src.par_chunks(COPY_PIECE))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// A timing event recorded on `stream` after the work enqueued so far.
fn mark(stream: &Arc<CudaStream>) -> Result<CudaEvent> {
    stream
        .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(cuda_err("recording a timing event"))
}

fn seconds_between(a: &CudaEvent, b: &CudaEvent) -> Result<f64> {
    Ok(a.elapsed_ms(b).map_err(cuda_err("reading a timing event"))? as f64 / 1e3)
}

/// Grows a device byte buffer to hold `need` bytes (its contents are not kept).
fn grow_device(stream: &Arc<CudaStream>, buf: &mut CudaSlice<u8>, need: usize, name: &str) -> Result<()> {
    if let Some(cap) = grown_capacity(buf.len(), need) {
        // Free the old buffer first (for a byte's placeholder: the driver refuses empty allocations): at
        // the largest tensors, old and new might not both fit.
        *buf = alloc_zeros(stream, name, 1)?;
        *buf = alloc_zeros(stream, name, cap)?;
    }
    Ok(())
}

fn grow_pinned(dev: &Device, buf: &mut PinnedBuffer, need: usize) -> Result<()> {
    if let Some(cap) = grown_capacity(buf.len(), need) {
        *buf = PinnedBuffer::new(dev.context(), 1, PinnedFlags::Portable)?;
        *buf = PinnedBuffer::new(dev.context(), cap, PinnedFlags::Portable)?;
    }
    Ok(())
}

/// Quantizes a checkpoint's tensors on one GPU with the bytes of [`crate::quant::quantize`], and
/// measures each one's error there (module docs: the pipeline and its stages).
///
/// ```no_run
/// use nvfp4::checkpoint::{Checkpoint, QuantizeJob, quantize_checkpoint_with};
/// use nvfp4::{cuda::Device, ops::GpuQuantizer};
/// let ck = Checkpoint::open("model.safetensors".as_ref())?;
/// let mut gpu = GpuQuantizer::new(Device::new(0)?)?;
/// let job = QuantizeJob { measure: true, ..QuantizeJob::default() };
/// let summary = quantize_checkpoint_with(&ck, "model-nvfp4.safetensors".as_ref(), &job, &mut gpu, &|_| {})?;
/// println!("{} layers; {}", summary.quantized, gpu.stages().summary());
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub struct GpuQuantizer {
    dev: Device,
    stream: Arc<CudaStream>,
    chunk: usize,
    /// Two chunks of input on their way to the device.
    staging: [PinnedBuffer; 2],
    /// Codes then scales, on their way back.
    out_host: PinnedBuffer,
    /// The small results on their way back, and their initial values on the way there.
    scalars_host: PinnedBuffer,
    /// The tensor's input bytes.
    x: CudaSlice<u8>,
    /// Codes then scales.
    out: CudaSlice<u8>,
    /// See [`SCALARS`].
    scalars: CudaSlice<u8>,
    partials: CudaSlice<f64>,
    stages: QuantizeStages,
}

impl GpuQuantizer {
    /// A quantizer on `dev` with [`DEFAULT_CHUNK_BYTES`] chunks: a stream of its own, the two pinned
    /// staging buffers and the small device buffers (larger ones are allocated by the first tensors,
    /// or by [`GpuQuantizer::reserve`]). [`Error::NoKernels`] when this build or this GPU has no kernels.
    pub fn new(dev: Device) -> Result<Self> {
        Self::with_chunk_bytes(dev, DEFAULT_CHUNK_BYTES)
    }

    /// [`GpuQuantizer::new`] with host-to-device chunks of `chunk` bytes (at least 1; tests use small
    /// chunks to run the double-buffering on small tensors).
    pub fn with_chunk_bytes(dev: Device, chunk: usize) -> Result<Self> {
        dev.function(KernelId::Quantize)?;
        dev.function(KernelId::QuantError)?;
        let chunk = chunk.max(1);
        let stream = dev.new_stream()?;
        let pinned = |len| PinnedBuffer::new(dev.context(), len, PinnedFlags::Portable);
        Ok(GpuQuantizer {
            staging: [pinned(chunk)?, pinned(chunk)?],
            out_host: pinned(GROW_STEP)?,
            scalars_host: pinned(SCALARS)?,
            x: alloc_zeros(&stream, "checkpoint input", GROW_STEP)?,
            out: alloc_zeros(&stream, "checkpoint codes and scales", GROW_STEP)?,
            scalars: alloc_zeros(&stream, "checkpoint results", SCALARS)?,
            partials: alloc_zeros(&stream, "error partials", launch::error_stats_partials(&dev))?,
            stages: QuantizeStages::default(),
            dev,
            stream,
            chunk,
        })
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Where the time went so far.
    pub fn stages(&self) -> QuantizeStages {
        self.stages
    }

    /// Allocates now what tensors of up to `input_bytes` (dense) and `output_bytes` (codes plus scales)
    /// need, so that the first tensors' timings do not include allocating (pinning is slow).
    pub fn reserve(&mut self, input_bytes: usize, output_bytes: usize) -> Result<()> {
        grow_device(&self.stream, &mut self.x, input_bytes, "checkpoint input")?;
        grow_device(
            &self.stream,
            &mut self.out,
            output_bytes,
            "checkpoint codes and scales",
        )?;
        grow_pinned(&self.dev, &mut self.out_host, output_bytes)
    }

    /// Quantizes `data` (`[rows, cols]` row-major) with `opts`: [`crate::quant::quantize`]'s bytes
    /// and errors, and with `measure` the error sums of the result (`ops::error_stats`). Waits for the
    /// device before it returns.
    pub fn quantize_slice<T: GpuElement + bytemuck::Pod>(
        &mut self,
        name: &str,
        data: &[T],
        rows: usize,
        cols: usize,
        opts: &QuantizeOptions,
        measure: bool,
    ) -> Result<(Nvfp4Tensor, Option<ErrorStats>)> {
        let started = Instant::now();
        let shape = [rows, cols];
        let n = element_count(name, &shape)?;
        if data.len() != n {
            return Err(Error::length(name, &shape, n, data.len()));
        }
        let cols_padded = padded_k(name, rows, cols, opts.pad_k)?;
        let bad_scale =
            matches!(opts.global_scale, GlobalScale::Given(s) if check_given_scale(name, s).is_err());
        if n == 0 || bad_scale {
            // Nothing to move, or an error whose precedence (a NaN first) the CPU quantizer defines.
            let q = quant::quantize(name, data, rows, cols, opts)?;
            let stats = measure.then(|| quant::error_stats(data, &q));
            return Ok((q, stats));
        }
        let codes_len = rows * cols_padded / 2;
        let scales_len = opts.scale_layout.len(rows, cols_padded / BLOCK);
        let result = self.run(
            data,
            rows,
            cols,
            cols_padded,
            codes_len,
            scales_len,
            opts,
            measure,
        );
        self.stages.seconds += started.elapsed().as_secs_f64();
        let (global_scale, first, sums) = result?;
        if opts.non_finite == NonFinite::Error && first != u64::MAX {
            let index = first as usize;
            return Err(Error::non_finite(
                name,
                shape,
                index,
                data.get(index).map_or(f32::NAN, |v| v.to_f32()),
            ));
        }
        let t = Instant::now();
        let host = self.out_host.as_slice();
        let mut codes = vec![0u8; codes_len];
        parallel_copy(&mut codes, &host[..codes_len]);
        let scales = host[codes_len..codes_len + scales_len].to_vec();
        let q = Nvfp4Tensor {
            rows,
            cols,
            cols_padded,
            codes,
            scales,
            scale_layout: opts.scale_layout,
            global_scale,
        };
        let elapsed = t.elapsed().as_secs_f64();
        self.stages.unpack.add(codes_len + scales_len, elapsed);
        self.stages.seconds += elapsed;
        self.stages.tensors += 1;
        Ok((q, measure.then_some(sums)))
    }

    /// Stages 1-4 for one tensor; returns the global scale, the first non-finite index (`u64::MAX`
    /// for none) and the error sums (zeros unless `measure`).
    #[allow(clippy::too_many_arguments)]
    fn run<T: GpuElement + bytemuck::Pod>(
        &mut self,
        data: &[T],
        rows: usize,
        cols: usize,
        cols_padded: usize,
        codes_len: usize,
        scales_len: usize,
        opts: &QuantizeOptions,
        measure: bool,
    ) -> Result<(f32, u64, ErrorStats)> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let out_len = codes_len + scales_len;
        self.reserve(bytes.len(), out_len)?;
        let stream = self.stream.clone();
        let dev = &self.dev;

        // Initial values of the small results, in one copy: amax 0, the given global scale, no
        // non-finite element yet, zero sums.
        {
            let init = self.scalars_host.as_mut_slice();
            init.fill(0);
            if let GlobalScale::Given(s) = opts.global_scale {
                init[SCALE_AT].copy_from_slice(&s.to_le_bytes());
            }
            init[FIRST_AT].copy_from_slice(&u64::MAX.to_le_bytes());
        }
        copy_h2d_async(
            &stream,
            &self.scalars_host,
            0,
            &mut self.scalars.slice_mut(0..SUMS_AT.end),
        )?;

        // 1 + 2: read chunk i into staging buffer i % 2 while chunk i - 1 is on its way.
        let mut copies = Vec::new();
        for (i, r) in chunk_ranges(bytes.len(), self.chunk).enumerate() {
            let buf = &mut self.staging[i % 2];
            let t = Instant::now();
            buf.wait_idle();
            self.stages.staging_wait += t.elapsed().as_secs_f64();
            let t = Instant::now();
            parallel_copy(&mut buf.as_mut_slice()[..r.len()], &bytes[r.clone()]);
            self.stages.read.add(r.len(), t.elapsed().as_secs_f64());
            let start = mark(&stream)?;
            copy_h2d_async(&stream, buf, 0, &mut self.x.slice_mut(r.clone()))?;
            copies.push((start, mark(&stream)?, r.len()));
        }

        // 3: the kernels, on views of the reused buffers.
        let kernels_start = mark(&stream)?;
        {
            let x = cast_view::<T>(&self.x.slice(0..bytes.len()))?;
            let (mut codes, mut rest) = self.out.split_at_mut(codes_len);
            let mut scales = rest.slice_mut(0..scales_len);
            let (mut amax_b, mut rest) = self.scalars.split_at_mut(AMAX_AT.end);
            let (mut scale_b, mut rest) = rest.split_at_mut(SCALE_AT.len());
            let (mut first_b, mut rest) = rest.split_at_mut(FIRST_AT.len());
            let mut sums_b = rest.slice_mut(0..SUMS_AT.len());
            let mut amax = cast_view_mut::<u32>(&mut amax_b)?;
            let mut global_scale = cast_view_mut::<f32>(&mut scale_b)?;
            let mut first = cast_view_mut::<u64>(&mut first_b)?;
            let mut sums = cast_view_mut::<f64>(&mut sums_b)?;
            if matches!(opts.global_scale, GlobalScale::FromAmax(_)) || opts.non_finite == NonFinite::Error {
                launch::amax(dev, &stream, &x, &mut amax, &mut first)?;
            }
            if let GlobalScale::FromAmax(rule) = opts.global_scale {
                launch::global_scale(dev, &stream, &amax, &mut global_scale, rule)?;
            }
            if opts.scale_layout != ScaleLayout::Linear {
                // The kernel writes only real entries; the swizzled padding must be 0x00.
                stream
                    .memset_zeros(&mut scales)
                    .map_err(cuda_err("clearing the swizzled scales"))?;
            }
            let shape = QuantizeShape::new(rows, cols, cols_padded, opts);
            launch::quantize(
                dev,
                &stream,
                &x,
                shape,
                &mut global_scale,
                None,
                &mut codes,
                &mut scales,
            )?;
            if measure {
                launch::error_stats(
                    dev,
                    &stream,
                    &x,
                    &codes,
                    &scales,
                    &global_scale,
                    shape.tensor(),
                    &mut self.partials,
                    &mut sums,
                )?;
            }
        }
        let kernels_end = mark(&stream)?;

        // 4: everything back, then wait.
        copy_d2h_async(&stream, &self.out.slice(0..out_len), &mut self.out_host, 0)?;
        copy_d2h_async(
            &stream,
            &self.scalars.slice(0..SUMS_AT.end),
            &mut self.scalars_host,
            0,
        )?;
        let d2h_end = mark(&stream)?;
        let t = Instant::now();
        stream
            .synchronize()
            .map_err(cuda_err("waiting for the checkpoint quantizer"))?;
        self.stages.device_wait += t.elapsed().as_secs_f64();

        for (a, b, len) in &copies {
            self.stages.h2d.add(*len, seconds_between(a, b)?);
        }
        self.stages
            .kernels
            .add(bytes.len(), seconds_between(&kernels_start, &kernels_end)?);
        self.stages
            .d2h
            .add(out_len + SUMS_AT.end, seconds_between(&kernels_end, &d2h_end)?);

        let sc = self.scalars_host.as_slice();
        let f64_at = |i: usize| {
            let o = SUMS_AT.start + 8 * i;
            f64::from_le_bytes(sc[o..o + 8].try_into().unwrap_or_default())
        };
        let global_scale = f32::from_le_bytes(sc[SCALE_AT].try_into().unwrap_or_default());
        let first = u64::from_le_bytes(sc[FIRST_AT].try_into().unwrap_or_default());
        let sums = ErrorStats {
            signal: f64_at(0),
            noise: f64_at(1),
            max_abs: f64_at(2),
        };
        Ok((global_scale, first, sums))
    }
}

impl CheckpointQuantizer for GpuQuantizer {
    fn quantize(
        &mut self,
        name: &str,
        data: &Dense<'_>,
        rows: usize,
        cols: usize,
        opts: &QuantizeOptions,
        measure: bool,
    ) -> Result<(Nvfp4Tensor, Option<ErrorStats>)> {
        match data {
            Dense::F32(v) => self.quantize_slice(name, v, rows, cols, opts, measure),
            Dense::F16(v) => self.quantize_slice(name, v, rows, cols, opts, measure),
            Dense::Bf16(v) => self.quantize_slice(name, v, rows, cols, opts, measure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_tensor_once_in_order() {
        for (len, chunk) in [
            (0usize, 8usize),
            (1, 8),
            (8, 8),
            (9, 8),
            (100, 7),
            (64 << 20, 8 << 20),
        ] {
            let v: Vec<Range<usize>> = chunk_ranges(len, chunk).collect();
            assert_eq!(v.len(), len.div_ceil(chunk), "{len} / {chunk}");
            let mut next = 0;
            for r in &v {
                assert_eq!(r.start, next, "{len} / {chunk}: contiguous");
                assert!(!r.is_empty() && r.len() <= chunk, "{len} / {chunk}: {r:?}");
                next = r.end;
            }
            assert_eq!(next, len, "{len} / {chunk}: complete");
        }
        // A zero chunk size would never advance: it is taken as 1.
        assert_eq!(chunk_ranges(3, 0).count(), 3);
    }

    #[test]
    fn buffers_grow_only_when_too_small_and_in_whole_steps() {
        assert_eq!(grown_capacity(0, 0), None);
        assert_eq!(grown_capacity(GROW_STEP, GROW_STEP), None);
        assert_eq!(grown_capacity(GROW_STEP, 1), None);
        assert_eq!(grown_capacity(0, 1), Some(GROW_STEP));
        assert_eq!(grown_capacity(GROW_STEP, GROW_STEP + 1), Some(2 * GROW_STEP));
        let cap = grown_capacity(0, 33_554_433).unwrap();
        assert!(cap >= 33_554_433 && cap % GROW_STEP == 0 && cap - 33_554_433 < GROW_STEP);
    }

    #[test]
    fn the_small_results_do_not_overlap_and_are_aligned() {
        let fields = [AMAX_AT, SCALE_AT, FIRST_AT, SUMS_AT];
        for w in fields.windows(2) {
            assert!(w[0].end <= w[1].start);
        }
        assert_eq!(
            (AMAX_AT.len(), SCALE_AT.len(), FIRST_AT.len(), SUMS_AT.len()),
            (4, 4, 8, 24)
        );
    }

    #[test]
    fn parallel_copy_is_a_copy() {
        let src: Vec<u8> = (0..3 * COPY_PIECE + 17).map(|i| (i * 31 % 251) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        parallel_copy(&mut dst, &src);
        assert_eq!(dst, src);
    }

    #[test]
    fn stage_throughput_and_summary() {
        let mut s = QuantizeStages::default();
        s.read.add(2_000_000_000, 0.5);
        assert_eq!(s.read.gb_per_s(), 4.0);
        assert_eq!(s.h2d.gb_per_s(), 0.0, "a stage that never ran");
        assert!(s.summary().starts_with("read 4.00 GB/s, H2D 0.00 GB/s"));
        assert_eq!(s.to_json()["read"]["gb_per_s"], 4.0);
    }
}

//! [`LayerPrefetcher`]: BlockSwap. The first `blocks_to_swap` blocks stream through a ring of `depth`
//! device slots; the rest are uploaded once and stay resident.
//!
//! Ordering, all on the device (events), none on the host inside a pass:
//! - the upload of swapped block `s + depth` into slot `s % depth` waits for the event `done(s)`
//!   recorded on the compute stream (the slot's previous reader has finished);
//! - the compute of block `s` waits for the event recorded on the upload stream after its copies.
//!
//! With `prefetch_next_pass`, the last `depth` slots, once freed, start uploading the next pass's first
//! swapped blocks, so a loop of passes (diffusion steps) keeps the copy engine busy across the seam.
//! The host waits only in [`LayerPrefetcher::end_pass`] (to read the pass's timing events) and in
//! [`LayerPrefetcher::abort_pass`].

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, CudaView};
use half::bf16;

use super::model::{HostBlock, HostTensor, TensorLayout, Weight, layout_block, nvfp4_meta, write_staged};
use crate::cuda::{
    Device, PinnedAllocator, PinnedBuffer, Pool, Staged, StagingAllocator, StreamSet, alloc_zeros, cast_view,
    copy_h2d_async, cuda_err, new_event,
};
use crate::error::{Error, Result};
use crate::ops::{Nvfp4View, SlotWeight};

/// How many blocks stream and through how many slots.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchConfig {
    /// Blocks `0..blocks_to_swap` stream; the others stay resident. At most the block count.
    pub blocks_to_swap: usize,
    /// Device slots in the ring (1 or more; more than `blocks_to_swap` is clamped). Two hide one
    /// block's upload under the previous block's compute.
    pub depth: usize,
    /// Start uploading the next pass's first blocks as soon as their slots free up at the end of a
    /// pass (one wasted upload of `depth` blocks after the last pass).
    pub prefetch_next_pass: bool,
    /// Refuse (with [`Error::OutOfMemory`]) a configuration whose resident blocks and slots exceed this
    /// many device bytes.
    pub vram_budget: Option<usize>,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            blocks_to_swap: 0,
            depth: 2,
            prefetch_next_pass: true,
            vram_budget: None,
        }
    }
}

/// The figures of one pass, from CUDA events (milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PassStats {
    /// From `begin_pass` to the end of the last block's compute.
    pub pass_ms: f64,
    /// Sum of the copy times of the uploads this pass consumed (some ran during the previous pass).
    pub upload_ms: f64,
    /// Sum of the compute times (from the end of a block's wait to its `done`).
    pub compute_ms: f64,
    /// Time the compute stream waited for uploads.
    pub stall_ms: f64,
    /// Bytes uploaded for this pass.
    pub bytes_uploaded: usize,
    /// Uploads staged from pageable memory (pool fallbacks).
    pub pageable_tensors: usize,
}

impl PassStats {
    /// Fraction of the upload time hidden under compute: `1 - stall / upload`, in `[0, 1]` (1 when
    /// nothing was uploaded).
    pub fn overlap(&self) -> f64 {
        if self.upload_ms <= 0.0 {
            1.0
        } else {
            (1.0 - self.stall_ms / self.upload_ms).clamp(0.0, 1.0)
        }
    }
}

/// Timing events of one block's turn on the compute stream.
struct BlockEvents {
    wait_begin: CudaEvent,
    wait_end: CudaEvent,
    compute_end: CudaEvent,
}

/// Per pass parity: the upload events of each swapped block (a pass's uploads may be enqueued during
/// the previous pass, so two sets alternate).
struct UploadSet {
    begin: Vec<CudaEvent>,
    end: Vec<CudaEvent>,
    uploaded: Vec<bool>,
    bytes: usize,
    pageable: usize,
}

/// The BlockSwap layer prefetcher. Drive it from the forward loop:
///
/// ```no_run
/// use std::sync::Arc;
/// use nvfp4::cuda::{Device, PinnedPool, StreamSet, checksum, alloc_zeros};
/// use nvfp4::offload::{HostBlock, HostTensor, LayerPrefetcher, PrefetchConfig, Weight};
/// let dev = Device::new(0)?;
/// let blocks: Vec<HostBlock> = (0..8u64)
///     .map(|i| Ok(HostBlock { tensors: vec![HostTensor::new(i, "w", Weight::Bytes(vec![i as u8; 1 << 20]))?] }))
///     .collect::<nvfp4::Result<_>>()?;
/// let cfg = PrefetchConfig { blocks_to_swap: 6, depth: 2, ..Default::default() };
/// let mut pf = LayerPrefetcher::new(&dev, StreamSet::new(&dev)?, Arc::new(PinnedPool::new(&dev)), blocks, cfg)?;
/// let compute = pf.streams().compute.clone();
/// let mut sums = alloc_zeros::<u64>(&compute, "sums", 8)?;
/// pf.begin_pass()?;
/// for i in 0..8 {
///     let b = pf.block(i)?;
///     checksum(&dev, &compute, &b.bytes(), &mut sums, i)?; // the engine's kernels
///     pf.done(i)?;
/// }
/// let stats = pf.end_pass()?;
/// println!("stall {:.2} ms, overlap {:.0}%", stats.stall_ms, 100.0 * stats.overlap());
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub struct LayerPrefetcher<A: StagingAllocator<Buffer = PinnedBuffer> = PinnedAllocator> {
    streams: StreamSet,
    pool: Arc<Pool<A>>,
    blocks: Vec<HostBlock>,
    layouts: Vec<(Vec<TensorLayout>, usize)>,
    swapped: usize,
    depth: usize,
    prefetch_next_pass: bool,
    /// `Some` for blocks `swapped..`.
    resident: Vec<Option<CudaSlice<u8>>>,
    slots: Vec<CudaSlice<u8>>,
    /// Recorded on the compute stream when the slot's block is done.
    slot_free: Vec<CudaEvent>,
    /// Which swapped block the slot holds (or will, once its enqueued upload lands).
    slot_block: Vec<Option<usize>>,
    /// The slot each swapped block was last uploaded into (valid while `slot_block` agrees).
    block_slot: Vec<usize>,
    block_events: Vec<BlockEvents>,
    uploads: [UploadSet; 2],
    pass_start: CudaEvent,
    pass: u64,
    active: bool,
    next: usize,
    in_block: Option<usize>,
    device_bytes: usize,
}

impl<A: StagingAllocator<Buffer = PinnedBuffer>> LayerPrefetcher<A> {
    /// Lays out every block, uploads the resident ones (waiting for those copies once, here) and
    /// allocates the slots. Device memory: the resident blocks plus `depth` slots of the largest
    /// swapped block ([`LayerPrefetcher::device_bytes`]).
    pub fn new(
        dev: &Device,
        streams: StreamSet,
        pool: Arc<Pool<A>>,
        blocks: Vec<HostBlock>,
        cfg: PrefetchConfig,
    ) -> Result<Self> {
        for s in [&streams.upload, &streams.download, &streams.compute] {
            dev.check_stream(s)?;
        }
        let n = blocks.len();
        if cfg.blocks_to_swap > n {
            return Err(Error::invalid(
                "blocks_to_swap",
                format!("{} blocks to swap, the model has {n}", cfg.blocks_to_swap),
            ));
        }
        if cfg.depth == 0 {
            return Err(Error::invalid("depth", "the slot ring needs at least one slot"));
        }
        let mut ids = std::collections::HashSet::new();
        for t in blocks.iter().flat_map(|b| &b.tensors) {
            if !ids.insert(t.id) {
                return Err(Error::invalid(
                    &t.name,
                    format!("tensor id {} is used twice", t.id),
                ));
            }
        }
        let layouts = blocks.iter().map(layout_block).collect::<Result<Vec<_>>>()?;
        let swapped = cfg.blocks_to_swap;
        let depth = cfg.depth.min(swapped.max(1));
        let slot_bytes = layouts[..swapped].iter().map(|l| l.1).max().unwrap_or(0);
        let resident_bytes: usize = layouts[swapped..].iter().map(|l| l.1).sum();
        let slots_n = if swapped == 0 { 0 } else { depth };
        let device_bytes = resident_bytes.saturating_add(slot_bytes.saturating_mul(slots_n));
        if let Some(budget) = cfg.vram_budget {
            if device_bytes > budget {
                return Err(Error::OutOfMemory {
                    name: format!(
                        "{} resident blocks and {slots_n} slots of {slot_bytes} bytes under a VRAM budget of \
                         {budget} bytes (swap more blocks or lower the depth)",
                        n - swapped
                    ),
                    bytes: device_bytes,
                });
            }
        }
        let up = &streams.upload;
        let mut resident = Vec::with_capacity(n);
        for (i, b) in blocks.iter().enumerate() {
            if i < swapped {
                resident.push(None);
                continue;
            }
            let image = b.device_image()?;
            let mut d = alloc_zeros::<u8>(up, &format!("resident block {i}"), image.len())?;
            if !image.is_empty() {
                up.memcpy_htod(&image, &mut d)
                    .map_err(cuda_err(format!("uploading resident block {i}")))?;
            }
            resident.push(Some(d));
        }
        let slots = (0..slots_n)
            .map(|k| alloc_zeros::<u8>(&streams.compute, &format!("weight slot {k}"), slot_bytes.max(1)))
            .collect::<Result<Vec<_>>>()?;
        up.synchronize()
            .map_err(cuda_err("uploading the resident blocks"))?;
        let c = &streams.compute;
        let upload_set = || -> Result<UploadSet> {
            Ok(UploadSet {
                begin: (0..swapped).map(|_| new_event(up, true)).collect::<Result<_>>()?,
                end: (0..swapped).map(|_| new_event(up, true)).collect::<Result<_>>()?,
                uploaded: vec![false; swapped],
                bytes: 0,
                pageable: 0,
            })
        };
        Ok(LayerPrefetcher {
            pool,
            layouts,
            swapped,
            depth,
            prefetch_next_pass: cfg.prefetch_next_pass,
            resident,
            slot_free: (0..slots_n).map(|_| new_event(c, false)).collect::<Result<_>>()?,
            slot_block: vec![None; slots_n],
            block_slot: vec![0; swapped],
            slots,
            block_events: (0..n)
                .map(|_| {
                    Ok(BlockEvents {
                        wait_begin: new_event(c, true)?,
                        wait_end: new_event(c, true)?,
                        compute_end: new_event(c, true)?,
                    })
                })
                .collect::<Result<_>>()?,
            uploads: [upload_set()?, upload_set()?],
            pass_start: new_event(c, true)?,
            pass: 0,
            active: false,
            next: 0,
            in_block: None,
            device_bytes,
            blocks,
            streams,
        })
    }

    /// The streams (compute work goes on `streams().compute`).
    pub fn streams(&self) -> &StreamSet {
        &self.streams
    }

    /// The pinned pool staging the swapped blocks.
    pub fn pool(&self) -> &Arc<Pool<A>> {
        &self.pool
    }

    /// Device bytes held: resident blocks plus slots.
    pub fn device_bytes(&self) -> usize {
        self.device_bytes
    }

    /// Blocks in the model.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that stream, and the slot count.
    pub fn swap_config(&self) -> (usize, usize) {
        (self.swapped, self.slots.len())
    }

    fn parity(&self) -> usize {
        (self.pass % 2) as usize
    }

    /// Starts a pass: enqueues the uploads of the first `depth` swapped blocks not already in place.
    pub fn begin_pass(&mut self) -> Result<()> {
        if self.active {
            return Err(Error::invalid(
                "prefetcher",
                "begin_pass during a pass (call end_pass or abort_pass)",
            ));
        }
        self.pass_start
            .record(&self.streams.compute)
            .map_err(cuda_err("recording the pass start"))?;
        self.active = true;
        self.next = 0;
        let p = self.parity();
        let first = self.depth.min(self.swapped);
        // Blocks 0..first may already sit in slots (prefetched at the end of the last pass, or every
        // swapped block has its own slot); the others go into the slots holding none of them.
        let missing: Vec<usize> = (0..first).filter(|&s| !self.present(s)).collect();
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&k| !matches!(self.slot_block[k], Some(b) if b < first && self.block_slot[b] == k))
            .collect();
        for (s, slot) in missing.into_iter().zip(free) {
            if let Err(e) = self.upload(s, slot, p) {
                self.abort_pass_quietly();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether swapped block `s` is in (or on its way to) a slot.
    fn present(&self, s: usize) -> bool {
        self.slot_block.get(self.block_slot[s]) == Some(&Some(s))
    }

    /// Enqueues the copies of swapped block `s` into `slot`, for the pass of parity `p`.
    fn upload(&mut self, s: usize, slot: usize, p: usize) -> Result<()> {
        let up = self.streams.upload.clone();
        // The slot's previous block must be done on the compute stream first.
        up.wait(&self.slot_free[slot])
            .map_err(cuda_err("ordering an upload after compute"))?;
        self.slot_block[slot] = None;
        self.uploads[p].begin[s]
            .record(&up)
            .map_err(cuda_err("recording an upload event"))?;
        let (layouts, total) = &self.layouts[s];
        let mut pageable = 0;
        for (t, l) in self.blocks[s].tensors.iter().zip(layouts) {
            let mut dst = self.slots[slot].slice_mut(l.offset..l.offset + l.len);
            match self.pool.stage(t.id, l.len, |buf| write_staged(t, l, buf))? {
                Staged::Pinned(buf) => copy_h2d_async(&up, &buf, 0, &mut dst)?,
                Staged::Pageable => {
                    pageable += 1;
                    let mut image = vec![0u8; l.len];
                    write_staged(t, l, &mut image);
                    // Pageable copies return once the driver has staged the bytes, so `image` may go.
                    up.memcpy_htod(&image, &mut dst)
                        .map_err(cuda_err(format!("uploading `{}` from pageable memory", t.name)))?;
                }
            }
        }
        self.uploads[p].end[s]
            .record(&up)
            .map_err(cuda_err("recording an upload event"))?;
        self.uploads[p].uploaded[s] = true;
        self.uploads[p].bytes += total;
        self.uploads[p].pageable += pageable;
        self.slot_block[slot] = Some(s);
        self.block_slot[s] = slot;
        Ok(())
    }

    /// Block `i` on the device, for the compute stream: work enqueued on `streams().compute` after this
    /// call sees its uploaded bytes. Blocks come in order `0, 1, ...`; block 0 starts a pass if none
    /// is active.
    pub fn block(&mut self, i: usize) -> Result<DeviceBlock<'_>> {
        if !self.active && i == 0 {
            self.begin_pass()?;
        }
        if !self.active || i != self.next || self.in_block.is_some() || i >= self.blocks.len() {
            return Err(Error::invalid(
                "prefetcher",
                format!(
                    "block({i}) out of order: expected block({}) of {} after done() of the previous one",
                    self.next,
                    self.blocks.len()
                ),
            ));
        }
        let c = self.streams.compute.clone();
        let ev = &self.block_events[i];
        ev.wait_begin
            .record(&c)
            .map_err(cuda_err("recording a wait event"))?;
        let p = self.parity();
        if i < self.swapped && self.uploads[p].uploaded[i] {
            c.wait(&self.uploads[p].end[i])
                .map_err(cuda_err("ordering compute after an upload"))?;
        }
        ev.wait_end
            .record(&c)
            .map_err(cuda_err("recording a wait event"))?;
        self.in_block = Some(i);
        let (layouts, total) = &self.layouts[i];
        let bytes = match &self.resident[i] {
            Some(d) => d.slice(0..*total),
            None => self.slots[self.block_slot[i]].slice(0..*total),
        };
        Ok(DeviceBlock {
            index: i,
            bytes,
            layouts,
            host: &self.blocks[i],
            stream: &self.streams.compute,
        })
    }

    /// Marks block `i`'s compute as enqueued: its slot is reused by the upload of block `i + depth`
    /// once that compute finishes on the device.
    pub fn done(&mut self, i: usize) -> Result<()> {
        if self.in_block != Some(i) {
            return Err(Error::invalid(
                "prefetcher",
                format!("done({i}) without block({i})"),
            ));
        }
        let c = self.streams.compute.clone();
        self.block_events[i]
            .compute_end
            .record(&c)
            .map_err(cuda_err("recording a compute event"))?;
        self.in_block = None;
        self.next = i + 1;
        if i < self.swapped {
            let slot = self.block_slot[i];
            self.slot_free[slot]
                .record(&c)
                .map_err(cuda_err("recording a slot event"))?;
            let n = i + self.depth;
            let p = self.parity();
            let result = if n < self.swapped {
                self.upload(n, slot, p)
            } else if self.prefetch_next_pass && !self.present(n - self.swapped) {
                self.upload(n - self.swapped, slot, 1 - p)
            } else {
                Ok(())
            };
            if let Err(e) = result {
                self.abort_pass_quietly();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Ends a pass (every block done): waits for the compute stream and returns the pass's figures.
    pub fn end_pass(&mut self) -> Result<PassStats> {
        if !self.active || self.next != self.blocks.len() || self.in_block.is_some() {
            return Err(Error::invalid(
                "prefetcher",
                format!("end_pass after {} of {} blocks", self.next, self.blocks.len()),
            ));
        }
        self.streams
            .compute
            .synchronize()
            .map_err(cuda_err("waiting for the pass"))?;
        let ms = |a: &CudaEvent, b: &CudaEvent| -> Result<f64> {
            Ok(a.elapsed_ms(b).map_err(cuda_err("reading a pass event"))? as f64)
        };
        let p = self.parity();
        let mut st = PassStats::default();
        if let Some(last) = self.block_events.last() {
            st.pass_ms = ms(&self.pass_start, &last.compute_end)?;
        }
        for e in &self.block_events {
            st.stall_ms += ms(&e.wait_begin, &e.wait_end)?;
            st.compute_ms += ms(&e.wait_end, &e.compute_end)?;
        }
        let u = &mut self.uploads[p];
        for s in 0..self.swapped {
            if u.uploaded[s] {
                st.upload_ms += ms(&u.begin[s], &u.end[s])?;
                u.uploaded[s] = false;
            }
        }
        st.bytes_uploaded = std::mem::take(&mut u.bytes);
        st.pageable_tensors = std::mem::take(&mut u.pageable);
        self.active = false;
        self.pass += 1;
        Ok(st)
    }

    /// Abandons a pass (after an error in the engine's compute): waits for every stream, forgets
    /// what the slots hold, and leaves the prefetcher ready for `begin_pass`.
    pub fn abort_pass(&mut self) -> Result<()> {
        let r = self.streams.synchronize();
        self.reset_state();
        r
    }

    fn abort_pass_quietly(&mut self) {
        let _ = self.streams.synchronize();
        self.reset_state();
    }

    fn reset_state(&mut self) {
        self.active = false;
        self.in_block = None;
        self.next = 0;
        self.slot_block.iter_mut().for_each(|b| *b = None);
        for u in &mut self.uploads {
            u.uploaded.iter_mut().for_each(|x| *x = false);
            u.bytes = 0;
            u.pageable = 0;
        }
        self.pass += 1;
    }
}

impl<A: StagingAllocator<Buffer = PinnedBuffer>> Drop for LayerPrefetcher<A> {
    fn drop(&mut self) {
        // Slots and events must outlive the copies and kernels using them.
        let _ = self.streams.synchronize();
    }
}

/// A block on the device for the duration of one `block(i)` .. `done(i)`.
pub struct DeviceBlock<'a> {
    index: usize,
    bytes: CudaView<'a, u8>,
    layouts: &'a [TensorLayout],
    host: &'a HostBlock,
    /// The compute stream, whose recorded events free the block's memory for reuse.
    stream: &'a Arc<CudaStream>,
}

impl<'a> DeviceBlock<'a> {
    pub(crate) fn new(
        index: usize,
        bytes: CudaView<'a, u8>,
        layouts: &'a [TensorLayout],
        host: &'a HostBlock,
        stream: &'a Arc<CudaStream>,
    ) -> Self {
        DeviceBlock {
            index,
            bytes,
            layouts,
            host,
            stream,
        }
    }

    /// The block's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// All of the block's bytes ([`HostBlock::device_image`] on the device).
    pub fn bytes(&self) -> CudaView<'a, u8> {
        self.bytes.slice(..)
    }

    /// Tensors in the block.
    pub fn len(&self) -> usize {
        self.layouts.len()
    }

    /// Whether the block has no tensors.
    pub fn is_empty(&self) -> bool {
        self.layouts.is_empty()
    }

    /// Tensor `j`.
    pub fn tensor(&self, j: usize) -> Result<DeviceTensor<'a>> {
        let l = self.layouts.get(j).ok_or_else(|| {
            Error::invalid(
                &format!("block {}", self.index),
                format!("tensor {j} asked, the block has {}", self.layouts.len()),
            )
        })?;
        let t = &self.host.tensors[j];
        Ok(DeviceTensor {
            host: t,
            stream: self.stream,
            parts: l
                .parts
                .iter()
                .map(|&(off, len)| self.bytes.slice(l.offset + off..l.offset + off + len))
                .collect(),
        })
    }

    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Result<DeviceTensor<'a>> {
        let j = self
            .host
            .tensors
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| Error::invalid(name, format!("no such tensor in block {}", self.index)))?;
        self.tensor(j)
    }
}

/// One tensor of a [`DeviceBlock`]: views into the slot.
pub struct DeviceTensor<'a> {
    host: &'a HostTensor,
    stream: &'a Arc<CudaStream>,
    parts: Vec<CudaView<'a, u8>>,
}

impl<'a> DeviceTensor<'a> {
    /// Its name.
    pub fn name(&self) -> &'a str {
        &self.host.name
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.host.id
    }

    /// The raw bytes of each part (NVFP4: codes, scales, global scale; others: one part).
    pub fn parts(&self) -> &[CudaView<'a, u8>] {
        &self.parts
    }

    /// The NVFP4 view (for `ops::dequantize_view` and the GEMMs), or an error for other weights.
    pub fn nvfp4(&self) -> Result<Nvfp4View<'a>> {
        let (rows, cols, scale_layout) = nvfp4_meta(&self.host.weight)
            .ok_or_else(|| Error::invalid(&self.host.name, "not an NVFP4 tensor"))?;
        Ok(Nvfp4View {
            rows,
            cols,
            scale_layout,
            codes: self.parts[0].slice(..),
            scales: self.parts[1].slice(..),
            global_scale: cast_view::<f32>(&self.parts[2])?,
        })
    }

    /// The NVFP4 weight for [`crate::ops::GemmPlan::w4a16_slot`]: the [`DeviceTensor::nvfp4`] views, tied to
    /// the block's lifetime and to the compute stream the slot is ordered on (so a GEMM reading the slot
    /// is enqueued before `done` frees it). An error for other weights.
    ///
    /// ```no_run
    /// # fn f(pf: &mut nvfp4::offload::LayerPrefetcher) -> nvfp4::Result<()> {
    /// let block = pf.block(0)?;
    /// let w = block.get("mlp.up")?.slot_weight()?;
    /// assert_eq!(w.view().global_scale.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn slot_weight(&self) -> Result<SlotWeight<'a>> {
        Ok(SlotWeight::new(self.nvfp4()?, self.stream))
    }

    /// The bf16 view, or an error for other weights.
    pub fn bf16(&self) -> Result<CudaView<'a, bf16>> {
        match self.host.weight {
            Weight::Bf16 { .. } => cast_view::<bf16>(&self.parts[0]),
            _ => Err(Error::invalid(&self.host.name, "not a bf16 tensor")),
        }
    }
}

//! [`ModelOffloader`]: a whole set of tensors to the device or back, asynchronously, with events.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice};

use super::model::{HostBlock, HostTensor, TensorLayout, Weight, layout_block, write_staged};
use super::prefetcher::DeviceBlock;
use crate::cuda::{
    Device, PinnedAllocator, PinnedBuffer, PinnedFlags, Pool, Staged, StagingAllocator, StreamSet,
    alloc_zeros, copy_d2h_async, copy_h2d_async, cuda_err,
};
use crate::error::{Error, Result};

/// Moves a set of tensors (say, a text encoder between uses) to the device and back. Uploads go on the
/// upload stream and return an event the caller's compute waits on; `to_host` frees the device copy
/// once the compute stream is done with it; `download` brings back tensors the engine changed.
///
/// ```no_run
/// use std::sync::Arc;
/// use nvfp4::cuda::{Device, PinnedPool, StreamSet};
/// use nvfp4::offload::{HostTensor, ModelOffloader, Weight};
/// let dev = Device::new(0)?;
/// let streams = StreamSet::new(&dev)?;
/// let t = vec![HostTensor::new(1, "emb", Weight::Bytes(vec![1; 4096]))?];
/// let mut off = ModelOffloader::new(&dev, streams.clone(), Arc::new(PinnedPool::new(&dev)), t)?;
/// let ready = off.to_device()?;
/// streams.wait(&streams.compute, &ready)?;
/// let on_device = off.block()?; // tensor views for the engine's kernels
/// drop(on_device);
/// off.to_host()?;
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub struct ModelOffloader<A: StagingAllocator<Buffer = PinnedBuffer> = PinnedAllocator> {
    streams: StreamSet,
    pool: Arc<Pool<A>>,
    block: HostBlock,
    layouts: Vec<TensorLayout>,
    total: usize,
    device: Option<CudaSlice<u8>>,
    downloads: Vec<(usize, PinnedBuffer)>,
}

impl<A: StagingAllocator<Buffer = PinnedBuffer>> ModelOffloader<A> {
    /// Lays the tensors out (one device allocation when loaded); nothing is copied yet.
    pub fn new(
        dev: &Device,
        streams: StreamSet,
        pool: Arc<Pool<A>>,
        tensors: Vec<HostTensor>,
    ) -> Result<Self> {
        for s in [&streams.upload, &streams.download, &streams.compute] {
            dev.check_stream(s)?;
        }
        let block = HostBlock { tensors };
        let (layouts, total) = layout_block(&block)?;
        Ok(ModelOffloader {
            streams,
            pool,
            block,
            layouts,
            total,
            device: None,
            downloads: Vec::new(),
        })
    }

    /// Device bytes when loaded.
    pub fn device_bytes(&self) -> usize {
        self.total
    }

    /// Whether the tensors are on the device (or their upload is enqueued).
    pub fn is_on_device(&self) -> bool {
        self.device.is_some()
    }

    /// Allocates device memory and enqueues every upload; the returned event fires when all landed.
    /// A second call while loaded only records a new event.
    pub fn to_device(&mut self) -> Result<CudaEvent> {
        let up = self.streams.upload.clone();
        if self.device.is_none() {
            let mut d = alloc_zeros::<u8>(&up, "offloaded tensors", self.total.max(1))?;
            for (t, l) in self.block.tensors.iter().zip(&self.layouts) {
                let mut dst = d.slice_mut(l.offset..l.offset + l.len);
                match self.pool.stage(t.id, l.len, |b| write_staged(t, l, b))? {
                    Staged::Pinned(buf) => copy_h2d_async(&up, &buf, 0, &mut dst)?,
                    Staged::Pageable => {
                        let mut image = vec![0u8; l.len];
                        write_staged(t, l, &mut image);
                        up.memcpy_htod(&image, &mut dst)
                            .map_err(cuda_err(format!("uploading `{}` from pageable memory", t.name)))?;
                    }
                }
            }
            self.device = Some(d);
        }
        self.streams.record(&up)
    }

    /// The tensors on the device (views); order compute after `to_device`'s event first.
    pub fn block(&self) -> Result<DeviceBlock<'_>> {
        let d = self
            .device
            .as_ref()
            .ok_or_else(|| Error::invalid("offloaded tensors", "not on the device (call to_device)"))?;
        Ok(DeviceBlock::new(
            usize::MAX,
            d.slice(0..self.total),
            &self.layouts,
            &self.block,
            &self.streams.compute,
        ))
    }

    /// Frees the device copy once the work enqueued on the compute stream so far is done (ordered on
    /// the device; the host does not wait).
    pub fn to_host(&mut self) -> Result<()> {
        if let Some(d) = self.device.take() {
            let done = self.streams.record(&self.streams.compute)?;
            self.streams.wait(&self.streams.upload, &done)?;
            // Freed on its own (upload) stream, after the wait above.
            drop(d);
        }
        Ok(())
    }

    /// Enqueues a download of tensor `j` (changed by the engine's kernels) after the compute stream's
    /// work so far; [`ModelOffloader::finish_downloads`] writes it into the host tensor.
    pub fn download(&mut self, j: usize) -> Result<()> {
        let d = self
            .device
            .as_ref()
            .ok_or_else(|| Error::invalid("offloaded tensors", "not on the device (call to_device)"))?;
        let l = self.layouts.get(j).ok_or_else(|| {
            Error::invalid(
                "offloaded tensors",
                format!("tensor {j} asked, there are {}", self.layouts.len()),
            )
        })?;
        let dl = &self.streams.download;
        let done = self.streams.record(&self.streams.compute)?;
        self.streams.wait(dl, &done)?;
        let mut host = PinnedBuffer::new(dl.context(), l.len, PinnedFlags::Portable)?;
        copy_d2h_async(dl, &d.slice(l.offset..l.offset + l.len), &mut host, 0)?;
        self.downloads.push((j, host));
        Ok(())
    }

    /// Waits for the enqueued downloads and writes their bytes into the host tensors (whose staged
    /// copies in the pool are dropped, so the next upload sends the new values).
    pub fn finish_downloads(&mut self) -> Result<()> {
        for (j, buf) in std::mem::take(&mut self.downloads) {
            let bytes = buf.as_slice();
            let l = &self.layouts[j];
            let t = &mut self.block.tensors[j];
            let mut parts = l.parts.iter();
            let mut next = || {
                let &(off, len) = parts.next().expect("layout has one entry per part");
                &bytes[off..off + len]
            };
            match &mut t.weight {
                Weight::Nvfp4(q) => {
                    q.codes.copy_from_slice(next());
                    q.scales.copy_from_slice(next());
                    q.global_scale = f32::from_le_bytes(next().try_into().unwrap_or([0; 4]));
                }
                Weight::Bf16 { data, .. } => bytemuck::cast_slice_mut(data).copy_from_slice(next()),
                Weight::Bytes(b) => b.copy_from_slice(next()),
            }
            self.pool.invalidate(t.id);
        }
        Ok(())
    }

    /// The host tensors (with the downloaded values after `finish_downloads`).
    pub fn tensors(&self) -> &[HostTensor] {
        &self.block.tensors
    }
}

impl<A: StagingAllocator<Buffer = PinnedBuffer>> Drop for ModelOffloader<A> {
    fn drop(&mut self) {
        let _ = self.streams.synchronize();
    }
}

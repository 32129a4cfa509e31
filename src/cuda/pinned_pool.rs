//! [`PinnedPool`]: page-locked staging buffers keyed by the caller's tensor id, under a byte cap, with
//! LRU eviction of buffers no copy is reading and a pageable fallback.
//!
//! The bookkeeping is generic over a [`StagingAllocator`] so a test drives it with a fake allocator on
//! a machine without a GPU; [`PinnedPool`] is the pool over real pinned memory. No FFI here: the real
//! allocator is [`PinnedBuffer::new`], and "is a copy reading this buffer" is
//! [`PinnedBuffer::is_in_flight`] (events the copies recorded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::CudaContext;

use super::device::Device;
use super::pinned::{PinnedBuffer, PinnedFlags};
use crate::error::{Error, Result};

/// The caller's identifier of a tensor (a pool never keys by shape: two tensors of one shape are two
/// entries).
pub type TensorId = u64;

/// A host buffer the pool can hold.
pub trait StagingBuffer: Send + Sync {
    /// Bytes in the buffer.
    fn len(&self) -> usize;
    /// Whether the buffer holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether an asynchronous copy may still read or write it (then it must not be freed).
    fn is_in_flight(&self) -> bool;
    /// The bytes, for filling (called only while no copy is in flight and no lease is out).
    fn bytes_mut(&mut self) -> &mut [u8];
}

/// Makes [`StagingBuffer`]s; an error means "pinning refused" and the pool falls back to pageable.
pub trait StagingAllocator: Send + Sync {
    /// The buffer type.
    type Buffer: StagingBuffer;
    /// Allocates `bytes` bytes.
    fn allocate(&self, bytes: usize) -> Result<Self::Buffer>;
}

impl StagingBuffer for PinnedBuffer {
    fn len(&self) -> usize {
        PinnedBuffer::len(self)
    }
    fn is_in_flight(&self) -> bool {
        PinnedBuffer::is_in_flight(self)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

/// Page-locked memory from the driver ([`PinnedFlags::Portable`], the fastest measured on the H100).
pub struct PinnedAllocator {
    ctx: Arc<CudaContext>,
    flags: PinnedFlags,
}

impl PinnedAllocator {
    /// Pins in `ctx` with `flags`.
    pub fn new(ctx: &Arc<CudaContext>, flags: PinnedFlags) -> Self {
        PinnedAllocator {
            ctx: ctx.clone(),
            flags,
        }
    }
}

impl StagingAllocator for PinnedAllocator {
    type Buffer = PinnedBuffer;
    fn allocate(&self, bytes: usize) -> Result<PinnedBuffer> {
        PinnedBuffer::new(&self.ctx, bytes, self.flags)
    }
}

/// Any closure from a byte count to a [`PinnedBuffer`] is an allocator: a test hook (refuse pinning,
/// count allocations) or a custom policy, without test code in the pool.
impl<F: Fn(usize) -> Result<PinnedBuffer> + Send + Sync> StagingAllocator for F {
    type Buffer = PinnedBuffer;
    fn allocate(&self, bytes: usize) -> Result<PinnedBuffer> {
        self(bytes)
    }
}

/// Where a tensor's bytes are staged.
pub enum Staged<B> {
    /// In the pool. Holding the lease keeps the buffer from eviction; a copy enqueued from it keeps it
    /// busy after the lease is dropped, until the copy finishes.
    Pinned(Arc<B>),
    /// Not in the pool (pinning refused, the cap reached by busy buffers, or a tensor larger than the
    /// cap): copy from the caller's own (pageable) memory.
    Pageable,
}

/// The pool's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// `stage` calls served by a buffer already in the pool.
    pub hits: u64,
    /// `stage` calls that allocated and filled a buffer.
    pub misses: u64,
    /// `stage` calls answered [`Staged::Pageable`].
    pub fallbacks: u64,
    /// Buffers freed to make room or by a lowered cap.
    pub evictions: u64,
    /// Bytes held now.
    pub bytes_pinned: usize,
    /// The most bytes ever held at once.
    pub peak_bytes_pinned: usize,
    /// Buffers held now.
    pub entries: usize,
    /// The byte cap.
    pub cap_bytes: usize,
}

impl PoolStats {
    /// hits / (hits + misses + fallbacks), 0 before the first call.
    pub fn hit_rate(&self) -> f64 {
        let all = self.hits + self.misses + self.fallbacks;
        if all == 0 {
            0.0
        } else {
            self.hits as f64 / all as f64
        }
    }
}

struct Entry<B> {
    buf: Arc<B>,
    last_use: u64,
}

struct State<B> {
    entries: HashMap<TensorId, Entry<B>>,
    /// Bytes of `entries` plus bytes reserved by `stage` calls allocating outside the lock.
    bytes: usize,
    tick: u64,
    stats: PoolStats,
    warned: bool,
}

/// Staging buffers keyed by tensor id under a byte cap; thread-safe (`&self` everywhere).
///
/// ```
/// use nvfp4::cuda::{Pool, Staged, StagingAllocator, StagingBuffer};
/// struct Heap;
/// struct Buf(Vec<u8>);
/// impl StagingBuffer for Buf {
///     fn len(&self) -> usize { self.0.len() }
///     fn is_in_flight(&self) -> bool { false }
///     fn bytes_mut(&mut self) -> &mut [u8] { &mut self.0 }
/// }
/// impl StagingAllocator for Heap {
///     type Buffer = Buf;
///     fn allocate(&self, n: usize) -> nvfp4::Result<Buf> { Ok(Buf(vec![0; n])) }
/// }
/// let pool = Pool::with_allocator(Heap, 1024);
/// let s = pool.stage(7, 100, |b| b.fill(1))?;
/// assert!(matches!(s, Staged::Pinned(_)));
/// assert_eq!(pool.stats().misses, 1);
/// # Ok::<(), nvfp4::Error>(())
/// ```
pub struct Pool<A: StagingAllocator> {
    alloc: A,
    cap: Mutex<usize>,
    state: Mutex<State<A::Buffer>>,
}

/// The pool over real pinned memory.
pub type PinnedPool = Pool<PinnedAllocator>;

/// Default cap: 4 GiB, 6 GiB on compute capability 12 and newer (RTX 50 / RTX PRO machines stream
/// larger models and usually have the host memory for it).
pub fn default_pool_cap(dev: &Device) -> usize {
    if dev.info().compute_capability.0 >= 12 {
        6 << 30
    } else {
        4 << 30
    }
}

impl PinnedPool {
    /// A pool of portable pinned memory on `dev` with the default cap ([`default_pool_cap`]).
    ///
    /// ```no_run
    /// let dev = nvfp4::cuda::Device::new(0)?;
    /// let pool = nvfp4::cuda::PinnedPool::new(&dev);
    /// assert_eq!(pool.stats().bytes_pinned, 0);
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn new(dev: &Device) -> Self {
        Pool::with_allocator(
            PinnedAllocator::new(dev.context(), PinnedFlags::Portable),
            default_pool_cap(dev),
        )
    }
}

impl<A: StagingAllocator> Pool<A> {
    /// A pool taking buffers from `alloc`, holding at most `cap_bytes`.
    pub fn with_allocator(alloc: A, cap_bytes: usize) -> Self {
        Pool {
            alloc,
            cap: Mutex::new(cap_bytes),
            state: Mutex::new(State {
                entries: HashMap::new(),
                bytes: 0,
                tick: 0,
                stats: PoolStats {
                    cap_bytes,
                    ..PoolStats::default()
                },
                warned: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<A::Buffer>> {
        // Every update below keeps the state consistent before anything that can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cap(&self) -> usize {
        *self.cap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The staged bytes of tensor `id` (`bytes` long): the pooled buffer on a hit; on a miss a new
    /// buffer that `fill` writes (once, before anyone can copy from it); or [`Staged::Pageable`] when
    /// the pool cannot hold it, after one warning on stderr per pool.
    ///
    /// A hit with a different length is an error: the caller reused an id for another tensor.
    pub fn stage(
        &self,
        id: TensorId,
        bytes: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Staged<A::Buffer>> {
        let cap = self.cap();
        {
            let mut st = self.lock();
            st.tick += 1;
            let tick = st.tick;
            if let Some(e) = st.entries.get_mut(&id) {
                if e.buf.len() != bytes {
                    let held = e.buf.len();
                    return Err(Error::invalid(
                        &format!("tensor id {id}"),
                        format!("staged with {held} bytes, now asked for {bytes}: one id per tensor"),
                    ));
                }
                e.last_use = tick;
                let buf = e.buf.clone();
                st.stats.hits += 1;
                return Ok(Staged::Pinned(buf));
            }
            if !Self::make_room(&mut st, cap, bytes) {
                return Ok(self.fall_back(&mut st, || {
                    format!(
                        "tensor id {id} ({bytes} bytes) does not fit the pinned pool's cap of {cap} bytes \
                         beside the buffers copies are reading"
                    )
                }));
            }
            // Reserve the bytes, then allocate and fill without the lock (pinning and a memcpy of a
            // large tensor must not serialize other threads' hits).
            st.bytes += bytes;
        }
        let unreserve = |st: &mut State<A::Buffer>| st.bytes -= bytes;
        let mut buf = match self.alloc.allocate(bytes) {
            Ok(b) => b,
            Err(e) => {
                let mut st = self.lock();
                unreserve(&mut st);
                return Ok(self.fall_back(&mut st, || format!("pinning {bytes} bytes failed: {e}")));
            }
        };
        fill(buf.bytes_mut());
        let mut st = self.lock();
        unreserve(&mut st);
        st.tick += 1;
        let tick = st.tick;
        if let Some(e) = st.entries.get_mut(&id) {
            // Another thread staged the same id meanwhile: keep the first, ours is dropped.
            e.last_use = tick;
            let b = e.buf.clone();
            st.stats.hits += 1;
            return Ok(Staged::Pinned(b));
        }
        let buf = Arc::new(buf);
        st.bytes += bytes;
        st.entries.insert(
            id,
            Entry {
                buf: buf.clone(),
                last_use: tick,
            },
        );
        st.stats.misses += 1;
        Self::update_gauges(&mut st);
        Ok(Staged::Pinned(buf))
    }

    fn fall_back(&self, st: &mut State<A::Buffer>, why: impl FnOnce() -> String) -> Staged<A::Buffer> {
        st.stats.fallbacks += 1;
        if !st.warned {
            st.warned = true;
            eprintln!(
                "nvfp4 warning: {}; staging from pageable memory (slower copies). Further fallbacks of \
                 this pool are counted in its stats, not printed.",
                why()
            );
        }
        Staged::Pageable
    }

    /// Whether an entry can be freed: no lease out and no copy in flight.
    fn idle(e: &Entry<A::Buffer>) -> bool {
        Arc::strong_count(&e.buf) == 1 && !e.buf.is_in_flight()
    }

    /// Evicts idle entries, least recently used first, until `need` more bytes fit under `cap`.
    /// False (nothing evicted) when even evicting every idle entry would not make room.
    fn make_room(st: &mut State<A::Buffer>, cap: usize, need: usize) -> bool {
        if st.bytes.checked_add(need).is_some_and(|t| t <= cap) {
            return true;
        }
        let mut idle: Vec<(u64, TensorId, usize)> = st
            .entries
            .iter()
            .filter(|(_, e)| Self::idle(e))
            .map(|(&id, e)| (e.last_use, id, e.buf.len()))
            .collect();
        let freeable: usize = idle.iter().map(|x| x.2).sum();
        if need > cap || st.bytes - freeable > cap - need {
            return false;
        }
        idle.sort_unstable();
        for (_, id, len) in idle {
            if st.bytes + need <= cap {
                break;
            }
            st.entries.remove(&id);
            st.bytes -= len;
            st.stats.evictions += 1;
        }
        Self::update_gauges(st);
        true
    }

    fn update_gauges(st: &mut State<A::Buffer>) {
        let held: usize = st.entries.values().map(|e| e.buf.len()).sum();
        st.stats.bytes_pinned = held;
        st.stats.peak_bytes_pinned = st.stats.peak_bytes_pinned.max(held);
        st.stats.entries = st.entries.len();
    }

    /// Changes the cap; idle buffers beyond it are evicted now, busy ones when a later `stage` or
    /// `trim` finds them idle.
    pub fn set_cap(&self, cap_bytes: usize) {
        *self.cap.lock().unwrap_or_else(|p| p.into_inner()) = cap_bytes;
        let mut st = self.lock();
        st.stats.cap_bytes = cap_bytes;
        drop(st);
        self.trim();
    }

    /// Evicts idle buffers, least recently used first, until the pool is within its cap.
    pub fn trim(&self) {
        let cap = self.cap();
        let mut st = self.lock();
        let mut idle: Vec<(u64, TensorId, usize)> = st
            .entries
            .iter()
            .filter(|(_, e)| Self::idle(e))
            .map(|(&id, e)| (e.last_use, id, e.buf.len()))
            .collect();
        idle.sort_unstable();
        for (_, id, len) in idle {
            if st.bytes <= cap {
                break;
            }
            st.entries.remove(&id);
            st.bytes -= len;
            st.stats.evictions += 1;
        }
        Self::update_gauges(&mut st);
    }

    /// Frees every idle buffer (busy ones stay); returns the bytes freed.
    pub fn clear_idle(&self) -> usize {
        let mut st = self.lock();
        let ids: Vec<TensorId> = st
            .entries
            .iter()
            .filter(|(_, e)| Self::idle(e))
            .map(|(&id, _)| id)
            .collect();
        let mut freed = 0;
        for id in ids {
            if let Some(e) = st.entries.remove(&id) {
                freed += e.buf.len();
                st.bytes -= e.buf.len();
                st.stats.evictions += 1;
            }
        }
        Self::update_gauges(&mut st);
        freed
    }

    /// Drops tensor `id`'s staged bytes (the tensor changed). A copy still reading them keeps the
    /// buffer alive until it finishes; the pool forgets it now.
    pub fn invalidate(&self, id: TensorId) {
        let mut st = self.lock();
        if let Some(e) = st.entries.remove(&id) {
            st.bytes -= e.buf.len();
        }
        Self::update_gauges(&mut st);
    }

    /// Whether tensor `id` is in the pool.
    pub fn contains(&self, id: TensorId) -> bool {
        self.lock().entries.contains_key(&id)
    }

    /// The counters now.
    pub fn stats(&self) -> PoolStats {
        let mut st = self.lock();
        Self::update_gauges(&mut st);
        st.stats
    }
}

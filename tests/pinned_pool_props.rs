//! The pinned pool's bookkeeping as a proptest state machine, on a fake allocator (no GPU needed):
//! random sequences of stage / hold / release / copy start and finish / cap changes / trims /
//! pinning refusals, with the accounting invariants checked after every step.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nvfp4::cuda::{Pool, Staged, StagingAllocator, StagingBuffer};
use proptest::prelude::*;

/// A heap buffer whose "copy in flight" flag the test sets; dropping it while the flag is set records
/// a violation (the pool freed memory a DMA was reading).
struct FakeBuf {
    bytes: Vec<u8>,
    in_flight: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    violations: Arc<AtomicUsize>,
}

impl StagingBuffer for FakeBuf {
    fn len(&self) -> usize {
        self.bytes.len()
    }
    fn is_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst)
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        assert!(!self.is_in_flight(), "filled while a copy reads it");
        &mut self.bytes
    }
}

impl Drop for FakeBuf {
    fn drop(&mut self) {
        if self.is_in_flight() {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        self.live.fetch_sub(self.bytes.len(), Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct FakeAlloc {
    refuse: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    violations: Arc<AtomicUsize>,
}

impl StagingAllocator for FakeAlloc {
    type Buffer = FakeBuf;
    fn allocate(&self, n: usize) -> nvfp4::Result<FakeBuf> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(nvfp4::Error::OutOfMemory {
                name: "fake pinned".into(),
                bytes: n,
            });
        }
        self.live.fetch_add(n, Ordering::SeqCst);
        Ok(FakeBuf {
            bytes: vec![0; n],
            in_flight: Arc::new(AtomicBool::new(false)),
            live: self.live.clone(),
            violations: self.violations.clone(),
        })
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Stage tensor `id` and drop the lease at once.
    Stage(u64),
    /// Stage and keep the lease.
    Hold(u64),
    /// Drop the oldest held lease.
    Release,
    /// Stage, mark a copy in flight, drop the lease (a copy enqueued from it).
    StartCopy(u64),
    /// The oldest copy finishes.
    FinishCopy,
    SetCap(usize),
    Trim,
    ClearIdle,
    RefusePinning(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..12).prop_map(Op::Stage),
        2 => (0u64..12).prop_map(Op::Hold),
        2 => Just(Op::Release),
        2 => (0u64..12).prop_map(Op::StartCopy),
        2 => Just(Op::FinishCopy),
        1 => (0usize..4000).prop_map(Op::SetCap),
        1 => Just(Op::Trim),
        1 => Just(Op::ClearIdle),
        1 => any::<bool>().prop_map(Op::RefusePinning),
    ]
}

/// Every tensor has its own size and fill byte (ids, not shapes: ids 0 and 6 share a size).
fn size_of(id: u64) -> usize {
    [100, 300, 700, 1, 0, 1200, 100, 250, 900, 64, 2000, 333][id as usize]
}

fn byte_of(id: u64) -> u8 {
    id as u8 * 17 + 3
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pool_accounting_holds_and_never_frees_busy_buffers(
        cap in 0usize..4000,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let alloc = FakeAlloc::default();
        let pool = Pool::with_allocator(alloc.clone(), cap);
        let mut cap = cap;
        let mut held: Vec<(u64, Arc<FakeBuf>)> = Vec::new();
        let mut copies: Vec<(u64, Arc<AtomicBool>)> = Vec::new();
        let mut calls = 0u64;
        for op in &ops {
            let stage = |id: u64| -> Staged<FakeBuf> {
                let mut filled = false;
                let s = pool
                    .stage(id, size_of(id), |b| { filled = true; b.fill(byte_of(id)) })
                    .expect("a full or refusing pool falls back, never fails");
                if let Staged::Pinned(b) = &s {
                    assert!(b.bytes.iter().all(|&x| x == byte_of(id)), "tensor {id} staged bytes are another tensor's");
                }
                s
            };
            match *op {
                Op::Stage(id) => { calls += 1; let _ = stage(id); }
                Op::Hold(id) => {
                    calls += 1;
                    if let Staged::Pinned(b) = stage(id) { held.push((id, b)); }
                }
                Op::Release => { if !held.is_empty() { held.remove(0); } }
                Op::StartCopy(id) => {
                    calls += 1;
                    if let Staged::Pinned(b) = stage(id) {
                        b.in_flight.store(true, Ordering::SeqCst);
                        copies.push((id, b.in_flight.clone()));
                    }
                }
                Op::FinishCopy => {
                    if !copies.is_empty() {
                        let (_, f) = copies.remove(0);
                        // Only clear when no other copy of the same buffer is still pending.
                        if !copies.iter().any(|(_, g)| Arc::ptr_eq(g, &f)) {
                            f.store(false, Ordering::SeqCst);
                        }
                    }
                }
                Op::SetCap(c) => { cap = c; pool.set_cap(c); }
                Op::Trim => pool.trim(),
                Op::ClearIdle => { pool.clear_idle(); }
                Op::RefusePinning(r) => alloc.refuse.store(r, Ordering::SeqCst),
            }
            let st = pool.stats();
            prop_assert_eq!(alloc.violations.load(Ordering::SeqCst), 0, "a buffer was freed while a copy read it");
            prop_assert_eq!(st.hits + st.misses + st.fallbacks, calls);
            // Busy buffers stay in the pool, under their own id.
            for (id, _) in &held { prop_assert!(pool.contains(*id), "held tensor {} evicted", id); }
            for (id, _) in &copies { prop_assert!(pool.contains(*id), "tensor {} evicted mid-copy", id); }
            // Bytes the pool reports are exactly the bytes of its entries; leases kept past eviction
            // (none here) would be the only difference to live allocations.
            let live = alloc.live.load(Ordering::SeqCst);
            prop_assert_eq!(st.bytes_pinned, live);
            prop_assert!(st.peak_bytes_pinned >= st.bytes_pinned);
            prop_assert_eq!(st.cap_bytes, cap);
            // Over the cap only while busy buffers hold it there: after a trim nothing idle remains.
            if matches!(op, Op::SetCap(_) | Op::Trim) && st.bytes_pinned > cap {
                let mut busy: HashMap<u64, ()> = HashMap::new();
                held.iter().for_each(|(id, _)| { busy.insert(*id, ()); });
                copies.iter().for_each(|(id, _)| { busy.insert(*id, ()); });
                let busy_bytes: usize = busy.keys().map(|&id| size_of(id)).sum();
                prop_assert_eq!(st.bytes_pinned, busy_bytes, "idle buffers left above the cap");
            }
        }
        // Once every lease is dropped and every copy finished, the pool can free everything.
        held.clear();
        copies.iter().for_each(|(_, f)| f.store(false, Ordering::SeqCst));
        pool.clear_idle();
        prop_assert_eq!(pool.stats().bytes_pinned, 0);
        prop_assert_eq!(alloc.live.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn reusing_an_id_for_another_size_is_an_error() {
    let pool = Pool::with_allocator(FakeAlloc::default(), 1 << 20);
    assert!(pool.stage(1, 10, |_| {}).is_ok());
    let e = pool.stage(1, 11, |_| {}).err().expect("error");
    assert!(e.to_string().contains("tensor id 1"), "{e}");
}

#[test]
fn refused_pinning_falls_back_and_counts() {
    let alloc = FakeAlloc::default();
    alloc.refuse.store(true, Ordering::SeqCst);
    let pool = Pool::with_allocator(alloc, 1 << 20);
    assert!(matches!(pool.stage(1, 10, |_| {}), Ok(Staged::Pageable)));
    assert!(matches!(pool.stage(1, 10, |_| {}), Ok(Staged::Pageable)));
    let st = pool.stats();
    assert_eq!((st.fallbacks, st.misses, st.bytes_pinned), (2, 0, 0));
}

#[test]
fn lru_evicts_the_least_recently_used_idle_buffer() {
    let pool = Pool::with_allocator(FakeAlloc::default(), 300);
    for id in [1, 2, 3] {
        let _ = pool.stage(id, 100, |_| {}).unwrap();
    }
    let _ = pool.stage(1, 100, |_| {}).unwrap(); // 1 is now the most recent
    let _ = pool.stage(4, 100, |_| {}).unwrap(); // evicts 2
    assert!(pool.contains(1) && !pool.contains(2) && pool.contains(3) && pool.contains(4));
    assert_eq!(pool.stats().evictions, 1);
    assert_eq!(pool.stats().hit_rate(), 1.0 / 5.0);
}

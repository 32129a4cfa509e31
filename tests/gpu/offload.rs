//! Weight streaming on the device: the checksum kernel against its CPU twin, a randomized BlockSwap
//! stress where every block's compute checksums the bytes it sees (a stale, half-copied or misplaced
//! slot fails), NVFP4 views dequantized bit for bit, the model offloader, and the fault paths.

use std::sync::Arc;

use nvfp4::cuda::{
    Device, PinnedBuffer, PinnedPool, Pool, StreamSet, alloc_zeros, checksum, download, upload,
};
use nvfp4::offload::{self, HostBlock, HostTensor, LayerPrefetcher, ModelOffloader, PrefetchConfig, Weight};
use nvfp4::ops;
use nvfp4::quant::{self, QuantizeOptions};
use nvfp4::reference::synthetic::Rng;
use nvfp4::{Error, Nvfp4Tensor};

use crate::common::{device, under_sanitizer};

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// A model of `n` blocks with 1..4 tensors each: random bytes of random (odd) sizes, and now and then
/// a small NVFP4 tensor. Ids are unique over the model.
fn random_model(rng: &mut Rng, n: usize, max_bytes: usize) -> Vec<HostBlock> {
    let mut id = 0u64;
    (0..n)
        .map(|_| {
            let k = 1 + (rng.next_u64() % 4) as usize;
            let tensors = (0..k)
                .map(|j| {
                    id += 1;
                    let w = if rng.next_u64() % 4 == 0 {
                        let (rows, cols) = (
                            1 + (rng.next_u64() % 40) as usize,
                            16 * (1 + (rng.next_u64() % 8) as usize),
                        );
                        let x = rng.normal_vec(rows * cols, 1.0);
                        Weight::Nvfp4(
                            quant::quantize("w", &x, rows, cols, &QuantizeOptions::default()).unwrap(),
                        )
                    } else {
                        {
                            let len = (rng.next_u64() as usize) % max_bytes;
                            Weight::Bytes(random_bytes(rng, len))
                        }
                    };
                    HostTensor::new(id, format!("t{j}"), w).unwrap()
                })
                .collect();
            HostBlock { tensors }
        })
        .collect()
}

fn free_device_bytes(dev: &Device) -> usize {
    dev.context().synchronize().unwrap();
    dev.context().mem_get_info().unwrap().0
}

/// The offload tests that measure device memory run one at a time (free memory is process-wide).
static MEMORY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `cycle` once to let the driver make its one-time allocations (a first run on the device
/// measured exactly 40 MiB of those), then twice more, and checks that free device memory returned
/// to the figure between: a per-cycle leak fails. Free memory is process-wide and other test modules
/// run beside this one (a first cuBLAS handle alone takes ~100 MiB and keeps it), so a drop is
/// measured again, from the new figure, up to three times: a leak of the offloader's recurs every
/// time, someone else's one-off allocation does not. Each measurement also polls briefly.
fn assert_no_device_leak(dev: &Device, what: &str, mut cycle: impl FnMut()) {
    let _serial = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    cycle();
    let mut before = free_device_bytes(dev);
    let mut drops = Vec::new();
    for _attempt in 0..3 {
        cycle();
        cycle();
        let mut after = free_device_bytes(dev);
        for _ in 0..40 {
            if after + (8 << 20) >= before {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            after = free_device_bytes(dev);
        }
        drops.push(before.saturating_sub(after));
        before = after;
    }
    panic!(
        "{what}: device memory leaked: free memory fell by {drops:?} bytes over three rounds of two cycles"
    );
}

#[test]
fn gpu_checksum_kernel_matches_cpu() {
    let Some(dev) = device("gpu_checksum_kernel_matches_cpu") else {
        return;
    };
    let stream = dev.new_stream().unwrap();
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let data = random_bytes(&mut rng, 300_001);
    let d = upload(&stream, "data", &data).unwrap();
    // Odd lengths and unaligned starts take the scalar path; aligned ones the vector loads.
    let cases = [
        (0, 0),
        (0, 1),
        (0, 15),
        (0, 16),
        (1, 17),
        (3, 4096),
        (16, 100_000),
        (5, 299_990),
        (0, 300_001),
    ];
    let mut sums = upload(&stream, "sums", &vec![0u64; cases.len()]).unwrap();
    for (k, &(off, len)) in cases.iter().enumerate() {
        checksum(&dev, &stream, &d.slice(off..off + len), &mut sums, k).unwrap();
    }
    let got = download(&stream, "sums", &sums).unwrap();
    for (k, &(off, len)) in cases.iter().enumerate() {
        assert_eq!(
            got[k],
            offload::checksum(&data[off..off + len]),
            "seed {seed}: bytes {off}..{}",
            off + len
        );
    }
    let e = checksum(&dev, &stream, &d, &mut sums, cases.len()).unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e}");
}

/// Runs `passes` passes, each block's compute adding its checksum to its own cell; checks every cell.
fn run_and_check<A>(
    dev: &Device,
    pf: &mut LayerPrefetcher<A>,
    expected: &[u64],
    passes: usize,
    what: &str,
) -> Vec<offload::PassStats>
where
    A: nvfp4::cuda::StagingAllocator<Buffer = PinnedBuffer>,
{
    let n = expected.len();
    let compute = pf.streams().compute.clone();
    let mut sums = alloc_zeros::<u64>(&compute, "sums", n * passes).unwrap();
    let mut stats = Vec::new();
    for p in 0..passes {
        pf.begin_pass().unwrap();
        for i in 0..n {
            let b = pf.block(i).unwrap();
            checksum(dev, &compute, &b.bytes(), &mut sums, p * n + i).unwrap();
            pf.done(i).unwrap();
        }
        stats.push(pf.end_pass().unwrap());
    }
    let got = download(&compute, "sums", &sums).unwrap();
    for p in 0..passes {
        for i in 0..n {
            assert_eq!(
                got[p * n + i],
                expected[i],
                "{what}: pass {p} block {i} saw other bytes than its own"
            );
        }
    }
    for s in &stats {
        assert!(
            (0.0..=1.0).contains(&s.overlap()) && s.stall_ms >= 0.0 && s.pass_ms > 0.0,
            "{what}: {s:?}"
        );
    }
    stats
}

#[test]
fn gpu_prefetch_stress_every_block_sees_its_own_bytes() {
    let Some(dev) = device("gpu_prefetch_stress_every_block_sees_its_own_bytes") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let _serial = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    let configs = if under_sanitizer() { 3 } else { 40 };
    for c in 0..configs {
        let n = 1 + (rng.next_u64() % 9) as usize;
        let blocks = random_model(&mut rng, n, if c % 5 == 0 { 1 << 20 } else { 50_000 });
        let expected: Vec<u64> = blocks
            .iter()
            .map(|b| offload::checksum(&b.device_image().unwrap()))
            .collect();
        let working_set: usize = blocks.iter().map(|b| b.device_bytes().unwrap()).sum();
        let sizes: Vec<usize> = blocks.iter().map(|b| b.device_bytes().unwrap()).collect();
        let cfg = PrefetchConfig {
            blocks_to_swap: (rng.next_u64() as usize) % (n + 1),
            depth: 1 + (rng.next_u64() % 4) as usize,
            prefetch_next_pass: rng.next_u64() % 3 != 0,
            vram_budget: None,
        };
        // Caps from none at all (every tensor pageable) to more than the working set.
        let cap = match rng.next_u64() % 4 {
            0 => 0,
            1 => working_set / 3,
            2 => working_set * 2 / 3,
            _ => working_set * 2,
        };
        let expected_streamed_bytes: usize = sizes[..cfg.blocks_to_swap].iter().sum();
        let what = format!("seed {seed} config {c}: {n} blocks, {cfg:?}, pool cap {cap} of {working_set}");
        let pool = Arc::new(Pool::with_allocator(
            nvfp4::cuda::PinnedAllocator::new(dev.context(), nvfp4::cuda::PinnedFlags::Portable),
            cap,
        ));
        let mut pf =
            LayerPrefetcher::new(&dev, StreamSet::new(&dev).unwrap(), pool.clone(), blocks, cfg).unwrap();
        let passes = 2 + (rng.next_u64() % 3) as usize;
        run_and_check(&dev, &mut pf, &expected, passes, &what);
        let st = pool.stats();
        assert!(st.bytes_pinned <= cap, "{what}: pool over its cap: {st:?}");
        // The pool stages only the streamed blocks (the first `blocks_to_swap`): it must evict or
        // fall back exactly when their bytes exceed its cap.
        let streamed: usize = expected_streamed_bytes;
        if cap < streamed && cfg.blocks_to_swap > cfg.depth {
            assert!(
                st.evictions + st.fallbacks > 0,
                "{what}: a small pool neither evicted nor fell back: {st:?}"
            );
        }
    }
}

#[test]
fn gpu_prefetch_nvfp4_views_dequantize_like_cpu() {
    let Some(dev) = device("gpu_prefetch_nvfp4_views_dequantize_like_cpu") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let mut host: Vec<Nvfp4Tensor> = Vec::new();
    let blocks: Vec<HostBlock> = (0..5u64)
        .map(|b| {
            let (rows, cols) = (
                1 + (rng.next_u64() % 130) as usize,
                16 * (1 + (rng.next_u64() % 20) as usize),
            );
            let x = rng.normal_vec(rows * cols, 2.0);
            let t = quant::quantize("w", &x, rows, cols, &QuantizeOptions::default()).unwrap();
            host.push(t.clone());
            HostBlock {
                tensors: vec![
                    HostTensor::new(b * 2, "bias", Weight::Bytes(random_bytes(&mut rng, 77))).unwrap(),
                    HostTensor::new(b * 2 + 1, "w", Weight::Nvfp4(t)).unwrap(),
                ],
            }
        })
        .collect();
    let cfg = PrefetchConfig {
        blocks_to_swap: 4,
        depth: 2,
        ..Default::default()
    };
    let mut pf = LayerPrefetcher::new(
        &dev,
        StreamSet::new(&dev).unwrap(),
        Arc::new(PinnedPool::new(&dev)),
        blocks,
        cfg,
    )
    .unwrap();
    let compute = pf.streams().compute.clone();
    let mut outs = Vec::new();
    for (i, t) in host.iter().enumerate() {
        let b = pf.block(i).unwrap();
        let v = b.get("w").unwrap().nvfp4().unwrap();
        assert_eq!((v.rows, v.cols), (t.rows(), t.cols()));
        let mut out = upload(&compute, "out", &vec![f32::NAN; t.rows() * t.cols()]).unwrap();
        ops::dequantize_view(&dev, &compute, &v, &mut out).unwrap();
        outs.push(out);
        assert!(b.get("bias").unwrap().nvfp4().is_err());
        pf.done(i).unwrap();
    }
    pf.end_pass().unwrap();
    for (i, (t, out)) in host.iter().zip(&outs).enumerate() {
        let cpu: Vec<f32> = quant::dequantize(t);
        let gpu = download(&compute, "out", out).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&gpu), bits(&cpu), "seed {seed}: block {i}");
    }
}

#[test]
fn gpu_model_offloader_round_trip() {
    let Some(dev) = device("gpu_model_offloader_round_trip") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let tensors: Vec<HostTensor> = (0..4u64)
        .map(|i| {
            HostTensor::new(
                i,
                format!("t{i}"),
                Weight::Bytes(random_bytes(&mut rng, 10_000 + i as usize * 333)),
            )
            .unwrap()
        })
        .collect();
    let image = HostBlock {
        tensors: tensors.clone(),
    }
    .device_image()
    .unwrap();
    assert_no_device_leak(&dev, &format!("seed {seed} offloader"), || {
        let streams = StreamSet::new(&dev).unwrap();
        let mut off = ModelOffloader::new(
            &dev,
            streams.clone(),
            Arc::new(PinnedPool::new(&dev)),
            tensors.clone(),
        )
        .unwrap();
        for round in 0..3 {
            let ready = off.to_device().unwrap();
            streams.wait(&streams.compute, &ready).unwrap();
            let mut sums = alloc_zeros::<u64>(&streams.compute, "sums", 1).unwrap();
            checksum(
                &dev,
                &streams.compute,
                &off.block().unwrap().bytes(),
                &mut sums,
                0,
            )
            .unwrap();
            assert_eq!(
                download(&streams.compute, "sums", &sums).unwrap()[0],
                offload::checksum(&image),
                "seed {seed} round {round}"
            );
            off.download(2).unwrap();
            off.finish_downloads().unwrap();
            assert!(
                matches!(&off.tensors()[2].weight, Weight::Bytes(b) if matches!(&tensors[2].weight, Weight::Bytes(a) if a == b))
            );
            off.to_host().unwrap();
            assert!(!off.is_on_device());
        }
        drop(off);
    });
}

#[test]
fn gpu_prefetch_pinning_refused_falls_back_to_pageable() {
    let Some(dev) = device("gpu_prefetch_pinning_refused_falls_back_to_pageable") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let blocks = random_model(&mut rng, 6, 100_000);
    let expected: Vec<u64> = blocks
        .iter()
        .map(|b| offload::checksum(&b.device_image().unwrap()))
        .collect();
    let refuse = |n: usize| -> nvfp4::Result<PinnedBuffer> {
        Err(Error::OutOfMemory {
            name: "pinned host buffer (refused by the test)".into(),
            bytes: n,
        })
    };
    let pool = Arc::new(Pool::with_allocator(refuse, 1 << 30));
    let cfg = PrefetchConfig {
        blocks_to_swap: 5,
        depth: 2,
        ..Default::default()
    };
    let mut pf =
        LayerPrefetcher::new(&dev, StreamSet::new(&dev).unwrap(), pool.clone(), blocks, cfg).unwrap();
    let stats = run_and_check(
        &dev,
        &mut pf,
        &expected,
        2,
        &format!("seed {seed} refused pinning"),
    );
    assert!(stats.iter().all(|s| s.pageable_tensors > 0), "{stats:?}");
    let st = pool.stats();
    assert!(
        st.fallbacks > 0 && st.bytes_pinned == 0 && st.misses == 0,
        "{st:?}"
    );
}

#[test]
fn gpu_prefetch_device_out_of_memory_is_typed_and_leaks_nothing() {
    let Some(dev) = device("gpu_prefetch_device_out_of_memory_is_typed_and_leaks_nothing") else {
        return;
    };
    if under_sanitizer() {
        // memcheck reports each refused allocation of the memory hog as an API error.
        eprintln!(
            "SKIPPED gpu_prefetch_device_out_of_memory_is_typed_and_leaks_nothing under compute-sanitizer"
        );
        return;
    }
    let mut rng = Rng::new(Rng::fresh_seed());
    let blocks: Vec<HostBlock> = (0..3u64)
        .map(|i| HostBlock {
            tensors: vec![HostTensor::new(i, "w", Weight::Bytes(random_bytes(&mut rng, 64 << 20))).unwrap()],
        })
        .collect();
    // A VRAM budget below the configuration: refused before any allocation.
    let cfg = PrefetchConfig {
        blocks_to_swap: 2,
        depth: 2,
        vram_budget: Some(100 << 20),
        ..Default::default()
    };
    let e = LayerPrefetcher::new(
        &dev,
        StreamSet::new(&dev).unwrap(),
        Arc::new(PinnedPool::new(&dev)),
        blocks.clone(),
        cfg,
    )
    .err()
    .expect("over budget");
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
    // A real device OOM: fill the device, leaving less than the slots need.
    assert_no_device_leak(&dev, "device OOM", || {
        let stream = dev.new_stream().unwrap();
        let hog =
            alloc_zeros::<u8>(&stream, "hog", free_device_bytes(&dev).saturating_sub(96 << 20)).unwrap();
        let cfg = PrefetchConfig {
            blocks_to_swap: 2,
            depth: 2,
            ..Default::default()
        };
        let pool = Arc::new(PinnedPool::new(&dev));
        let e = LayerPrefetcher::new(
            &dev,
            StreamSet::new(&dev).unwrap(),
            pool.clone(),
            blocks.clone(),
            cfg,
        )
        .err()
        .expect("device out of memory");
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
        drop(hog);
        assert_eq!(pool.stats().bytes_pinned, 0);
    });
}

#[test]
fn gpu_prefetch_kernel_error_mid_pass_recovers_without_leaks() {
    let Some(dev) = device("gpu_prefetch_kernel_error_mid_pass_recovers_without_leaks") else {
        return;
    };
    let seed = Rng::fresh_seed();
    let mut rng = Rng::new(seed);
    let blocks = random_model(&mut rng, 7, 200_000);
    let expected: Vec<u64> = blocks
        .iter()
        .map(|b| offload::checksum(&b.device_image().unwrap()))
        .collect();
    assert_no_device_leak(&dev, &format!("seed {seed} kernel error"), || {
        let pool = Arc::new(PinnedPool::new(&dev));
        let cfg = PrefetchConfig {
            blocks_to_swap: 6,
            depth: 3,
            ..Default::default()
        };
        let mut pf = LayerPrefetcher::new(
            &dev,
            StreamSet::new(&dev).unwrap(),
            pool.clone(),
            blocks.clone(),
            cfg,
        )
        .unwrap();
        let compute = pf.streams().compute.clone();
        let mut sums = alloc_zeros::<u64>(&compute, "sums", 7).unwrap();
        pf.begin_pass().unwrap();
        let mut failed = None;
        for i in 0..7 {
            let b = pf.block(i).unwrap();
            // The engine's kernel fails at block 4 (a launch the launcher refuses: out-of-range output).
            let index = if i == 4 { 99 } else { i };
            if let Err(e) = checksum(&dev, &compute, &b.bytes(), &mut sums, index) {
                failed = Some(e);
                break;
            }
            pf.done(i).unwrap();
        }
        assert!(matches!(failed, Some(Error::Length { .. })), "{failed:?}");
        // Out-of-order use is refused, then the pass is abandoned and a clean one runs.
        assert!(pf.end_pass().is_err());
        pf.abort_pass().unwrap();
        run_and_check(&dev, &mut pf, &expected, 2, &format!("seed {seed} after abort"));
        drop(sums);
        drop(pf);
        // Nothing in flight: the pool can free every buffer.
        pool.clear_idle();
        assert_eq!(pool.stats().bytes_pinned, 0, "{:?}", pool.stats());
    });
}

#[test]
fn gpu_huge_device_allocation_is_typed_out_of_memory_and_leaks_nothing() {
    let Some(dev) = device("gpu_huge_device_allocation_is_typed_out_of_memory_and_leaks_nothing") else {
        return;
    };
    if under_sanitizer() {
        eprintln!(
            "SKIPPED gpu_huge_device_allocation_is_typed_out_of_memory_and_leaks_nothing under compute-sanitizer"
        );
        return;
    }
    // Twice the card: refused whatever else holds memory.
    let huge = dev.context().mem_get_info().unwrap().1 * 2;
    let stream = dev.new_stream().unwrap();
    assert_no_device_leak(&dev, "huge allocation", || {
        let Err(e) = alloc_zeros::<u8>(&stream, "huge", huge) else {
            panic!("a {huge}-byte device allocation succeeded")
        };
        assert!(
            matches!(&e, Error::OutOfMemory { name, bytes } if name == "huge" && *bytes == huge),
            "{e}"
        );
        // The device still works after the refusal.
        let ok = upload(&stream, "small", &[1u8, 2, 3]).unwrap();
        assert_eq!(download(&stream, "small", &ok).unwrap(), [1, 2, 3]);
    });
}

#[test]
fn gpu_pinned_pool_refusing_midway_counts_only_what_it_pinned() {
    let Some(dev) = device("gpu_pinned_pool_refusing_midway_counts_only_what_it_pinned") else {
        return;
    };
    // Pins for real for the first two allocations, then refuses (a pinned-memory limit reached).
    let ctx = dev.context().clone();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let alloc = move |n: usize| -> nvfp4::Result<PinnedBuffer> {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            PinnedBuffer::new(&ctx, n, nvfp4::cuda::PinnedFlags::Portable)
        } else {
            Err(Error::OutOfMemory {
                name: "pinned host buffer (refused by the test)".into(),
                bytes: n,
            })
        }
    };
    let pool = Pool::with_allocator(alloc, 1 << 30);
    let before = pool.stats();
    assert_eq!((before.bytes_pinned, before.entries), (0, 0));
    let sizes = [4096usize, 8192, 16384, 32768];
    for (id, &n) in sizes.iter().enumerate() {
        let staged = pool.stage(id as u64, n, |b| b.fill(id as u8)).unwrap();
        match staged {
            nvfp4::cuda::Staged::Pinned(buf) => assert!(id < 2 && buf.len() == n, "id {id}"),
            nvfp4::cuda::Staged::Pageable => assert!(id >= 2, "id {id} fell back while pinning worked"),
        }
    }
    let st = pool.stats();
    assert_eq!(st.bytes_pinned, sizes[0] + sizes[1], "{st:?}");
    assert_eq!((st.entries, st.misses, st.fallbacks), (2, 2, 2), "{st:?}");
    // Idle buffers freed: nothing stays pinned.
    assert_eq!(pool.clear_idle(), sizes[0] + sizes[1]);
    let after = pool.stats();
    assert_eq!((after.bytes_pinned, after.entries), (0, 0), "{after:?}");
}

//! What every GPU test shares: the device (or a visible skip), seeded test data, and the byte-for-byte
//! tensor comparison.

use nvfp4::Nvfp4Tensor;
use nvfp4::cuda::Device;
use nvfp4::format::Element;
use nvfp4::reference::synthetic::Rng;

/// The device, or `None` after printing why the test skips (a panic under `NVFP4_REQUIRE_GPU=1`).
pub fn device(test: &str) -> Option<Device> {
    match Device::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("NVFP4_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: NVFP4_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("SKIPPED {test}: no GPU ({e})");
            None
        }
    }
}

pub fn under_sanitizer() -> bool {
    // What compute-sanitizer 2025.x (CUDA 13.0) puts in its target's environment, as seen on the
    // device: its injection transport settings and its own folder on the loader path.
    std::env::var_os("NV_SANITIZER_INJECTION_PORT_BASE").is_some()
        || std::env::var("LD_LIBRARY_PATH").is_ok_and(|v| v.contains("compute-sanitizer"))
        || std::env::var_os("CUDA_INJECTION64_PATH").is_some()
}

/// Random values mixing the shapes real tensors have: normal bulk, heavy tails, tiny values, exact
/// zeros and -0.0, E2M1 grid points times powers of two, and values on rounding ties.
pub fn mixed_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.next_u64() % 10 {
            0 => 0.0,
            1 => -0.0,
            2 => rng.normal() * 1e-6,
            3 => rng.normal() * 300.0,
            4 => {
                let grid = [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0];
                let sign = if rng.next_u64() % 2 == 0 { 1.0 } else { -1.0 };
                sign * grid[(rng.next_u64() % 8) as usize] * 2f32.powi((rng.next_u64() % 9) as i32 - 4)
            }
            _ => rng.normal(),
        })
        .collect()
}

pub fn convert<T: Element>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// Asserts the CPU's tensor `cpu` and the GPU's `gpu` are equal, naming the first differing byte
/// (a bare `assert_eq!` would print both tensors whole); `what` names the case.
pub fn assert_same_tensor(cpu: &Nvfp4Tensor, gpu: &Nvfp4Tensor, what: &str) {
    assert_eq!(
        cpu.global_scale().to_bits(),
        gpu.global_scale().to_bits(),
        "{what}: global scale"
    );
    if let Some(i) = cpu.scales().iter().zip(gpu.scales()).position(|(a, b)| a != b) {
        panic!(
            "{what}: scale byte {i}: cpu {:#04x} gpu {:#04x}",
            cpu.scales()[i],
            gpu.scales()[i]
        );
    }
    if let Some(i) = cpu.codes().iter().zip(gpu.codes()).position(|(a, b)| a != b) {
        panic!(
            "{what}: code byte {i}: cpu {:#04x} gpu {:#04x}",
            cpu.codes()[i],
            gpu.codes()[i]
        );
    }
    assert_eq!(cpu, gpu, "{what}");
}

/// One `#[test]` per `name => type`, each calling the generic `body::<type>` with its own name (what
/// [`device`] prints on a skip, so the two cannot drift apart) and then any `(args)`.
macro_rules! dtype_tests {
    (@call $body:ident, $t:ty, $name:ident, ($($arg:expr),*)) => {
        $body::<$t>(stringify!($name) $(, $arg)*)
    };
    ($body:ident; $($tests:tt)*) => {
        dtype_tests!($body(); $($tests)*);
    };
    ($body:ident $args:tt; $($name:ident => $t:ty),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                dtype_tests!(@call $body, $t, $name, $args);
            }
        )+
    };
}
pub(crate) use dtype_tests;

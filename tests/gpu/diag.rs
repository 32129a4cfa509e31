//! `nvfp4::diag` on the device: every GPU self-test check passes; the break hook makes exactly that
//! check fail.

use nvfp4::diag::{self, Status};

use crate::common::device;

#[test]
fn gpu_diag_selftest_passes() {
    let Some(dev) = device("gpu_diag_selftest_passes") else {
        return;
    };
    let checks = diag::gpu_selftest(&dev, None);
    for c in &checks {
        eprintln!("{:<18} {} {}", c.name, c.status.as_str(), c.detail);
    }
    assert!(checks.len() >= 9);
    assert!(checks.iter().all(|c| c.status != Status::Fail));
}

#[test]
fn gpu_diag_break_hook_fails() {
    let Some(dev) = device("gpu_diag_break_hook_fails") else {
        return;
    };
    for name in ["quantize", "gemv_w4a16", "checksum"] {
        let checks = diag::gpu_selftest(&dev, Some(name));
        let failed: Vec<_> = checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, [name], "{checks:?}");
    }
}

#[test]
fn gpu_diag_report_is_complete() {
    let Some(_dev) = device("gpu_diag_report_is_complete") else {
        return;
    };
    let r = diag::run(&diag::DiagOptions::default()).unwrap();
    assert!(r.gpu_available && r.passed(), "{:?}", r.selftest);
    assert!(r.transfers.is_some() && r.overlap.is_some(), "{:?}", r.warnings);
    let m = r.model.unwrap();
    assert!(m.dtypes.iter().all(|d| d.pass_ms.is_some()), "{m:?}");
}

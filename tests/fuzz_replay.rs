//! Replays every stored fuzz input (fuzz/seeds/<target>/: seeds from the test vectors, and every input
//! that once crashed a target) through the fuzz targets' bodies on stable Rust, so a crash found once
//! stays a regression test. The bodies are the same files the libFuzzer targets run.

#[path = "../fuzz/bodies/codecs.rs"]
mod codecs;
#[path = "../fuzz/bodies/quantize.rs"]
mod quantize;
#[path = "../fuzz/bodies/scale_layout.rs"]
mod scale_layout;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = format!("{}/fuzz/seeds/{target}", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{target}: stored input {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{dir} holds no inputs");
}

#[test]
fn fuzz_corpus_codecs_replays_clean() {
    replay("codecs", codecs::run);
}

#[test]
fn fuzz_corpus_quantize_replays_clean() {
    replay("quantize", quantize::run);
}

#[test]
fn fuzz_corpus_scale_layout_replays_clean() {
    replay("scale_layout", scale_layout::run);
}

// The checkpoint body is the cli body's module (one file may be loaded as a module only once).
#[path = "../fuzz/bodies/cli.rs"]
mod cli;
use cli::ck_body as checkpoint;

#[test]
fn fuzz_corpus_checkpoint_replays_clean() {
    replay("checkpoint", checkpoint::run);
}

#[test]
fn fuzz_corpus_cli_replays_clean() {
    replay("cli", cli::run);
}

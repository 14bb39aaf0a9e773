//! The checks behind the fuzz targets, one module per target. They take the raw input and
//! panic on any property that fails; `fuzz_targets/` only hands them libFuzzer's inputs, and
//! `tests/replay.rs` replays the seed corpora and the saved regressions through them on a plain
//! `cargo test`.

pub mod money;
pub mod proto;
pub mod token;

//! cargo-fuzz target; the body is `turnd::testing::fuzz::quality`, which
//! tests/it/fuzz_corpus.rs also replays over the committed corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    turnd::testing::fuzz::quality(data);
});

//! cargo-fuzz target; the body is `turnd::testing::fuzz::stream_server`, which
//! tests/fuzz_corpus.rs also replays over the committed corpus on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    turnd::testing::fuzz::stream_server(data);
});

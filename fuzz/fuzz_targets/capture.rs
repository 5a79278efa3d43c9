//! Fuzz target `capture`: see `fuzz/src/capture.rs` (`nfqmark_fuzz::capture`) for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nfqmark_fuzz::capture(data));

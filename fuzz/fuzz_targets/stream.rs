//! Fuzz target `stream`: see `fuzz/src/lib.rs` (`nfqmark_fuzz::stream`) for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nfqmark_fuzz::stream(data));

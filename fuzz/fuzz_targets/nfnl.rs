//! Fuzz target `nfnl`: see `fuzz/src/lib.rs` (`nfqmark_fuzz::nfnl`) for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nfqmark_fuzz::nfnl(data));

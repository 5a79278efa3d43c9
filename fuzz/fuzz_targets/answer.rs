//! Fuzz target `answer`: see `fuzz/src/answer.rs` (`nfqmark_fuzz::answer`) for what it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nfqmark_fuzz::answer(data));

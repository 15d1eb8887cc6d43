#![no_main]
// Input format: see `devices::fuzzing::blk_chains`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::blk_chains(data));

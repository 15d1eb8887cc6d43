#![no_main]
// Input format: see `devices::fuzzing::fuse_layered`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::fuse_layered(data));

#![no_main]
// Input format: see `imagefs::fuzzing::tar_into_ext4`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| imagefs::fuzzing::tar_into_ext4(data));

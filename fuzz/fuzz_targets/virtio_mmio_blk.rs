#![no_main]
// Input format: see `devices::fuzzing::virtio_mmio_blk`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| devices::fuzzing::virtio_mmio_blk(data));

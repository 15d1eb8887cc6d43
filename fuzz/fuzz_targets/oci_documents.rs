#![no_main]
// Input format: see `imagefs::fuzzing::oci_documents`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| imagefs::fuzzing::oci_documents(data));

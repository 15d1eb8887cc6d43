//! The stored inputs of the fuzz targets in `fuzz/`, for the unit tests that
//! replay them with the stable toolchain.

use std::path::PathBuf;

/// Runs `run` on every stored input of fuzz target `target`: its corpus
/// (`fuzz/corpus/TARGET/`) and the crashes it once found
/// (`fuzz/regressions/TARGET/`). Panics if there are none, so a renamed
/// target cannot silently replay nothing.
pub fn replay_fuzz_inputs(target: &str, run: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = rd.map(|e| e.expect("fuzz input").path()).collect();
        paths.sort();
        for p in paths {
            // A fuzzer running meanwhile may replace inputs with smaller ones.
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            // Named first, so a panic below shows which input it was.
            eprintln!("replaying {}", p.display());
            run(&data);
            n += 1;
        }
    }
    assert!(
        n > 0,
        "no stored inputs for fuzz target {target} under {}",
        fuzz.display()
    );
}

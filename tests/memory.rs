//! `glm quantize` streams: its peak memory stays far below the size of the file it reads,
//! because consumed input pages are handed back to the kernel as in conversion. In a test
//! binary of its own, with one test: peak memory is read with
//! `getrusage(RUSAGE_CHILDREN)`.

use std::path::Path;
use std::process::Command;

use glm_convert::gguf::{padding, write_header, Metadata, TensorHeader};
use glm_convert::GgmlType;

/// An F32 GGUF with one 512 MiB matrix of zeros, stored sparsely.
fn big_gguf(path: &Path) {
    let mut meta = Metadata::default();
    meta.set("general.architecture", "glm4");
    meta.set("glm4.block_count", 1u32);
    let tensor = TensorHeader {
        name: "blk.0.ffn_down.weight".into(),
        ne: vec![4096, 32768],
        ggml_type: GgmlType::F32,
    };
    let mut header = Vec::new();
    let header_len = write_header(&mut header, &meta, std::slice::from_ref(&tensor)).expect("header");
    let file = std::fs::File::create(path).expect("create");
    std::io::Write::write_all(&mut &file, &header).expect("write");
    file.set_len(header_len + tensor.n_bytes() + padding(tensor.n_bytes()))
        .expect("sparse data");
}

#[test]
fn quantize_keeps_memory_far_below_the_input_size() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("big-F32.gguf");
    big_gguf(&input);
    let status = Command::new(env!("CARGO_BIN_EXE_glm"))
        .arg("quantize")
        .arg(&input)
        .arg(dir.path().join("big-Q8_0.gguf"))
        .args(["--quant", "q8_0"])
        .status()
        .expect("quantize");
    assert!(status.success());
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) }, 0);
    let peak_mib = usage.ru_maxrss / 1024;
    eprintln!("quantize of a 512 MiB F32 file: peak {peak_mib} MiB");
    assert!(peak_mib < 256, "peak {peak_mib} MiB while reading a 512 MiB file");
}

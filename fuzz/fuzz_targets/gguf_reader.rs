//! The validating GGUF reader and the model/projector checks that run before llama.cpp
//! sees a file: any input must give Ok or Err, and an accepted header must only point
//! inside the input.
#![no_main]

use glm_convert::gguf::{check, read};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = read::parse(data) else {
        return;
    };
    for (tensor, offset) in &header.tensors {
        let end = offset.checked_add(tensor.n_bytes()).expect("tensor end overflows");
        assert!(end <= data.len() as u64, "tensor {} ends past the file", tensor.name);
        assert!(*offset >= header.data_start);
    }
    let _ = check::check_model(&header);
    let _ = check::check_projector(&header, &header);
});

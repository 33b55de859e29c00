//! A safetensors shard's header and the shard index (`model.safetensors.index.json`):
//! every tensor accepted lies inside the shard with the size its shape and dtype need,
//! and every shard name accepted stays inside the checkpoint folder.
#![no_main]

use std::path::{Component, Path};

use glm_convert::checkpoint::{shard_entries, shard_names};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = shard_entries(data) {
        for e in &entries {
            assert!(e.start <= e.end && e.end <= data.len(), "{e:?} outside the shard");
            let elements = e.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            assert_eq!(
                elements.and_then(|n| n.checked_mul(e.dtype.size())),
                Some(e.end - e.start),
                "{e:?}"
            );
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(names) = shard_names(text) {
        for name in &names {
            assert!(
                !name.is_empty() && Path::new(name).components().all(|c| matches!(c, Component::Normal(_))),
                "{name:?} leaves the folder"
            );
        }
    }
});

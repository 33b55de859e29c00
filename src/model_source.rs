//! Resolves what the user named as a model: a GGUF file is used as is; a Hugging Face
//! checkpoint folder is converted once (BF16, lossless for BF16 checkpoints) into a cache
//! and reused until the checkpoint changes.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glm_convert::{ConvertOptions, Preset};

use crate::progress::ConvertProgress;

pub fn resolve(model: &Path) -> Result<PathBuf> {
    if model.is_dir() {
        return cached_conversion(model);
    }
    if !model.exists() {
        bail!("{}: no such file or folder", model.display());
    }
    check_gguf_magic(model)?;
    Ok(model.to_path_buf())
}

/// The vision projector for `model`: `explicit` when given, else the `*mmproj*.gguf`
/// beside it made for it (`<name>-mmproj-<TYPE>.gguf` where the model file starts with
/// `<name>`), or the only one there.
pub fn projector_for(model: &Path, explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        check_gguf_magic(path)?;
        return Ok(path.to_path_buf());
    }
    let dir = model
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let model_name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let candidates: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.contains("mmproj") && name.ends_with(".gguf"))
        .collect();
    let made_for: Vec<&String> = candidates
        .iter()
        .filter(|name| {
            name.split("-mmproj")
                .next()
                .is_some_and(|stem| !stem.is_empty() && model_name.starts_with(stem))
        })
        .collect();
    match (made_for.as_slice(), candidates.as_slice()) {
        ([one], _) => Ok(dir.join(one)),
        ([], [one]) => Ok(dir.join(one)),
        ([], []) => bail!(
            "{}: no vision projector (*mmproj*.gguf) beside the model; pass --mmproj",
            model.display()
        ),
        _ => bail!(
            "{}: several vision projectors beside the model ({}); pass --mmproj",
            model.display(),
            candidates.join(", ")
        ),
    }
}

pub fn check_gguf_magic(path: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    let mut file = glm_convert::files::open_regular(path)?;
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        bail!(
            "{}: not a GGUF file (expected a .gguf file or a checkpoint folder)",
            path.display()
        );
    }
    Ok(())
}

fn cached_conversion(dir: &Path) -> Result<PathBuf> {
    let cache_dir = std::env::var_os("GLM_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("glm")))
        .context("no cache directory: set GLM_CACHE_DIR")?;
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("{}: cannot create the cache", cache_dir.display()))?;
    let stem = format!("{}-{}", glm_convert::model_base_name(dir), checkpoint_fingerprint(dir)?);
    let file = cache_dir.join(format!("{stem}-BF16.gguf"));
    if !file.is_file() {
        eprintln!("converting {} to {} (once)", dir.display(), file.display());
        let options = ConvertOptions {
            preset: Preset::load("bf16")?,
            quantizer: None,
            importance: None,
            name: None,
            plan: Default::default(),
        };
        let projector = cache_dir.join(format!("{stem}-mmproj-F16.gguf"));
        glm_convert::files::check_output(&file, &[dir], true)?;
        glm_convert::files::check_output(&projector, &[dir], true)?;
        glm_convert::convert(dir, &file, &options, &ConvertProgress::new())?;
        // Named so that `projector_for` finds it beside the model.
        glm_convert::mmproj::convert_mmproj(
            dir,
            &projector,
            glm_convert::GgmlType::F16,
            &options,
            &ConvertProgress::new(),
        )?;
    }
    Ok(file)
}

/// Changes whenever a file of the checkpoint is replaced, resized or touched. A
/// cryptographic hash, not `DefaultHasher`, whose output may change between Rust
/// releases and would orphan every cached conversion.
fn checkpoint_fingerprint(dir: &Path) -> Result<String> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", dir.display()))?;
    let mut entries: Vec<FileStamp> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|entry| {
            let meta = entry.metadata().ok();
            let modified = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            FileStamp {
                name: entry.file_name().to_string_lossy().into_owned(),
                len: meta.map_or(0, |m| m.len()),
                modified_nanos: modified.map_or(0, |d| d.as_nanos()),
            }
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(fingerprint(&dir.to_string_lossy(), &entries))
}

/// What the cache key knows of one file of a checkpoint folder.
struct FileStamp {
    name: String,
    len: u64,
    modified_nanos: u128,
}

/// Bump when the cache's contents change meaning.
const CACHE_FORMAT: &str = "glm-cache-v2";

fn fingerprint(dir: &str, entries: &[FileStamp]) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in [CACHE_FORMAT, env!("CARGO_PKG_VERSION"), dir] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    for entry in entries {
        hasher.update((entry.name.len() as u64).to_le_bytes());
        hasher.update(entry.name.as_bytes());
        hasher.update(entry.len.to_le_bytes());
        hasher.update(entry.modified_nanos.to_le_bytes());
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_is_stable() {
        let entries = [
            FileStamp {
                name: "config.json".into(),
                len: 812,
                modified_nanos: 1_700_000_000_000_000_000,
            },
            FileStamp {
                name: "model.safetensors".into(),
                len: 1 << 30,
                modified_nanos: 1_700_000_000_500_000_000,
            },
        ];
        let key = fingerprint("/models/GLM-4-9B", &entries);
        assert_eq!(key.len(), 16);
        // Pinned: a change (also a new crate version, which is part of the key) means
        // every cached conversion is made again.
        assert_eq!(key, "ee566ce5ee1eab12");
        assert_ne!(key, fingerprint("/models/GLM-4-9B-0414", &entries));
    }
}

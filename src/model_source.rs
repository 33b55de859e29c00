//! Resolves what the user named as a model: a GGUF file is used as is; a Hugging Face
//! checkpoint folder is converted once (BF16, lossless for BF16 checkpoints) into a cache
//! and reused until the checkpoint changes.

use std::hash::{Hash, Hasher};
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
    let stem = format!(
        "{}-{:016x}",
        glm_convert::model_base_name(dir),
        checkpoint_fingerprint(dir)?
    );
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

/// Changes whenever a file of the checkpoint is replaced, resized or touched.
fn checkpoint_fingerprint(dir: &Path) -> Result<u64> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", dir.display()))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let meta = entry.metadata()?;
        entry.file_name().hash(&mut hasher);
        meta.len().hash(&mut hasher);
        if let Ok(modified) = meta.modified() {
            modified.hash(&mut hasher);
        }
    }
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    Ok(hasher.finish())
}

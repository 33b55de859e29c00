//! Resolves what the user named as a model: a GGUF file is used as is; a Hugging Face
//! checkpoint folder is converted once (BF16 unless `--quant` says otherwise; lossless for
//! BF16 checkpoints) into a cache and reused until the checkpoint changes. Each cache
//! entry has a sidecar `<stem>.source.json` naming the folder it came from, so a new
//! conversion of a changed folder replaces the old one instead of piling up.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glm_convert::{ConvertOptions, Preset};
use serde::{Deserialize, Serialize};

use crate::engine::quantize::GgmlQuantizer;
use crate::progress::ConvertProgress;

/// The preset a checkpoint folder is converted with when `--quant` is not given.
const DEFAULT_PRESET: &str = "bf16";

/// The GGUF file for `model`; a checkpoint folder is converted with the preset `quant`
/// (once, into the cache).
pub fn resolve(model: &Path, quant: Option<&str>) -> Result<PathBuf> {
    if model.is_dir() {
        return cached_conversion(model, quant.unwrap_or(DEFAULT_PRESET));
    }
    if !model.exists() {
        return resolve_name(model, quant);
    }
    check_gguf_magic(model)?;
    if let Some(quant) = quant {
        eprintln!(
            "warning: --quant {quant} is ignored: {} is a GGUF file (use `glm quantize` to re-quantize it)",
            model.display()
        );
    }
    Ok(model.to_path_buf())
}

/// A reference that is not an existing path: a model name, pulled into the store when
/// needed (`crate::models`).
fn resolve_name(model: &Path, quant: Option<&str>) -> Result<PathBuf> {
    let text = model.to_string_lossy();
    match crate::models::Reference::parse(&text).map_err(anyhow::Error::msg)? {
        crate::models::Reference::Path(_) => bail!("{}: no such file or folder", model.display()),
        crate::models::Reference::Name { name, preset, revision } => {
            crate::models::resolve(&name, preset.as_deref(), revision.as_deref(), quant)
        }
    }
}

/// Refuses a folder where a GGUF file is needed, saying what to do with a checkpoint.
pub fn refuse_folder(path: &Path, command: &str) -> Result<()> {
    if !path.is_dir() {
        return Ok(());
    }
    if path.join("config.json").is_file() {
        bail!(
            "{0}: a checkpoint folder; {command} reads GGUF files: convert it first with `glm convert {0}`",
            path.display()
        );
    }
    bail!("{}: a folder; {command} reads GGUF files", path.display());
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
    refuse_folder(path, "this command")?;
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

/// What the sidecar `<stem>.source.json` of a cache entry records.
#[derive(Debug, Serialize, Deserialize)]
struct SourceRecord {
    /// The checkpoint folder, canonical.
    source: String,
    /// The preset: a built-in name, or `file:<sha256>` of a YAML preset's contents.
    preset: String,
    /// [`checkpoint_fingerprint`] when converted; another value means the folder changed.
    checkpoint: String,
    glm: String,
    /// The entry's files, beside the sidecar.
    files: Vec<String>,
}

/// glm's cache folder (`GLM_CACHE_DIR`, else the platform's cache folder + `glm`), made if missing.
pub fn cache_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("GLM_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("glm")))
        .context("no cache directory: set GLM_CACHE_DIR")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the cache", dir.display()))?;
    Ok(dir)
}

fn cached_conversion(dir: &Path, quant: &str) -> Result<PathBuf> {
    let cache_dir = cache_dir()?;
    let source = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", dir.display()))?;
    let preset = Preset::load(quant)?;
    let preset_id = preset_identity(quant)?;
    let checkpoint = checkpoint_fingerprint(&source)?;
    let stem = format!(
        "{}-{}",
        glm_convert::model_base_name(&source),
        entry_key(&checkpoint, &preset_id)
    );
    let file = cache_dir.join(format!("{stem}-{}.gguf", preset.label()));
    let sidecar = cache_dir.join(format!("{stem}.source.json"));
    // The sidecar is written last: without it an entry is incomplete (a conversion was
    // killed between the model and its projector) and is made again.
    if file.is_file() && read_record(&sidecar).is_some() {
        return Ok(file);
    }
    eprintln!("converting {} to {} (once)", dir.display(), file.display());
    let projector = cache_dir.join(format!("{stem}-mmproj-F16.gguf"));
    let mut files = vec![file.clone()];
    files.extend(convert_into_cache(&source, &file, &projector, preset, None)?.1);
    let record = SourceRecord {
        source: source.to_string_lossy().into_owned(),
        preset: preset_id,
        checkpoint,
        glm: env!("CARGO_PKG_VERSION").to_owned(),
        files: files
            .iter()
            .filter_map(|f| f.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect(),
    };
    glm_convert::files::write_bytes(&sidecar, &serde_json::to_vec_pretty(&record)?)?;
    remove_stale_entries(&cache_dir, &record);
    Ok(file)
}

/// Converts the model and, for a vision checkpoint, its projector (returned). The
/// projector is named so that `projector_for` finds it beside the model.
pub(crate) fn convert_into_cache(
    source: &Path,
    file: &Path,
    projector: &Path,
    preset: Preset,
    name: Option<String>,
) -> Result<(glm_convert::ConvertSummary, Option<PathBuf>)> {
    let options = ConvertOptions {
        preset,
        quantizer: Some(&GgmlQuantizer),
        importance: None,
        name,
        plan: Default::default(),
        output: Default::default(),
    };
    glm_convert::files::check_output(file, &[source], true)?;
    glm_convert::files::check_output(projector, &[source], true)?;
    let summary = glm_convert::convert(source, file, &options, &ConvertProgress::new())?;
    let written = glm_convert::mmproj::convert_mmproj(
        source,
        projector,
        glm_convert::GgmlType::F16,
        &options,
        &ConvertProgress::new(),
    )?;
    Ok((summary, written.map(|_| projector.to_path_buf())))
}

/// What identifies a preset in the cache key: a built-in's name, or a YAML file's
/// contents (an edited file makes a new conversion).
fn preset_identity(quant: &str) -> Result<String> {
    if let Some(name) = Preset::built_in_names()
        .into_iter()
        .find(|n| n.eq_ignore_ascii_case(quant))
    {
        return Ok(name.to_owned());
    }
    let bytes = glm_convert::files::read_limited(Path::new(quant), glm_convert::files::MAX_PRESET_BYTES)?;
    Ok(format!("file:{}", hex_digest(&[&bytes], 32)))
}

/// The cache entry's key: the checkpoint's fingerprint and the preset.
fn entry_key(checkpoint: &str, preset_id: &str) -> String {
    hex_digest(&[checkpoint.as_bytes(), preset_id.as_bytes()], 8)
}

fn hex_digest(parts: &[&[u8]], bytes: usize) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize()[..bytes].iter().map(|b| format!("{b:02x}")).collect()
}

fn read_record(sidecar: &Path) -> Option<SourceRecord> {
    let text = glm_convert::files::read_text_limited(sidecar, glm_convert::files::MAX_CONFIG_BYTES).ok()?;
    serde_json::from_str(&text).ok()
}

/// Removes the entries made from `current`'s folder before it changed (any preset, any
/// glm version: the fingerprint includes the version). Entries of other folders, and of
/// this folder with other presets, stay.
fn remove_stale_entries(cache_dir: &Path, current: &SourceRecord) {
    for (sidecar, record) in sidecars(cache_dir) {
        if record.source != current.source || record.checkpoint == current.checkpoint {
            continue;
        }
        for path in entry_files(cache_dir, &record).into_iter().chain([sidecar]) {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!(
                        "warning: {}: cannot remove the outdated conversion: {e}",
                        path.display()
                    );
                }
            }
        }
    }
}

/// `glm models prune`: removes the cache entries whose checkpoint folder is gone or has
/// changed since (the next run would convert it again anyway), and returns each file
/// removed with its size.
pub fn prune_cache() -> Result<Vec<(PathBuf, u64)>> {
    let cache_dir = cache_dir()?;
    let mut removed = Vec::new();
    for (sidecar, record) in sidecars(&cache_dir) {
        let source = Path::new(&record.source);
        let current = source.is_dir().then(|| checkpoint_fingerprint(source).ok()).flatten();
        if current.as_deref() == Some(record.checkpoint.as_str()) {
            continue;
        }
        for path in entry_files(&cache_dir, &record).into_iter().chain([sidecar]) {
            let bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
            if std::fs::remove_file(&path).is_ok() {
                removed.push((path, bytes));
            }
        }
    }
    Ok(removed)
}

/// Every readable sidecar in the cache, with its record.
fn sidecars(cache_dir: &Path) -> Vec<(PathBuf, SourceRecord)> {
    let Ok(listing) = std::fs::read_dir(cache_dir) else {
        return Vec::new();
    };
    listing
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".source.json"))
        .filter_map(|p| read_record(&p).map(|record| (p, record)))
        .collect()
}

/// An entry's files, by the plain names its sidecar lists (a sidecar may not send a
/// removal outside the cache).
fn entry_files(cache_dir: &Path, record: &SourceRecord) -> Vec<PathBuf> {
    record
        .files
        .iter()
        .filter(|n| Path::new(n).file_name() == Some(n.as_ref()))
        .map(|n| cache_dir.join(n))
        .collect()
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

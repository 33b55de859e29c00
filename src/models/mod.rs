//! Models by name: a reference (`glm-4.7-flash`, `ORG/NAME:PRESET@REVISION`) is looked up
//! in glm's store, the catalogue and the local Hugging Face cache, and otherwise pulled
//! from the Hub: a repository of GGUF files is used as it is, a safetensors repository is
//! converted once with the preset into the store.

pub mod catalogue;
pub mod reference;
pub mod store;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::hub::{Hub, Snapshot};
pub use reference::Reference;
use store::{Entry, EntryKind, EntryRecord, Store};

/// A name resolved to what it means, before anything is downloaded.
#[derive(Debug, Clone)]
pub struct Target {
    /// The store name: the catalogue name, or `ORG/NAME`.
    pub name: String,
    pub repo: String,
    pub revision: String,
    /// The preset asked for, or the default (the catalogue's, else q4_k_m).
    pub preset: String,
    pub preset_given: bool,
    pub catalogue: Option<&'static catalogue::CatalogueEntry>,
}

impl Target {
    fn of(name: &str, preset: Option<&str>, revision: Option<&str>) -> Result<Target> {
        let found = catalogue::find(name);
        let repo = match (found, name.contains('/')) {
            (Some(entry), _) => entry.repo.to_owned(),
            (None, true) => name.to_owned(),
            (None, false) => bail!(
                "{name}: no such file, and not a model in the store or the catalogue ({}); a Hub repository is ORG/NAME",
                catalogue::CATALOGUE.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
            ),
        };
        let default = found.map_or(catalogue::DEFAULT_PRESET, |e| e.preset);
        Ok(Target {
            name: found.map_or_else(|| name.to_owned(), |e| e.name.to_owned()),
            repo,
            revision: revision.unwrap_or("main").to_owned(),
            preset: preset.unwrap_or(default).to_owned(),
            preset_given: preset.is_some(),
            catalogue: found,
        })
    }

    fn label(&self) -> String {
        self.preset.to_uppercase()
    }
}

/// The GGUF file a model name stands for, pulled and converted when needed. `quant`
/// (`--quant`) is the preset when the reference names none.
pub fn resolve(name: &str, preset: Option<&str>, revision: Option<&str>, quant: Option<&str>) -> Result<PathBuf> {
    let store = Store::open()?;
    let preset = preset.or(quant);
    if revision.is_none() {
        if let Some(entry) = store.get(name, preset) {
            store.touch(&entry);
            return Ok(entry.record.model);
        }
    }
    let target = Target::of(name, preset, revision)?;
    let entry = pull_target(&store, &target, false)?;
    Ok(entry.record.model)
}

/// `glm pull`: asks the Hub for the revision's commit (unless offline) and makes the
/// store entry for it, downloading and converting only what is missing or changed.
pub fn pull(reference: &Reference, quant: Option<&str>) -> Result<Entry> {
    let Reference::Name { name, preset, revision } = reference else {
        bail!("glm pull takes a model name or ORG/NAME; a file or folder is used where it is");
    };
    let store = Store::open()?;
    let target = Target::of(name, preset.as_deref().or(quant), revision.as_deref())?;
    pull_target(&store, &target, true)
}

/// Makes the store entry of `target`. `refresh`: ask the Hub even when the local cache
/// has the files (`glm pull`); otherwise the cache is enough (`glm run`).
fn pull_target(store: &Store, target: &Target, refresh: bool) -> Result<Entry> {
    let hub = Hub::from_env()?;
    let dir = store.entry_dir(&target.name, &target.label());
    let _lock = store.lock(&dir)?;
    let cached = hub
        .cached_snapshot(&target.repo, &target.revision)
        .filter(|s| usable(s, target).is_ok());
    let snapshot = match cached {
        Some(snapshot) if !refresh || hub.offline() => snapshot,
        _ => hub.snapshot(&target.repo, &target.revision)?,
    };
    // Another process may have made it while this one waited for the lock, or an
    // earlier pull of the same commit did.
    if let Some(entry) = store.get(&target.name, Some(&target.label())) {
        if entry.record.commit == snapshot.commit && entry.record.glm == env!("CARGO_PKG_VERSION") {
            store.touch(&entry);
            return Ok(entry);
        }
    }
    match usable(&snapshot, target)? {
        Layout::Gguf { model, mmproj } => make_gguf_entry(store, &hub, &dir, target, &snapshot, &model, mmproj),
        Layout::Safetensors(files) => make_converted_entry(store, &hub, &dir, target, &snapshot, &files),
    }
}

/// What of a snapshot glm uses.
enum Layout {
    /// The GGUF file(s) of the preset (a split set in order) and a vision projector.
    Gguf { model: Vec<String>, mmproj: Option<String> },
    /// The files a conversion reads.
    Safetensors(Vec<String>),
}

/// The files of `snapshot` glm needs for `target`, or why it has none.
fn usable(snapshot: &Snapshot, target: &Target) -> Result<Layout> {
    let names: Vec<&str> = snapshot.files.iter().map(|f| f.name.as_str()).collect();
    let ggufs: Vec<&str> = names.iter().copied().filter(|n| is_gguf(n)).collect();
    if !ggufs.is_empty() {
        return gguf_layout(&ggufs, target).map_err(|e| anyhow::anyhow!("{}: {e}", snapshot.repo));
    }
    let needed: Vec<String> = names
        .iter()
        .filter(|n| conversion_reads(n))
        .map(|n| n.to_string())
        .collect();
    let has = |suffix: &str| needed.iter().any(|n| n.ends_with(suffix));
    if !needed.iter().any(|n| n == "config.json") || !has(".safetensors") {
        bail!(
            "{}: neither GGUF files nor a safetensors checkpoint (config.json and *.safetensors) at {}",
            snapshot.repo,
            short(&snapshot.commit)
        );
    }
    Ok(Layout::Safetensors(needed))
}

fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
}

/// Files a conversion reads: the config, the weights and their index, the tokenizer,
/// the chat template and the generation and image settings. Other weight formats,
/// documentation and images are not downloaded.
fn conversion_reads(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.contains('/')
        && (lower.ends_with(".json")
            || lower.ends_with(".safetensors")
            || lower.ends_with(".jinja")
            || lower.ends_with(".model")
            || lower == "tokenizer.txt")
}

/// The GGUF files of the preset: a file whose name carries the preset's label
/// (`GLM-4.7-Flash-Q4_K_M.gguf`, `Q4_K_M/...-00001-of-00002.gguf`), all parts of a split
/// set, and a projector (`mmproj`, F16 preferred).
fn gguf_layout(ggufs: &[&str], target: &Target) -> Result<Layout, String> {
    let label = target.label();
    let (projectors, models): (Vec<&str>, Vec<&str>) =
        ggufs.iter().partition(|n| n.to_ascii_lowercase().contains("mmproj"));
    let mut chosen: Vec<&str> = models.iter().copied().filter(|n| names_label(n, &label)).collect();
    if chosen.is_empty() && !target.preset_given && models.len() == 1 {
        chosen = models.clone();
    }
    if chosen.is_empty() {
        let available: Vec<String> = models.iter().filter_map(|n| file_label(n)).collect();
        return Err(format!(
            "no GGUF file for {label}; the repository has: {}",
            if available.is_empty() {
                models.join(", ")
            } else {
                available.join(", ")
            }
        ));
    }
    chosen.sort();
    let first_parts: Vec<&&str> = chosen.iter().filter(|n| !is_later_split_part(n)).collect();
    if first_parts.len() > 1 {
        return Err(format!(
            "several GGUF files for {label} ({}); name one with a more precise preset",
            chosen.join(", ")
        ));
    }
    let mmproj = projectors
        .iter()
        .find(|n| n.to_ascii_uppercase().contains("F16"))
        .or(projectors.first())
        .map(|n| n.to_string());
    Ok(Layout::Gguf {
        model: chosen.iter().map(|n| n.to_string()).collect(),
        mmproj,
    })
}

/// Whether a file name carries `label` as a whole word (`-Q4_K_M.gguf`, `.Q4_K_M-00001`,
/// a `Q4_K_M/` folder), so Q4_K does not pick Q4_K_M.
fn names_label(name: &str, label: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let bytes = upper.as_bytes();
    upper.match_indices(label).any(|(at, _)| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let after = bytes.get(at + label.len()).copied();
        let boundary = |c: Option<u8>| c.is_none_or(|c| matches!(c, b'-' | b'.' | b'/'));
        boundary(before) && boundary(after)
    })
}

/// The preset label a GGUF file name carries (for the list of what a repo has).
fn file_label(name: &str) -> Option<String> {
    let stem = name.rsplit('/').next()?.trim_end_matches(".gguf");
    let stem = match stem.rsplit_once("-of-") {
        Some((head, _)) => head.rsplit_once('-').map_or(head, |(h, _)| h),
        None => stem,
    };
    stem.rsplit(['-', '.']).next().map(str::to_owned)
}

/// `-00002-of-00003.gguf` and later: loaded by llama.cpp through the first part.
fn is_later_split_part(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    match lower.trim_end_matches(".gguf").rsplit_once("-of-") {
        Some((head, _)) => head
            .rsplit('-')
            .next()
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 1)),
        None => false,
    }
}

fn make_gguf_entry(
    store: &Store,
    hub: &Hub,
    dir: &Path,
    target: &Target,
    snapshot: &Snapshot,
    model: &[String],
    mmproj: Option<String>,
) -> Result<Entry> {
    let mut files: Vec<&str> = model.iter().map(String::as_str).collect();
    files.extend(mmproj.as_deref());
    let folder = hub.fetch(snapshot, &files)?;
    let model_path = folder.join(&model[0]);
    let header = glm_convert::gguf::read_file(&model_path)?.header;
    let record = EntryRecord {
        architecture: header.architecture().unwrap_or_default().to_owned(),
        parameters: header.tensors.iter().map(|(t, _)| t.ne.iter().product::<u64>()).sum(),
        kind: EntryKind::Gguf,
        model: model_path,
        mmproj: mmproj.map(|m| folder.join(m)),
        size: 0,
        ..new_record(target, snapshot)
    };
    store.commit(dir, &record)
}

fn make_converted_entry(
    store: &Store,
    hub: &Hub,
    dir: &Path,
    target: &Target,
    snapshot: &Snapshot,
    files: &[String],
) -> Result<Entry> {
    let preset = glm_convert::Preset::load(&target.preset)?;
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    let source = hub.fetch(snapshot, &names)?;
    let base = target.name.rsplit('/').next().unwrap_or(&target.name).to_owned();
    let model = dir.join(format!("{base}-{}.gguf", preset.label()));
    let projector = dir.join(format!("{base}-{}-mmproj-F16.gguf", preset.label()));
    check_room_to_convert(dir, &source, &preset)?;
    eprintln!(
        "converting {} ({}) to {}",
        target.repo,
        short(&snapshot.commit),
        model.display()
    );
    // The snapshot folder is named by its commit; the model is called by its repository.
    let general_name = target.repo.rsplit('/').next().map(str::to_owned);
    let (summary, mmproj) = crate::model_source::convert_into_cache(&source, &model, &projector, preset, general_name)?;
    let record = EntryRecord {
        architecture: summary.architecture,
        parameters: summary.parameters,
        kind: EntryKind::Converted,
        model,
        mmproj,
        size: store::folder_size(dir),
        ..new_record(target, snapshot)
    };
    store.commit(dir, &record)
}

fn new_record(target: &Target, snapshot: &Snapshot) -> EntryRecord {
    EntryRecord {
        name: target.name.clone(),
        preset: target.label(),
        repo: target.repo.clone(),
        revision: target.revision.clone(),
        commit: snapshot.commit.clone(),
        kind: EntryKind::Converted,
        model: PathBuf::new(),
        mmproj: None,
        architecture: String::new(),
        parameters: 0,
        size: 0,
        glm: env!("CARGO_PKG_VERSION").to_owned(),
        created: store::now(),
        last_used: store::now(),
    }
}

/// Refuses a conversion the disk cannot hold, before it starts: the estimate is the
/// checkpoint's weights scaled by the preset's bits per weight against 16.
fn check_room_to_convert(dir: &Path, source: &Path, preset: &glm_convert::Preset) -> Result<()> {
    let weights: u64 = std::fs::read_dir(source)
        .with_context(|| format!("{}: cannot list", source.display()))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| m.len())
        .sum();
    let needed = (weights as f64 * bits_per_weight(&preset.label()) / 16.0) as u64;
    let available =
        fs4::available_space(dir).with_context(|| format!("{}: cannot read the free space", dir.display()))?;
    if needed > available {
        bail!(
            "{}: converting needs about {} and {} are free; free some space or set GLM_MODELS to another disk",
            dir.display(),
            glm_convert::byte_label(needed),
            glm_convert::byte_label(available)
        );
    }
    Ok(())
}

/// Roughly, from the label's type: what the bulk of the weights becomes.
fn bits_per_weight(label: &str) -> f64 {
    const BITS: &[(&str, f64)] = &[
        ("F32", 32.0),
        ("F16", 16.0),
        ("BF16", 16.0),
        ("Q8", 8.5),
        ("Q6", 6.6),
        ("Q5", 5.7),
        ("Q4", 4.9),
        ("IQ4", 4.5),
        ("Q3", 3.9),
        ("Q2", 3.0),
    ];
    BITS.iter()
        .filter(|(prefix, _)| label.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map_or(16.0, |(_, bits)| *bits)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// `glm which`: how a reference resolves, one step a line, without downloading.
pub fn explain(text: &str, quant: Option<&str>) -> Result<Vec<String>> {
    let reference = Reference::parse(text).map_err(anyhow::Error::msg)?;
    let Reference::Name { name, preset, revision } = reference else {
        return Ok(explain_path(Path::new(text), quant));
    };
    let preset = preset.as_deref().or(quant);
    let mut steps = Vec::new();
    let store = Store::open()?;
    if revision.is_none() {
        if let Some(entry) = store.get(&name, preset) {
            steps.push(format!(
                "store: {} → {}",
                entry.reference(),
                entry.record.model.display()
            ));
            return Ok(steps);
        }
    }
    let target = Target::of(&name, preset, revision.as_deref())?;
    if let Some(entry) = target.catalogue {
        steps.push(format!(
            "catalogue: {} → {} ({}, {} parameters, default preset {})",
            entry.name, entry.repo, entry.architecture, entry.parameters, entry.preset
        ));
    }
    let hub = Hub::from_env()?;
    match hub.cached_snapshot(&target.repo, &target.revision) {
        Some(snapshot) => match usable(&snapshot, &target) {
            Ok(_) => steps.push(format!(
                "Hugging Face cache: {} at {} ({})",
                target.repo,
                short(&snapshot.commit),
                hub.snapshot_dir(&snapshot).display()
            )),
            Err(e) => steps.push(format!("Hugging Face cache: incomplete ({e})")),
        },
        None => steps.push(format!(
            "Hugging Face cache: no {}@{} in {}",
            target.repo,
            target.revision,
            hub.cache_dir().display()
        )),
    }
    let fetch = if hub.offline() {
        "offline (HF_HUB_OFFLINE): nothing more can be fetched".to_owned()
    } else {
        format!("download: {}/{} at {}", hub.endpoint(), target.repo, target.revision)
    };
    steps.push(fetch);
    steps.push(format!(
        "then: {} {}, stored as {}:{}",
        "a GGUF repository's file for, or a safetensors repository converted with,",
        target.label(),
        target.name,
        target.preset.to_lowercase()
    ));
    Ok(steps)
}

fn explain_path(path: &Path, quant: Option<&str>) -> Vec<String> {
    let what = if path.is_dir() {
        format!(
            "checkpoint folder: converted once with {} into the cache, then run",
            quant.unwrap_or("bf16")
        )
    } else if path.is_file() {
        "GGUF file: used as it is".to_owned()
    } else {
        "no such file or folder".to_owned()
    };
    vec![format!("path: {} — {what}", path.display())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(preset: Option<&str>) -> Target {
        Target::of("unsloth/GLM-4.7-Flash-GGUF", preset, None).unwrap()
    }

    fn chosen(files: &[&str], preset: Option<&str>) -> Result<Vec<String>, String> {
        match gguf_layout(files, &target(preset))? {
            Layout::Gguf { model, .. } => Ok(model),
            Layout::Safetensors(_) => unreachable!(),
        }
    }

    #[test]
    fn the_preset_picks_whole_labels_and_split_sets() {
        let files = [
            "GLM-4.7-Flash-Q4_K.gguf",
            "GLM-4.7-Flash-Q4_K_M.gguf",
            "Q8_0/GLM-4.7-Flash-Q8_0-00002-of-00002.gguf",
            "Q8_0/GLM-4.7-Flash-Q8_0-00001-of-00002.gguf",
            "mmproj-F32.gguf",
            "mmproj-F16.gguf",
        ];
        assert_eq!(chosen(&files, None).unwrap(), ["GLM-4.7-Flash-Q4_K_M.gguf"]);
        assert_eq!(chosen(&files, Some("q4_k")).unwrap(), ["GLM-4.7-Flash-Q4_K.gguf"]);
        assert_eq!(
            chosen(&files, Some("Q8_0")).unwrap(),
            [
                "Q8_0/GLM-4.7-Flash-Q8_0-00001-of-00002.gguf",
                "Q8_0/GLM-4.7-Flash-Q8_0-00002-of-00002.gguf"
            ]
        );
        let missing = chosen(&files, Some("q6_k")).unwrap_err();
        assert!(
            missing.contains("Q6_K") && missing.contains("Q4_K_M") && missing.contains("Q8_0"),
            "{missing}"
        );
        match gguf_layout(&files, &target(None)).unwrap() {
            Layout::Gguf { mmproj, .. } => assert_eq!(mmproj.as_deref(), Some("mmproj-F16.gguf")),
            Layout::Safetensors(_) => unreachable!(),
        }
    }

    #[test]
    fn estimates_and_sizes() {
        assert_eq!(bits_per_weight("Q4_K_M"), 4.9);
        assert_eq!(bits_per_weight("IQ4_XS"), 4.5);
        assert_eq!(bits_per_weight("BF16"), 16.0);
        assert_eq!(glm_convert::byte_label(512), "512 B");
        assert_eq!(glm_convert::byte_label(3 << 30), "3.00 GiB");
        assert!(conversion_reads("model-00001-of-00002.safetensors") && !conversion_reads("pytorch_model.bin"));
        assert!(!conversion_reads("original/config.json"));
    }
}

//! glm's store of models pulled by name: one folder per model and preset,
//! `<store>/<name>/<PRESET>/`, holding the converted GGUF (and vision projector) of a
//! safetensors repository, and `entry.json`, which says where the model came from and
//! points at its GGUF (inside the folder, or in the Hugging Face cache for a repository
//! that ships GGUF files, which are never copied). An entry exists once `entry.json` is
//! written, last, so a killed download or conversion leaves nothing that looks complete.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Where an entry's model came from and what it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryRecord {
    /// The store name: a catalogue name, or `ORG/NAME`.
    pub name: String,
    /// The preset's label (`Q4_K_M`, `BF16`, or a GGUF repository's file label).
    pub preset: String,
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub kind: EntryKind,
    pub model: PathBuf,
    #[serde(default)]
    pub mmproj: Option<PathBuf>,
    pub architecture: String,
    pub parameters: u64,
    /// Bytes of the entry's own files (a GGUF repository's files are in the HF cache).
    pub size: u64,
    /// The glm version that made it: a conversion by another version is pruned.
    pub glm: String,
    pub created: u64,
    pub last_used: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Converted by glm from a safetensors repository; the files are the store's.
    Converted,
    /// A repository's own GGUF files, used where the Hugging Face cache keeps them.
    Gguf,
}

/// One model in the store.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub record: EntryRecord,
}

impl Entry {
    /// `NAME:PRESET`, as `glm models` lists it and a reference names it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.record.name, self.record.preset.to_lowercase())
    }
}

pub struct Store {
    root: PathBuf,
}

const RECORD: &str = "entry.json";

impl Store {
    /// `GLM_MODELS`, else `glm/models` under the user's data folder.
    pub fn open() -> Result<Store> {
        let root = std::env::var_os("GLM_MODELS")
            .map(PathBuf::from)
            .or_else(|| dirs::data_dir().map(|d| d.join("glm").join("models")))
            .context("no folder for the model store: set GLM_MODELS")?;
        std::fs::create_dir_all(&root).with_context(|| format!("{}: cannot create the model store", root.display()))?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of `name` with `preset` (`ORG/NAME` becomes `ORG--NAME`, as the
    /// Hugging Face cache names repositories).
    pub fn entry_dir(&self, name: &str, preset: &str) -> PathBuf {
        self.root.join(name.replace('/', "--")).join(preset.to_uppercase())
    }

    /// The entry for `name` and `preset`; without a preset, the most recently used one.
    pub fn get(&self, name: &str, preset: Option<&str>) -> Option<Entry> {
        let mut entries: Vec<Entry> = self
            .list()
            .into_iter()
            .filter(|e| e.record.name.eq_ignore_ascii_case(name))
            .filter(|e| preset.is_none_or(|p| e.record.preset.eq_ignore_ascii_case(p)))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.record.last_used));
        entries.into_iter().next()
    }

    /// Every complete entry, by name and preset.
    pub fn list(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for model in read_dirs(&self.root) {
            for preset in read_dirs(&model) {
                if let Some(record) = read_record(&preset.join(RECORD)) {
                    entries.push(Entry { dir: preset, record });
                }
            }
        }
        entries.sort_by_key(Entry::reference);
        entries
    }

    /// Makes `record` the entry in `dir` (the last step of a pull).
    pub fn commit(&self, dir: &Path, record: &EntryRecord) -> Result<Entry> {
        let bytes = serde_json::to_vec_pretty(record)?;
        glm_convert::files::write_bytes(&dir.join(RECORD), &bytes)?;
        Ok(Entry {
            dir: dir.to_path_buf(),
            record: record.clone(),
        })
    }

    /// Notes that `entry` was used now (`glm models` shows it).
    pub fn touch(&self, entry: &Entry) {
        let mut record = entry.record.clone();
        record.last_used = now();
        // Not worth failing a run for: the list is only less accurate.
        let _ = self.commit(&entry.dir, &record);
    }

    /// Removes an entry's folder; the bytes freed.
    pub fn remove(&self, entry: &Entry) -> Result<u64> {
        let freed = folder_size(&entry.dir);
        std::fs::remove_dir_all(&entry.dir).with_context(|| format!("{}: cannot remove", entry.dir.display()))?;
        let _ = std::fs::remove_file(lock_path(&entry.dir));
        // The model's folder goes too when it held only this preset.
        if let Some(parent) = entry.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(freed)
    }

    /// Holds the lock of one entry's folder until dropped: a second `glm pull` of the
    /// same model waits, then finds the entry made.
    pub fn lock(&self, dir: &Path) -> Result<std::fs::File> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let path = lock_path(dir);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open the lock", path.display()))?;
        file.lock()
            .with_context(|| format!("{}: cannot lock", path.display()))?;
        Ok(file)
    }
}

/// `<name>/<PRESET>.lock`, beside the entry's folder (which may be removed and made again
/// while a lock is held).
fn lock_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    dir.with_file_name(name)
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = listing
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

fn read_record(path: &Path) -> Option<EntryRecord> {
    let text = glm_convert::files::read_text_limited(path, glm_convert::files::MAX_CONFIG_BYTES).ok()?;
    serde_json::from_str(&text).ok()
}

/// Bytes of the regular files in `dir` (links are not followed: a GGUF repository's
/// files belong to the Hugging Face cache).
pub fn folder_size(dir: &Path) -> u64 {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return 0;
    };
    listing
        .flatten()
        .filter_map(|e| e.path().symlink_metadata().ok().map(|m| (e.path(), m)))
        .map(|(path, meta)| {
            if meta.is_dir() {
                folder_size(&path)
            } else if meta.is_file() {
                meta.len()
            } else {
                0
            }
        })
        .sum()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, preset: &str, last_used: u64) -> EntryRecord {
        EntryRecord {
            name: name.into(),
            preset: preset.into(),
            repo: "zai-org/GLM-4.7-Flash".into(),
            revision: "main".into(),
            commit: "0".repeat(40),
            kind: EntryKind::Converted,
            model: PathBuf::from("m.gguf"),
            mmproj: None,
            architecture: "deepseek2".into(),
            parameters: 1,
            size: 2,
            glm: "0".into(),
            created: 1,
            last_used,
        }
    }

    #[test]
    fn entries_are_found_by_name_and_preset_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store {
            root: dir.path().to_path_buf(),
        };
        for (preset, used) in [("Q4_K_M", 5), ("Q8_0", 9)] {
            let entry_dir = store.entry_dir("glm-4.7-flash", preset);
            std::fs::create_dir_all(&entry_dir).unwrap();
            store
                .commit(&entry_dir, &record("glm-4.7-flash", preset, used))
                .unwrap();
        }
        // A folder without entry.json is an unfinished pull: not an entry.
        std::fs::create_dir_all(store.entry_dir("glm-4.7-flash", "BF16")).unwrap();
        assert_eq!(store.list().len(), 2);
        assert_eq!(
            store.get("GLM-4.7-flash", Some("q4_k_m")).unwrap().record.preset,
            "Q4_K_M"
        );
        assert_eq!(
            store.get("glm-4.7-flash", None).unwrap().record.preset,
            "Q8_0",
            "most recently used"
        );
        assert!(store.get("glm-4.7-flash", Some("q6_k")).is_none());
        let entry = store.get("glm-4.7-flash", Some("Q8_0")).unwrap();
        assert_eq!(entry.reference(), "glm-4.7-flash:q8_0");
        assert!(store.remove(&entry).unwrap() > 0);
        assert_eq!(store.list().len(), 1);
        assert_eq!(
            store.entry_dir("zai-org/GLM-4.5", "q8_0"),
            dir.path().join("zai-org--GLM-4.5").join("Q8_0")
        );
    }
}

//! `glm which`, `glm pull` and `glm models`: models by name, and the store that keeps
//! them.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::cli::{ModelsAction, ModelsArgs, PullArgs, WhichArgs};
use crate::models::catalogue::CATALOGUE;
use crate::models::store::{Entry, EntryKind, Store};
use crate::models::Reference;

pub fn which(args: &WhichArgs) -> Result<()> {
    for step in crate::models::explain(&args.reference, args.quant.as_deref())? {
        println!("{step}");
    }
    Ok(())
}

pub fn pull(args: &PullArgs) -> Result<()> {
    let reference = Reference::parse(&args.reference).map_err(anyhow::Error::msg)?;
    let entry = crate::models::pull(&reference, args.quant.as_deref())?;
    println!(
        "{} → {} ({})",
        entry.reference(),
        entry.record.model.display(),
        glm_convert::byte_label(model_bytes(&entry))
    );
    Ok(())
}

pub fn run(args: &ModelsArgs) -> Result<()> {
    match &args.action {
        None if args.names => names(),
        None => list(),
        Some(ModelsAction::Show { reference }) => show(reference),
        Some(ModelsAction::Rm { reference, hf_cache }) => remove(reference, *hf_cache),
        Some(ModelsAction::Prune) => prune(),
    }
}

/// For shell completion: the store's references, then the catalogue's names.
fn names() -> Result<()> {
    let store = Store::open()?;
    for entry in store.list() {
        println!("{}", entry.reference());
    }
    for entry in CATALOGUE {
        println!("{}", entry.name);
    }
    Ok(())
}

fn list() -> Result<()> {
    let store = Store::open()?;
    let entries = store.list();
    if entries.is_empty() {
        eprintln!("(no models in {}; `glm pull NAME` adds one)", store.root().display());
        return Ok(());
    }
    let mut table = vec![["NAME", "ARCHITECTURE", "PARAMETERS", "SIZE", "LAST USED", "PATH"].map(String::from)];
    for entry in &entries {
        table.push([
            entry.reference(),
            entry.record.architecture.clone(),
            glm_convert::size_label(entry.record.parameters),
            glm_convert::byte_label(model_bytes(entry)),
            ago(entry.record.last_used),
            entry.record.model.display().to_string(),
        ]);
    }
    print!("{}", columns(&table));
    Ok(())
}

/// Rows as left-aligned columns, two spaces apart.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The model's bytes: the GGUF (all parts of a split set) and its projector.
fn model_bytes(entry: &Entry) -> u64 {
    let mut files = vec![entry.record.model.clone()];
    files.extend(entry.record.mmproj.clone());
    let parts = split_parts(&entry.record.model);
    files.extend(parts);
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// The other parts of a split GGUF set (`-00001-of-00003.gguf` → parts 2 and 3).
fn split_parts(first: &Path) -> Vec<std::path::PathBuf> {
    let name = first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let count = name
        .strip_suffix(".gguf")
        .and_then(|stem| stem.rsplit_once("-of-"))
        .and_then(|(_, count)| count.parse::<u64>().ok());
    match count.map(|count| glm_convert::gguf::split_part_paths(first, count)) {
        Some(Ok(parts)) => parts.into_iter().skip(1).collect(),
        _ => Vec::new(),
    }
}

fn ago(when: u64) -> String {
    let seconds = crate::models::store::now().saturating_sub(when);
    match seconds {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} minutes ago", seconds / 60),
        3600..86400 => format!("{} hours ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86400),
    }
}

/// The store entries a reference names: one preset, or every preset of the name.
fn entries_named(store: &Store, text: &str) -> Result<Vec<Entry>> {
    let Reference::Name {
        name,
        preset,
        revision: None,
    } = Reference::parse(text).map_err(anyhow::Error::msg)?
    else {
        bail!("{text}: name a model of the store (`glm models` lists them)");
    };
    let name = crate::models::catalogue::find(&name).map_or(name, |e| e.name.to_owned());
    let entries: Vec<Entry> = store
        .list()
        .into_iter()
        .filter(|e| e.record.name.eq_ignore_ascii_case(&name))
        .filter(|e| {
            preset
                .as_deref()
                .is_none_or(|p| e.record.preset.eq_ignore_ascii_case(p))
        })
        .collect();
    if entries.is_empty() {
        bail!("{text}: not in the store (`glm models` lists it)");
    }
    Ok(entries)
}

fn show(text: &str) -> Result<()> {
    let store = Store::open()?;
    for entry in entries_named(&store, text)? {
        let r = &entry.record;
        let mut out = String::new();
        writeln!(out, "{}", entry.reference())?;
        writeln!(out, "  repository         {} at {} ({})", r.repo, r.revision, r.commit)?;
        let kind = match r.kind {
            EntryKind::Converted => format!("converted by glm {} with {}", r.glm, r.preset),
            EntryKind::Gguf => "the repository's own GGUF (in the Hugging Face cache)".to_owned(),
        };
        writeln!(out, "  kind               {kind}")?;
        writeln!(out, "  file               {}", r.model.display())?;
        if let Some(mmproj) = &r.mmproj {
            writeln!(out, "  vision projector   {}", mmproj.display())?;
        }
        writeln!(
            out,
            "  size               {}",
            glm_convert::byte_label(model_bytes(&entry))
        )?;
        writeln!(out, "  parameters         {}", glm_convert::size_label(r.parameters))?;
        writeln!(out, "  last used          {}", ago(r.last_used))?;
        let header = glm_convert::gguf::read_file(&r.model)?.header;
        super::inspect::write_summary(&mut out, &header)?;
        print!("{out}");
    }
    Ok(())
}

fn remove(text: &str, hf_cache: bool) -> Result<()> {
    let store = Store::open()?;
    for entry in entries_named(&store, text)? {
        let mut freed = store.remove(&entry)?;
        let mut note = String::new();
        if hf_cache {
            freed += remove_from_hf_cache(&entry)?;
        } else if entry.record.kind == EntryKind::Gguf {
            note = " (its GGUF files stay in the Hugging Face cache; --hf-cache removes them)".to_owned();
        }
        println!(
            "removed {} ({} freed){note}",
            entry.reference(),
            glm_convert::byte_label(freed)
        );
    }
    Ok(())
}

/// The files of the entry's snapshot in the Hugging Face cache, and the blobs they point
/// to (only with `--hf-cache`: those files may be other tools' too).
fn remove_from_hf_cache(entry: &Entry) -> Result<u64> {
    let hub = crate::hub::Hub::from_env()?;
    let Some(snapshot) = hub.cached_snapshot(&entry.record.repo, &entry.record.commit) else {
        return Ok(0);
    };
    let folder = hub.snapshot_dir(&snapshot);
    let mut freed = 0;
    for file in &snapshot.files {
        let link = folder.join(&file.name);
        if let Ok(blob) = std::fs::canonicalize(&link) {
            freed += std::fs::metadata(&blob).map_or(0, |m| m.len());
            let _ = std::fs::remove_file(&blob);
        }
        let _ = std::fs::remove_file(&link);
    }
    std::fs::remove_dir_all(&folder).with_context(|| format!("{}: cannot remove", folder.display()))?;
    Ok(freed)
}

/// Removes what can no longer be right: converted models made by another glm version or
/// from a commit the repository's revision no longer points to, entries whose files are
/// gone, and conversions of checkpoint folders that changed or were removed.
fn prune() -> Result<()> {
    let store = Store::open()?;
    let hub = crate::hub::Hub::from_env()?;
    let mut freed = 0;
    for entry in store.list() {
        if let Some(reason) = stale(&entry, &hub) {
            freed += store.remove(&entry)?;
            println!("removed {} ({reason})", entry.reference());
        }
    }
    for (path, bytes) in crate::model_source::prune_cache()? {
        freed += bytes;
        println!("removed {} (its checkpoint folder changed or is gone)", path.display());
    }
    println!("{} freed", glm_convert::byte_label(freed));
    Ok(())
}

fn stale(entry: &Entry, hub: &crate::hub::Hub) -> Option<String> {
    let r = &entry.record;
    if !r.model.is_file() {
        return Some("its file is gone".to_owned());
    }
    if r.kind == EntryKind::Converted && r.glm != env!("CARGO_PKG_VERSION") {
        return Some(format!("converted by glm {}", r.glm));
    }
    let current = hub.cached_snapshot(&r.repo, &r.revision)?;
    (r.kind == EntryKind::Converted && current.commit != r.commit).then(|| {
        format!(
            "{} has moved on to {}",
            r.revision,
            &current.commit[..current.commit.len().min(10)]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sets_list_their_other_parts() {
        let parts = split_parts(Path::new("/m/GLM-Q8_0-00001-of-00003.gguf"));
        assert_eq!(
            parts,
            [
                Path::new("/m/GLM-Q8_0-00002-of-00003.gguf"),
                Path::new("/m/GLM-Q8_0-00003-of-00003.gguf")
            ]
        );
        assert!(split_parts(Path::new("/m/GLM-Q8_0.gguf")).is_empty());
    }

    #[test]
    fn columns_line_up() {
        let rows = [["a".to_owned(), "bb".to_owned()], ["ccc".to_owned(), "d".to_owned()]];
        assert_eq!(columns(&rows), "a    bb\nccc  d\n");
    }
}

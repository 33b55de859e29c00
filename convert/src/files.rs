//! Every file glm reads whole or writes goes through here.
//!
//! Reading: only regular files are opened (a FIFO or a device would block or never end),
//! and files read whole have a size limit, so a stranger's file cannot take unbounded
//! memory. Writing: an output may not be one of the command's inputs (compared by file
//! identity, so symbolic and hard links are caught), nor anything but a regular file; the
//! data goes to a temporary file beside the target, is synced and renamed into place, and
//! the folder is synced. Temporary files of writes in progress are recorded so that a
//! signal handler can remove them ([`remove_partial_files`]).

use std::collections::HashSet;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{ConvertError, Result};

/// Limits for files read whole.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// `tokenizer.json` of a large-vocabulary model is tens of MB.
pub const MAX_TOKENIZER_BYTES: u64 = 512 << 20;
pub const MAX_PRESET_BYTES: u64 = 1 << 20;
/// Importance matrices of the largest MoE models reach a few GB.
pub const MAX_IMATRIX_BYTES: u64 = 8 << 30;

/// Opens `path` for reading if it is a regular file. The open itself never blocks: a FIFO
/// is opened non-blocking and then refused.
pub fn open_regular(path: &Path) -> Result<File> {
    let file = open_nonblocking(path).map_err(|e| ConvertError::io(path, e))?;
    let meta = file.metadata().map_err(|e| ConvertError::io(path, e))?;
    if !meta.is_file() {
        return Err(ConvertError::Invalid(format!(
            "{}: not a regular file ({})",
            path.display(),
            kind_of(&meta)
        )));
    }
    Ok(file)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// The whole of a regular file of at most `limit` bytes.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata().map_err(|e| ConvertError::io(path, e))?.len();
    if len > limit {
        return Err(too_large(path, len, limit));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` also bounds a file that grows while we read it.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ConvertError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, bytes.len() as u64, limit));
    }
    Ok(bytes)
}

/// A UTF-8 text file of at most `limit` bytes.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_limited(path, limit)?)
        .map_err(|e| ConvertError::Invalid(format!("{}: not UTF-8 text ({e})", path.display())))
}

fn too_large(path: &Path, len: u64, limit: u64) -> ConvertError {
    ConvertError::Invalid(format!(
        "{}: {len} bytes is larger than the {} bytes this file may have",
        path.display(),
        limit
    ))
}

fn kind_of(meta: &Metadata) -> &'static str {
    let ty = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ty.is_fifo() {
            return "a FIFO";
        }
        if ty.is_socket() {
            return "a socket";
        }
        if ty.is_block_device() || ty.is_char_device() {
            return "a device";
        }
    }
    if ty.is_dir() {
        "a folder"
    } else {
        "not a plain file"
    }
}

/// Device and inode: equal for two paths that name the same file through any links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId(u64, u64);

#[cfg(unix)]
fn file_id(meta: &Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some(FileId(meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &Metadata) -> Option<FileId> {
    None
}

/// The identities of `inputs`; a folder counts with every entry in it (a checkpoint
/// folder's shards, config and tokenizer are all inputs).
fn input_ids(inputs: &[&Path]) -> HashSet<FileId> {
    let mut ids = HashSet::new();
    for input in inputs {
        let Ok(meta) = std::fs::metadata(input) else {
            continue;
        };
        ids.extend(file_id(&meta));
        if meta.is_dir() {
            let entries = std::fs::read_dir(input).into_iter().flatten().flatten();
            ids.extend(entries.filter_map(|e| std::fs::metadata(e.path()).ok().and_then(|m| file_id(&m))));
        }
    }
    ids
}

/// Refuses an output that would replace one of `inputs`, that is not a regular file
/// (device, FIFO, socket, folder, dangling link), whose folder does not exist, or that
/// exists while `overwrite` is false. Called before any work starts.
pub fn check_output(path: &Path, inputs: &[&Path], overwrite: bool) -> Result<()> {
    let refuse = |why: &str| Err(ConvertError::Invalid(format!("{}: {why}", path.display())));
    let folder = parent_folder(path);
    if !folder.is_dir() {
        return refuse("the folder to write into does not exist");
    }
    if path.file_name().is_none() {
        return refuse("not a file name");
    }
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return refuse("is a symbolic link to nothing; remove it or choose another output");
    };
    if !meta.is_file() {
        return refuse(&format!(
            "is {}, not a regular file; choose another output",
            kind_of(&meta)
        ));
    }
    if file_id(&meta).is_some_and(|id| input_ids(inputs).contains(&id)) {
        return refuse("is an input of this command; choose another output");
    }
    if !overwrite {
        return refuse("already exists; pass --force to replace it");
    }
    Ok(())
}

/// Refuses two outputs of one command that are the same file.
pub fn check_distinct(a: &Path, b: &Path) -> Result<()> {
    if resolved(a) == resolved(b) {
        return Err(ConvertError::Invalid(format!(
            "{}: the model and its vision projector would be written to the same file; choose another output",
            a.display()
        )));
    }
    Ok(())
}

/// The absolute path a write lands on: the folder resolved, and a symbolic link at the
/// path itself followed (so that the link stays and its target is replaced).
fn resolved(path: &Path) -> PathBuf {
    if let Ok(target) = std::fs::canonicalize(path) {
        return target;
    }
    let folder = std::fs::canonicalize(parent_folder(path)).unwrap_or_else(|_| parent_folder(path));
    match path.file_name() {
        Some(name) => folder.join(name),
        None => folder,
    }
}

fn parent_folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Temporary files of writes in progress.
static PARTIAL_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes the temporary files of every write in progress. For signal handlers (run from
/// an ordinary thread, not the signal context): the process exits right after.
pub fn remove_partial_files() {
    let files = match PARTIAL_FILES.lock() {
        Ok(files) => files.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for file in files {
        let _ = std::fs::remove_file(file);
    }
}

fn track_partial(path: &Path, add: bool) {
    let mut files = match PARTIAL_FILES.lock() {
        Ok(files) => files,
        Err(poisoned) => poisoned.into_inner(),
    };
    if add {
        files.push(path.to_path_buf());
    } else {
        files.retain(|p| p != path);
    }
}

/// Runs `body` against a temporary file beside `path` and moves the result into place
/// only when `body` succeeds and the data is on disk. On any error (and on a signal, see
/// [`remove_partial_files`]) the temporary file is removed and `path` is untouched.
/// Permissions follow the umask, as for any newly created file.
pub fn write_atomically<T, E: From<ConvertError>>(
    path: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let mut body = Some(body);
    let mut values = write_all_atomically(&[path.to_path_buf()], |_, out| match body.take() {
        Some(body) => body(out),
        None => Err(ConvertError::Invalid("one file written twice (a bug in glm)".into()).into()),
    })?;
    values
        .pop()
        .ok_or_else(|| ConvertError::Invalid("no file written (a bug in glm)".into()).into())
}

/// [`write_atomically`] for a set of files that only make sense together (the parts of a
/// split model): `body(i, out)` writes `paths[i]`, in order, each into a temporary file;
/// the files are moved into place only once all are written and on disk. On an error
/// none of them appears (one renamed before a later rename failed is removed again).
pub fn write_all_atomically<T, E: From<ConvertError>>(
    paths: &[PathBuf],
    mut body: impl FnMut(usize, &mut BufWriter<File>) -> std::result::Result<T, E>,
) -> std::result::Result<Vec<T>, E> {
    // Dropping a part removes its temporary file; the guard forgets them for the signal
    // handler however this ends.
    let mut guard = Tracked(Vec::with_capacity(paths.len()));
    let mut values = Vec::with_capacity(paths.len());
    let mut parts = Vec::with_capacity(paths.len());
    for (index, path) in paths.iter().enumerate() {
        let part = PartialFile::create(path)?;
        guard.0.push(part.temp.path().to_path_buf());
        values.push(write_and_sync(part.temp.as_file(), |out| body(index, out))?);
        parts.push(part);
    }
    let mut persisted: Vec<PathBuf> = Vec::with_capacity(parts.len());
    for part in parts {
        let target = part.target.clone();
        if let Err(e) = part.persist() {
            for done in &persisted {
                let _ = std::fs::remove_file(done);
            }
            return Err(e.into());
        }
        persisted.push(target);
    }
    drop(guard);
    Ok(values)
}

/// Temporary files registered for [`remove_partial_files`] while a write is in progress.
struct Tracked(Vec<PathBuf>);

impl Drop for Tracked {
    fn drop(&mut self) {
        for path in &self.0 {
            track_partial(path, false);
        }
    }
}

/// A temporary file beside its target, removed when dropped unless persisted.
struct PartialFile {
    /// As given, for messages.
    path: PathBuf,
    target: PathBuf,
    temp: tempfile::NamedTempFile,
}

impl PartialFile {
    fn create(path: &Path) -> Result<Self> {
        let target = resolved(path);
        let folder = parent_folder(&target);
        let prefix = format!(
            ".{}.",
            target.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
        let temp = temp_builder(&prefix).tempfile_in(&folder).map_err(|e| {
            ConvertError::Invalid(format!("{}: cannot write: {}", path.display(), without_temp_name(e)))
        })?;
        track_partial(temp.path(), true);
        Ok(Self {
            path: path.to_path_buf(),
            target,
            temp,
        })
    }

    fn persist(self) -> Result<()> {
        refuse_non_regular(&self.target)?;
        let folder = parent_folder(&self.target);
        self.temp
            .persist(&self.target)
            .map_err(|e| ConvertError::io(&self.path, without_temp_name(e.error)))?;
        sync_folder(&folder).map_err(|e| ConvertError::io(&folder, e))
    }
}

/// tempfile appends ` at path "<temporary file>"` to its errors; that name means nothing
/// to the user (the file is gone by the time they read it), so only the cause is kept.
fn without_temp_name(error: std::io::Error) -> std::io::Error {
    let text = error.to_string();
    match text.split_once(" at path ") {
        Some((cause, _)) => std::io::Error::new(error.kind(), cause.to_owned()),
        None => error,
    }
}

/// Where an output named on the command line goes: a path naming an existing folder
/// (with or without a trailing slash) means `default_name` in that folder; a trailing
/// slash on anything else names a folder that does not exist.
pub fn output_in_folder(path: &Path, default_name: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        return Ok(path.join(default_name));
    }
    if path.as_os_str().to_string_lossy().ends_with(std::path::is_separator) {
        return Err(ConvertError::Invalid(format!("{}: no such folder", path.display())));
    }
    Ok(path.to_path_buf())
}

fn temp_builder(prefix: &str) -> tempfile::Builder<'_, '_> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The mode given at creation is reduced by the umask, like any other new file.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder
}

fn write_and_sync<T, E: From<ConvertError>>(
    file: &File,
    body: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let clone = file.try_clone().map_err(|e| ConvertError::io("temporary file", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, clone);
    let value = body(&mut out)?;
    out.flush().map_err(|e| ConvertError::io("temporary file", e))?;
    drop(out);
    file.sync_all().map_err(|e| ConvertError::io("temporary file", e))?;
    Ok(value)
}

/// A device or FIFO may have appeared at the target while we wrote; never rename over it.
fn refuse_non_regular(target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(meta) if !meta.is_file() => Err(ConvertError::Invalid(format!(
            "{}: is {}, not a regular file; choose another output",
            target.display(),
            kind_of(&meta)
        ))),
        _ => Ok(()),
    }
}

/// Makes a rename durable: the folder entry itself is synced.
fn sync_folder(folder: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(folder)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = folder;
        Ok(())
    }
}

/// Tells the kernel a streamed pass is done with `range` of a read-only file map, so its
/// pages leave the resident set; without this, reading a 100 GB file once would still end
/// with all of it counted as resident memory. Only whole pages inside the range go.
pub fn release_pages(map: &memmap2::Mmap, range: std::ops::Range<usize>) {
    let page = 4096;
    let first = range.start.div_ceil(page) * page;
    let last = range.end.min(map.len()) / page * page;
    if last > first {
        // SAFETY: MADV_DONTNEED on a read-only, file-backed private mapping only drops
        // cached pages; the next access re-reads them from the file, so no slice that
        // safe code holds can observe different contents.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first) };
    }
}

/// Writes `bytes` as the whole of `path`, atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(path, |out| out.write_all(bytes).map_err(|e| ConvertError::io(path, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        std::fs::write(&path, "old").unwrap();
        write_bytes(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_body_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let result: Result<()> = write_atomically(&path, |_| Err(ConvertError::Invalid("stop".into())));
        assert!(result.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(PARTIAL_FILES.lock().unwrap().is_empty());
    }

    #[test]
    fn a_missing_folder_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder").join("out.json");
        assert!(write_bytes(&path, b"new").is_err());
        assert!(check_output(&path, &[], true).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn inputs_links_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.gguf");
        std::fs::write(&input, "x").unwrap();
        let hard = dir.path().join("hard.gguf");
        std::fs::hard_link(&input, &hard).unwrap();
        let message = |p: &Path| check_output(p, &[&input], true).unwrap_err().to_string();
        assert!(message(&input).contains("is an input"));
        assert!(message(&hard).contains("is an input"));
        #[cfg(unix)]
        {
            let soft = dir.path().join("soft.gguf");
            std::os::unix::fs::symlink(&input, &soft).unwrap();
            assert!(message(&soft).contains("is an input"));
            assert!(message(Path::new("/dev/null")).contains("not a regular file"));
        }
        assert!(message(dir.path()).contains("folder"));
        let folder_input = check_output(&input, &[dir.path()], true).unwrap_err().to_string();
        assert!(folder_input.contains("is an input"), "{folder_input}");
        let other = dir.path().join("other.gguf");
        std::fs::write(&other, "y").unwrap();
        assert!(check_output(&other, &[&input], false)
            .unwrap_err()
            .to_string()
            .contains("--force"));
        check_output(&other, &[&input], true).unwrap();
        check_output(&dir.path().join("new.gguf"), &[&input], false).unwrap();
    }

    #[test]
    fn a_folder_output_gets_the_default_name() {
        let dir = tempfile::tempdir().unwrap();
        let name = Path::new("m-Q8_0.gguf");
        assert_eq!(output_in_folder(dir.path(), name).unwrap(), dir.path().join(name));
        let slashed = PathBuf::from(format!("{}/", dir.path().display()));
        assert_eq!(output_in_folder(&slashed, name).unwrap(), slashed.join(name));
        let file = dir.path().join("out.gguf");
        assert_eq!(output_in_folder(&file, name).unwrap(), file);
        let missing = PathBuf::from(format!("{}/", dir.path().join("nope").display()));
        let message = output_in_folder(&missing, name).unwrap_err().to_string();
        assert_eq!(message, format!("{}: no such folder", missing.display()));
    }

    #[test]
    fn errors_name_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("gone");
        std::fs::create_dir(&folder).unwrap();
        let path = folder.join("out.json");
        std::fs::remove_dir(&folder).unwrap();
        let message = write_bytes(&path, b"x").unwrap_err().to_string();
        assert!(!message.contains(".partial"), "{message}");
        assert_eq!(message.matches("os error").count(), 1, "{message}");
    }

    #[test]
    fn writing_through_a_link_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.json");
        std::fs::write(&target, "old").unwrap();
        let link = dir.path().join("link.json");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&target, &link).unwrap();
            write_bytes(&link, b"new").unwrap();
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
            assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        }
    }

    #[test]
    fn reads_are_bounded_and_refuse_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        std::fs::write(&path, vec![b' '; 100]).unwrap();
        assert!(read_limited(&path, 99).unwrap_err().to_string().contains("larger"));
        assert_eq!(read_limited(&path, 100).unwrap().len(), 100);
        assert!(read_limited(dir.path(), 100).is_err());
        #[cfg(unix)]
        {
            let fifo = dir.path().join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            assert!(read_limited(&fifo, 100).unwrap_err().to_string().contains("FIFO"));
        }
    }
}

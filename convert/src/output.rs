//! Where a model's bytes go: one GGUF file or the parts of a split set (see [`crate::split`]),
//! each written atomically, with the data handed to a writer thread so that encoding never
//! waits for the disk.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{ConvertError, Result};
use crate::gguf::{self, Metadata, TensorHeader};
use crate::split::{self, SplitLimits};
use crate::writer::WriteError;

/// Checks one file about to be written (not an input, not a device, not replaced
/// without `--force`); called for every file, split parts included, before any is written.
pub type OutputCheck<'a> = dyn Fn(&Path) -> Result<()> + Sync + 'a;

/// How the model file is written.
#[derive(Clone, Copy, Default)]
pub struct OutputOptions<'a> {
    /// Limits that make a split set of several files.
    pub split: SplitLimits,
    pub check: Option<&'a OutputCheck<'a>>,
}

/// Writes a model to `output`, or to the parts of a split set when `options.split` asks:
/// each part's header, then `write_tensor(i, out)` for each of its tensors in order. All
/// files appear together once complete, or none does. Returns them and their size.
pub(crate) fn write_model(
    output: &Path,
    meta: &Metadata,
    headers: &[TensorHeader],
    options: &OutputOptions,
    mut write_tensor: impl FnMut(usize, &mut TensorSink) -> Result<u64, WriteError>,
) -> Result<(Vec<PathBuf>, u64)> {
    let parts = split::plan_parts(headers, options.split)?;
    let paths = split::part_paths(output, parts.len());
    if let Some(check) = options.check {
        paths.iter().try_for_each(|p| check(p))?;
    }
    let sizes = crate::files::write_all_atomically(&paths, |index, file| {
        let tensors = parts[index].clone();
        let part_meta = split::part_metadata(meta, index, parts.len(), headers.len());
        write_in_background(file, |out| {
            let mut written = gguf::write_header(out, &part_meta, &headers[tensors.clone()])?;
            for tensor in tensors {
                written += write_tensor(tensor, out)?;
            }
            Ok(written)
        })
        .map_err(|e| match e {
            WriteError::Io(e) => ConvertError::io(&paths[index], e),
            WriteError::Convert(e) => e,
        })
    })?;
    Ok((paths, sizes.iter().sum()))
}

/// Where tensor data goes: buffers handed to a writer thread, so that the encoding
/// threads go on with the next chunk while the last one is written.
pub(crate) type TensorSink = BufWriter<ChannelWriter>;

/// Buffers of encoded data queued for the writer thread; bounds the memory in flight.
const WRITE_QUEUE: usize = 4;

/// Runs `body` with a [`TensorSink`] whose data a second thread writes to `file`, in
/// order. Errors of either side are returned (the file's own, not the closed channel's).
fn write_in_background<T>(
    file: &mut BufWriter<File>,
    body: impl FnOnce(&mut TensorSink) -> Result<T, WriteError>,
) -> Result<T, WriteError> {
    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(WRITE_QUEUE);
        let writer = scope.spawn(move || -> std::io::Result<()> {
            let mut writeback = Writeback::default();
            for buffer in receiver {
                file.write_all(&buffer)?;
                writeback.wrote(file.get_ref(), buffer.len() as u64);
            }
            Ok(())
        });
        let mut sink = BufWriter::with_capacity(1 << 20, ChannelWriter(sender));
        let result = body(&mut sink).and_then(|value| {
            sink.flush()?;
            Ok(value)
        });
        // Closing the channel ends the writer's loop.
        drop(sink);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        match (result, written) {
            (_, Err(e)) => Err(WriteError::Io(e)),
            (result, Ok(())) => result,
        }
    })
}

/// Starts the disk writes of a file being written as it grows, so that the `fsync` that
/// ends an atomic write (see `files::write_atomically`) finds little left to do instead
/// of flushing gigabytes while every core waits. Only a hint to the kernel: it returns
/// at once, and errors are left to the `fsync`.
#[derive(Default)]
struct Writeback {
    written: u64,
    started: u64,
}

impl Writeback {
    /// Bytes between two writeback requests.
    const STEP: u64 = 64 << 20;

    fn wrote(&mut self, file: &File, bytes: u64) {
        self.written += bytes;
        if self.written - self.started >= Self::STEP {
            start_writeback(file, self.started, self.written - self.started);
            self.started = self.written;
        }
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range on a file descriptor this `File` owns, with plain integer
    // arguments; it reads no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Sends what is written to the writer thread.
pub(crate) struct ChannelWriter(std::sync::mpsc::SyncSender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the writer thread stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

//! Writing safetensors files tensor by tensor, and staging outputs so that only complete results
//! ever appear under their final name.

use std::borrow::Cow;
use std::cell::Cell;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};

use safetensors::Dtype as StDtype;

use crate::error::{Error, Result};

/// A tensor's header entry, known before its data exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// safetensors dtype.
    pub dtype: StDtype,
    /// Shape.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Bytes of data this spec holds (elements times dtype size).
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Streams one safetensors file: the header is written first from the specs, then each tensor's
/// bytes in spec order, checked against its spec; so a checkpoint bigger than memory is written with
/// one tensor in flight.
pub struct FileWriter {
    path: PathBuf,
    out: BufWriter<File>,
    specs: Vec<TensorSpec>,
    next: usize,
}

impl FileWriter {
    /// Creates `path` (which must not exist) and writes the header for `specs`, with `metadata` as
    /// the header's `__metadata__`.
    pub fn create(path: &Path, specs: Vec<TensorSpec>, metadata: &[(String, String)]) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            let m: serde_json::Map<String, serde_json::Value> = metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            header.insert("__metadata__".into(), serde_json::Value::Object(m));
        }
        let mut offset = 0usize;
        for s in &specs {
            let end = offset + s.byte_len();
            header.insert(
                s.name.clone(),
                serde_json::json!({ "dtype": s.dtype.to_string(), "shape": s.shape, "data_offsets": [offset, end] }),
            );
            offset = end;
        }
        let mut json = serde_json::Value::Object(header).to_string().into_bytes();
        // Pad with spaces so the data section starts 8-byte aligned, as the safetensors writer does:
        // readers can then view f32/bf16 data in place.
        while json.len() % 8 != 0 {
            json.push(b' ');
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&(json.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(&json))
            .map_err(|e| Error::io(path, e))?;
        Ok(FileWriter {
            path: path.to_path_buf(),
            out,
            specs,
            next: 0,
        })
    }

    /// Writes the next tensor's bytes; `name` and the length must match the next spec.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(spec) = self.specs.get(self.next) else {
            return Err(Error::invalid(
                name,
                "written after the last tensor of the header",
            ));
        };
        if spec.name != name {
            return Err(Error::invalid(
                name,
                format!("written where the header expects `{}`", spec.name),
            ));
        }
        if bytes.len() != spec.byte_len() {
            return Err(Error::length(name, &spec.shape, spec.byte_len(), bytes.len()));
        }
        self.out.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
        self.next += 1;
        Ok(())
    }

    /// Flushes and syncs the file; every spec must have been written.
    pub fn finish(self) -> Result<()> {
        if self.next != self.specs.len() {
            return Err(Error::invalid(
                &self.specs[self.next].name,
                "never written (the file would be incomplete)",
            ));
        }
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// Tensors queued for a writer thread at most; with one being written and one being computed, the
/// caller holds at most this many more in memory.
const WRITE_QUEUE: usize = 2;

enum Msg<'a> {
    Tensor(String, Cow<'a, [u8]>),
    Finish,
}

/// The producing side of [`FileWriter::write_behind`]: tensors handed to it are written in order by
/// the writer thread.
pub struct Sink<'a> {
    tx: SyncSender<Msg<'a>>,
    stopped: Cell<bool>,
}

impl<'a> Sink<'a> {
    /// Queues the next tensor (waiting while the queue is full). Its name and length are checked by
    /// the writer against the header; an error here means the writer has stopped, and
    /// [`FileWriter::write_behind`] returns the writer's own error instead.
    pub fn write(&self, name: impl Into<String>, bytes: impl Into<Cow<'a, [u8]>>) -> Result<()> {
        let name = name.into();
        if self.tx.send(Msg::Tensor(name.clone(), bytes.into())).is_err() {
            self.stopped.set(true);
            return Err(Error::invalid(&name, "not written: the file writer stopped"));
        }
        Ok(())
    }
}

impl FileWriter {
    /// Runs `produce` on this thread while a scoped thread writes what it queues on the [`Sink`], so
    /// the copies into the file overlap the computation of the next tensors. The file is finished
    /// (flushed, synced, checked complete) only when `produce` succeeds; a writer error (a full disk)
    /// is returned in preference to the error it causes in `produce`.
    ///
    /// ```no_run
    /// use nvfp4::checkpoint::{FileWriter, TensorSpec};
    /// let spec = TensorSpec { name: "x".into(), dtype: safetensors::Dtype::U8, shape: vec![4] };
    /// let w = FileWriter::create("out.safetensors".as_ref(), vec![spec], &[])?;
    /// w.write_behind(|sink| sink.write("x", vec![1u8, 2, 3, 4]))?;
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn write_behind<'a, R>(self, produce: impl FnOnce(&Sink<'a>) -> Result<R>) -> Result<R> {
        std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<Msg<'a>>(WRITE_QUEUE);
            let writer = scope.spawn(move || -> Result<()> {
                let mut w = self;
                for msg in rx {
                    match msg {
                        Msg::Tensor(name, bytes) => w.write(&name, &bytes)?,
                        Msg::Finish => return w.finish(),
                    }
                }
                // The producer failed: leave the temporary to its `Staged` owner.
                Ok(())
            });
            let sink = Sink {
                tx,
                stopped: Cell::new(false),
            };
            let produced = produce(&sink);
            if produced.is_ok() {
                // A send error here means the writer stopped; `written` says why.
                let _ = sink.tx.send(Msg::Finish);
            }
            let stopped = sink.stopped.get();
            drop(sink);
            let written = writer
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            match (produced, written) {
                (Ok(r), Ok(())) => Ok(r),
                (Err(e), Ok(())) => Err(e),
                (Ok(_), Err(e)) => Err(e),
                (Err(p), Err(w)) => Err(if stopped { w } else { p }),
            }
        })
    }
}

/// An output being written under a hidden temporary name in its final directory
/// (`.NAME.nvfp4-partial-PID`), renamed into place by [`Staged::commit`]. Dropped without a commit
/// (an error, a panic) it removes the temporary; a killed process leaves it, and the next run for the
/// same output removes temporaries whose process is gone.
pub struct Staged {
    target: PathBuf,
    temp: PathBuf,
    force: bool,
    committed: bool,
}

impl Staged {
    /// Stages `target`, a file (`dir == false`) or a directory. Fails with [`Error::OutputExists`]
    /// when `target` exists and `force` is false.
    pub fn new(target: &Path, dir: bool, force: bool) -> Result<Self> {
        if target.symlink_metadata().is_ok() && !force {
            return Err(Error::OutputExists {
                path: target.display().to_string(),
            });
        }
        let name = target
            .file_name()
            .ok_or_else(|| Error::invalid(&target.display().to_string(), "output needs a file name"))?
            .to_string_lossy()
            .into_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        remove_stale(&parent, &name);
        let temp = parent.join(format!(".{name}.nvfp4-partial-{}", std::process::id()));
        let _ = remove_any(&temp);
        if dir {
            std::fs::create_dir(&temp).map_err(|e| Error::io(&temp, e))?;
        }
        Ok(Staged {
            target: target.to_path_buf(),
            temp,
            force,
            committed: false,
        })
    }

    /// Where to write: the temporary file, or the temporary directory.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Renames the temporary to the target (replacing an existing target when forced).
    pub fn commit(mut self) -> Result<()> {
        if self.target.symlink_metadata().is_ok() {
            if !self.force {
                return Err(Error::OutputExists {
                    path: self.target.display().to_string(),
                });
            }
            if self.target.is_dir() {
                // A directory cannot be renamed over a non-empty one: move the old aside first.
                let old = self.temp.with_extension("old");
                std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
                std::fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
                let _ = std::fs::remove_dir_all(&old);
                self.committed = true;
                return Ok(());
            }
        }
        std::fs::rename(&self.temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = remove_any(&self.temp);
        }
    }
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// Removes `.NAME.nvfp4-partial-PID` temporaries left by killed runs (PID no longer alive).
fn remove_stale(parent: &Path, name: &str) {
    let prefix = format!(".{name}.nvfp4-partial-");
    let Ok(rd) = std::fs::read_dir(parent) else { return };
    for e in rd.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = f.strip_prefix(&prefix) else {
            continue;
        };
        let pid = pid.trim_end_matches(".old");
        if pid.parse::<u32>().is_ok()
            && !Path::new("/proc").join(pid).exists()
            && Path::new("/proc/self").exists()
        {
            let _ = remove_any(&e.path());
        }
    }
}

//! One safetensors file, memory-mapped and validated: the tensors' names, dtypes, shapes and bytes.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensorError, SafeTensors};

use crate::error::{Error, Result};

/// One tensor's entry in a safetensors header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: StDtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its byte range in the whole file (header included).
    pub range: std::ops::Range<usize>,
}

impl TensorEntry {
    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the tensor holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// A memory-mapped safetensors file whose header the `safetensors` crate has validated (offsets
/// contiguous, inside the file, sizes matching shapes and dtypes).
pub struct TensorFile {
    path: PathBuf,
    map: Mmap,
    entries: Vec<TensorEntry>,
    metadata: Vec<(String, String)>,
}

/// A dense floating-point tensor borrowed from a file (or copied when the file's bytes are not
/// aligned for the element type).
#[derive(Debug)]
pub enum Dense<'a> {
    /// IEEE binary32.
    F32(Cow<'a, [f32]>),
    /// IEEE binary16.
    F16(Cow<'a, [f16]>),
    /// bfloat16.
    Bf16(Cow<'a, [bf16]>),
}

impl Dense<'_> {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Dense::F32(v) => v.len(),
            Dense::F16(v) => v.len(),
            Dense::Bf16(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cast<T: bytemuck::Pod + bytemuck::Zeroable>(bytes: &[u8]) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => Cow::Borrowed(s),
        // safetensors only promises 8-byte alignment of the data section when the writer padded the
        // header; older writers did not, so fall back to a copy.
        Err(_) => {
            let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
            bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
            Cow::Owned(v)
        }
    }
}

impl TensorFile {
    /// Maps and validates `path`. Errors: [`Error::Io`], [`Error::CorruptHeader`] (truncated, not
    /// JSON, inconsistent sizes), [`Error::TensorOutOfBounds`] (offsets past the end of the file).
    ///
    /// ```no_run
    /// let f = nvfp4::checkpoint::TensorFile::open("model.safetensors".as_ref())?;
    /// for t in f.entries() {
    ///     println!("{} {:?} {:?}", t.name, t.dtype, t.shape);
    /// }
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn open(path: &Path) -> Result<Self> {
        let map = super::map::map_read_only(path)?;
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| diagnose(path, &map, e))?;
        let base = 8 + header_len;
        let mut entries: Vec<TensorEntry> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| TensorEntry {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: base + info.data_offsets.0..base + info.data_offsets.1,
            })
            .collect();
        entries.sort_by_key(|e| e.range.start);
        let mut metadata: Vec<(String, String)> = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        metadata.sort();
        Ok(TensorFile {
            path: path.to_path_buf(),
            map,
            entries,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensors, in the order of their data in the file.
    pub fn entries(&self) -> &[TensorEntry] {
        &self.entries
    }

    /// The header's `__metadata__` pairs, sorted by key.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// The entry named `name`.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// A tensor's bytes, straight from the map.
    pub fn bytes(&self, e: &TensorEntry) -> &[u8] {
        &self.map[e.range.clone()]
    }

    /// A tensor's elements when it is F32, F16 or BF16; [`Error::UnsupportedDtype`] otherwise.
    pub fn dense(&self, e: &TensorEntry) -> Result<Dense<'_>> {
        let b = self.bytes(e);
        Ok(match e.dtype {
            StDtype::F32 => Dense::F32(cast(b)),
            StDtype::F16 => Dense::F16(cast(b)),
            StDtype::BF16 => Dense::Bf16(cast(b)),
            other => return Err(self.unsupported(e, other, "F32, F16 or BF16")),
        })
    }

    pub(crate) fn unsupported(&self, e: &TensorEntry, dtype: StDtype, expected: &str) -> Error {
        Error::UnsupportedDtype {
            file: self.path.display().to_string(),
            tensor: e.name.clone(),
            dtype: dtype.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// Turns the `safetensors` crate's error into one that names the file and, where one is to blame, the
/// tensor: the crate reports "incomplete buffer" without saying which tensor runs past the end.
fn diagnose(path: &Path, map: &[u8], e: SafeTensorError) -> Error {
    let file = path.display().to_string();
    let corrupt = |what: String| Error::CorruptHeader {
        file: file.clone(),
        what,
    };
    match e {
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidOffset(_) => {
            if let Some(err) = find_out_of_bounds(&file, map) {
                return err;
            }
            match e {
                SafeTensorError::InvalidOffset(t) => corrupt(format!(
                    "tensor `{t}`: data offsets leave a hole or overlap another tensor"
                )),
                _ => corrupt(format!(
                    "the tensors' data does not fill the file ({} bytes)",
                    map.len()
                )),
            }
        }
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => corrupt(format!(
            "truncated: the header length prefix points past the end of the file ({} bytes)",
            map.len()
        )),
        SafeTensorError::TensorInvalidInfo => {
            corrupt("a tensor's data offsets do not match its shape and dtype".into())
        }
        other => corrupt(other.to_string()),
    }
}

/// The first tensor whose end offset lies beyond the data section, read from the raw header JSON.
fn find_out_of_bounds(file: &str, map: &[u8]) -> Option<Error> {
    let n = u64::from_le_bytes(map.get(..8)?.try_into().ok()?) as usize;
    let header = map.get(8..8usize.checked_add(n)?)?;
    let json: serde_json::Value = serde_json::from_slice(header).ok()?;
    let data_len = map.len() - 8 - n;
    let mut bad: Vec<(usize, usize, String)> = json
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(k, v)| {
            let o = v.get("data_offsets")?.as_array()?;
            let s = o.first()?.as_u64()? as usize;
            let e = o.get(1)?.as_u64()? as usize;
            (e > data_len || s > data_len).then(|| (s, e, k.clone()))
        })
        .collect();
    bad.sort();
    let (start, end, tensor) = bad.into_iter().next()?;
    Some(Error::TensorOutOfBounds {
        file: file.to_string(),
        tensor,
        start,
        end,
        data_len,
    })
}

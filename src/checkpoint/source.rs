//! A checkpoint on disk: one safetensors file, or a sharded model (`model.safetensors.index.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::file::{TensorEntry, TensorFile};
use crate::error::{Error, Result};

/// The index file name of a sharded Hugging Face model.
pub const INDEX_NAME: &str = "model.safetensors.index.json";

/// A checkpoint opened for reading: its files and where each tensor lives.
///
/// `open` accepts a `.safetensors` file, a sharded model's index file, or a model directory holding
/// either `model.safetensors.index.json` or exactly one `*.safetensors` file.
pub struct Checkpoint {
    /// The model directory, when the input was a directory or an index (its `config.json` and other
    /// files belong to the model); `None` for a bare `.safetensors` file.
    pub dir: Option<PathBuf>,
    /// The index file of a sharded model.
    pub index: Option<PathBuf>,
    files: Vec<TensorFile>,
    by_name: BTreeMap<String, (usize, usize)>,
}

impl Checkpoint {
    /// Opens `path` (file, index or directory) and maps every shard.
    ///
    /// Errors: [`Error::MissingShard`] when the index names a file that is not there, and every
    /// error of [`TensorFile::open`].
    ///
    /// ```no_run
    /// let ck = nvfp4::checkpoint::Checkpoint::open("models/llama".as_ref())?;
    /// println!("{} tensors in {} files", ck.len(), ck.files().len());
    /// # Ok::<(), nvfp4::Error>(())
    /// ```
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let index = path.join(INDEX_NAME);
            if index.is_file() {
                return Self::open_index(&index);
            }
            let mut found = Vec::new();
            for e in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
                let p = e.map_err(|e| Error::io(path, e))?.path();
                if p.extension().is_some_and(|x| x == "safetensors") {
                    found.push(p);
                }
            }
            found.sort();
            if found.len() != 1 {
                return Err(Error::io(
                    path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "expected {INDEX_NAME} or exactly one .safetensors file, found {}",
                            found.len()
                        ),
                    ),
                ));
            }
            let mut ck = Self::from_files(vec![TensorFile::open(&found[0])?])?;
            ck.dir = Some(path.to_path_buf());
            return Ok(ck);
        }
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".index.json"))
        {
            return Self::open_index(path);
        }
        Self::from_files(vec![TensorFile::open(path)?])
    }

    fn open_index(index: &Path) -> Result<Self> {
        let dir = index.parent().unwrap_or(Path::new(".")).to_path_buf();
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let corrupt = |what: &str| Error::CorruptHeader {
            file: index.display().to_string(),
            what: what.to_string(),
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| corrupt(&format!("not JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| corrupt("no `weight_map` object"))?;
        let mut shards: Vec<String> = Vec::new();
        for (tensor, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| corrupt(&format!("`{tensor}` maps to a non-string")))?;
            if Path::new(shard).components().count() != 1 {
                return Err(corrupt(&format!("shard name `{shard}` is not a plain file name")));
            }
            if !dir.join(shard).is_file() {
                return Err(Error::MissingShard {
                    index: index.display().to_string(),
                    shard: shard.to_string(),
                    tensor: tensor.clone(),
                });
            }
            if !shards.iter().any(|s| s == shard) {
                shards.push(shard.to_string());
            }
        }
        shards.sort();
        let files = shards
            .iter()
            .map(|s| TensorFile::open(&dir.join(s)))
            .collect::<Result<Vec<_>>>()?;
        let mut ck = Self::from_files(files)?;
        for (tensor, shard) in map {
            let Some(&(f, _)) = ck.by_name.get(tensor) else {
                return Err(Error::MissingShard {
                    index: index.display().to_string(),
                    shard: shard.as_str().unwrap_or_default().to_string(),
                    tensor: tensor.clone(),
                });
            };
            if ck.files[f].path().file_name()
                != Some(std::ffi::OsStr::new(shard.as_str().unwrap_or_default()))
            {
                return Err(corrupt(&format!(
                    "`{tensor}` is indexed in {shard} but stored elsewhere"
                )));
            }
        }
        ck.dir = Some(dir);
        ck.index = Some(index.to_path_buf());
        Ok(ck)
    }

    fn from_files(files: Vec<TensorFile>) -> Result<Self> {
        let mut by_name = BTreeMap::new();
        for (f, file) in files.iter().enumerate() {
            for (i, e) in file.entries().iter().enumerate() {
                if by_name.insert(e.name.clone(), (f, i)).is_some() {
                    return Err(Error::CorruptHeader {
                        file: file.path().display().to_string(),
                        what: format!("tensor `{}` appears in more than one shard", e.name),
                    });
                }
            }
        }
        Ok(Checkpoint {
            dir: None,
            index: None,
            files,
            by_name,
        })
    }

    /// The files (shards), sorted by name.
    pub fn files(&self) -> &[TensorFile] {
        &self.files
    }

    /// Whether the checkpoint is a sharded model with an index.
    pub fn is_sharded(&self) -> bool {
        self.index.is_some()
    }

    /// Tensors in all files.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The file and entry of tensor `name`.
    pub fn get(&self, name: &str) -> Option<(&TensorFile, &TensorEntry)> {
        let &(f, i) = self.by_name.get(name)?;
        Some((&self.files[f], &self.files[f].entries()[i]))
    }

    /// Index of the file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).map(|&(f, _)| f)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| f.entries())
            .map(|e| e.len() as u64)
            .sum()
    }

    /// The `config.json` of the model directory, when there is one.
    pub fn config(&self) -> Result<Option<serde_json::Value>> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let p = dir.join("config.json");
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::CorruptHeader {
                file: p.display().to_string(),
                what: format!("not JSON: {e}"),
            })
    }
}

//! Checkpoints: for each file its identity and the offset up to which every line was
//! acknowledged, and the last acknowledged kernel log sequence number. Written atomically
//! (temporary file, fsync, rename, fsync of the directory), so a crash leaves either the
//! old or the new state, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A file's identity: device, inode, and a fingerprint of its first bytes (so an inode
/// reused for another file, or a file truncated and rewritten, is not taken for the old
/// one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// FNV-1a of the first `fp_len` bytes.
    pub fp: u64,
    pub fp_len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    pub path: PathBuf,
    pub id: FileId,
    /// Every line before this offset was acknowledged.
    pub offset: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub files: Vec<FileCheckpoint>,
    /// Last acknowledged `/dev/kmsg` sequence number, with the boot it belongs to.
    #[serde(default)]
    pub kmsg_seq: Option<u64>,
    #[serde(default)]
    pub boot_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {path}: not valid JSON ({source}); starting from the end of each file")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The checkpoint file of one source (`<state_dir>/<name>.json`).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path, name: &str) -> Self {
        Store {
            path: dir.join(format!("{name}.json")),
            tmp: dir.join(format!(".{name}.json.tmp")),
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state; `Ok(None)` when there is none yet.
    pub fn load(&self) -> Result<Option<State>, CheckpointError> {
        match std::fs::read(&self.path) {
            Ok(b) => {
                serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|source| CheckpointError::Corrupt {
                        path: self.path.clone(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes the state atomically and durably. Returns the bytes written.
    pub fn save(&self, state: &State) -> Result<usize, CheckpointError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CheckpointError::Io { path: p, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let body = serde_json::to_vec(state).unwrap_or_default();
        let mut f = std::fs::File::create(&self.tmp).map_err(io(&self.tmp))?;
        f.write_all(&body).map_err(io(&self.tmp))?;
        f.sync_data().map_err(io(&self.tmp))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(body.len())
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::new(d.path(), "pods");
        assert!(s.load().unwrap().is_none());
        let st = State {
            files: vec![FileCheckpoint {
                path: "/var/log/pods/a/b/0.log".into(),
                id: FileId {
                    dev: 1,
                    ino: 2,
                    fp: 3,
                    fp_len: 4,
                },
                offset: 5,
            }],
            kmsg_seq: Some(9),
            boot_id: Some("b".into()),
        };
        assert!(s.save(&st).unwrap() > 10);
        assert_eq!(s.load().unwrap(), Some(st));
        assert!(!d.path().join(".pods.json.tmp").exists());
        std::fs::write(s.path(), b"{not json").unwrap();
        assert!(matches!(s.load(), Err(CheckpointError::Corrupt { .. })));
    }
}

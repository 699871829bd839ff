//! Reading files a user points the agent at (the config, token, TLS and CA files): only
//! regular files, at most a stated size, never blocking on a FIFO or a device.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest config file read: a config is a few KiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest token, certificate, key or CA bundle read.
pub const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// `O_NONBLOCK`: opening a FIFO that slipped in between the check and the open returns at
/// once instead of waiting for a writer. (Same value on every Linux architecture we build.)
const O_NONBLOCK: i32 = 0o4000;

#[derive(Debug, thiserror::Error)]
pub enum ReadFileError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: not a regular file (it is {kind}); point it at a file")]
    NotRegular {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{what} {path}: larger than the {max} bytes allowed")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        max: u64,
    },
    #[error("{what} {path}: not UTF-8 text")]
    NotText { what: &'static str, path: PathBuf },
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads `path` (symlinks followed) if it is a regular file of at most `max` bytes. `what`
/// names the file in errors ("config file", "token file").
pub fn read_capped(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>, ReadFileError> {
    let io = |source| ReadFileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let check = |meta: &std::fs::Metadata| -> Result<(), ReadFileError> {
        if !meta.file_type().is_file() {
            return Err(ReadFileError::NotRegular {
                what,
                path: path.to_path_buf(),
                kind: kind_of(meta.file_type()),
            });
        }
        if meta.len() > max {
            return Err(ReadFileError::TooLarge {
                what,
                path: path.to_path_buf(),
                max,
            });
        }
        Ok(())
    };
    check(&std::fs::metadata(path).map_err(io)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    // The file opened may not be the one checked (a rename in between).
    check(&file.metadata().map_err(io)?)?;
    let mut buf = Vec::new();
    file.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max {
        return Err(ReadFileError::TooLarge {
            what,
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(buf)
}

/// [`read_capped`] for text files.
pub fn read_capped_text(
    path: &Path,
    max: u64,
    what: &'static str,
) -> Result<String, ReadFileError> {
    String::from_utf8(read_capped(path, max, what)?).map_err(|_| ReadFileError::NotText {
        what,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_regular_files_within_the_cap() {
        let dir = tempdir();
        let p = dir.join("f");
        std::fs::write(&p, "hello").unwrap();
        assert_eq!(read_capped(&p, 5, "test file").unwrap(), b"hello");
        let e = read_capped(&p, 4, "test file").unwrap_err();
        assert!(matches!(e, ReadFileError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("larger than the 4 bytes"), "{e}");
        let e = read_capped(&dir.join("missing"), 4, "token file").unwrap_err();
        assert!(e.to_string().starts_with("token file "), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_devices_fifos_and_directories_without_blocking() {
        let dir = tempdir();
        // A symlink to /dev/zero would otherwise be read forever.
        let link = dir.join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_capped(&link, 1024, "config file").unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");

        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { mkfifo(c.as_ptr(), 0o600) }, 0);
        let t0 = Instant::now();
        let e = read_capped(&fifo, 1024, "config file").unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert!(e.to_string().contains("a FIFO"), "{e}");

        let e = read_capped(&dir, 1024, "config file").unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    extern "C" {
        fn mkfifo(path: *const std::ffi::c_char, mode: u32) -> i32;
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nodescope-files-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

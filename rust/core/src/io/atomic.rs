//! Writers that never leave a half-written file, and the folder swap that makes a whole save
//! atomic.
//!
//! [`write`] puts the bytes in a temporary file beside the destination, flushes them to the
//! disk (`fsync`), renames the temporary file over the destination and flushes the folder's
//! entry. A reader sees the old file or the new one, whole; a process that maps the old file
//! keeps reading the old inode (truncating it in place would end that process with SIGBUS);
//! a destination that is a hard link to another file leaves that file alone.
//!
//! [`exchange`] swaps two folders in one step (Linux `renameat2(RENAME_EXCHANGE)`): a save
//! builds the complete new folder beside the old one and swaps them, so a save interrupted at
//! any point leaves the old folder or the new one, never a mix of their files.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// A temporary name beside `path`, unique within this process and between processes.
fn temp_beside(path: &Path) -> PathBuf {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{serial}.tmp", std::process::id()))
}

/// Flushes a folder's entries (a rename or a new file in it) to the disk. Best effort: some
/// file systems refuse to open or sync a folder, and the data itself is already synced.
fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes `data` to `path` atomically: a temporary file beside it, `fsync`, rename over it.
pub fn write(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = temp_beside(path);
    let written = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

/// Swaps the folders (or files) `a` and `b` in one step. `Ok(false)` where the system cannot
/// (not Linux, an old kernel, a file system without `RENAME_EXCHANGE`): the caller falls back.
pub fn exchange(a: &Path, b: &Path) -> Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;

        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::invalid(format!("{}: a path with a NUL byte", p.display())))
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two valid NUL-terminated paths, relative to the current directory; renameat2
        // reads them and changes nothing else of this process.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            sync_dir(a.parent().unwrap_or(Path::new(".")));
            if a.parent() != b.parent() {
                sync_dir(b.parent().unwrap_or(Path::new(".")));
            }
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => Ok(false),
            _ => Err(Error::io(b, e)),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferrolm-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch("write");
        let path = dir.join("model.safetensors");
        write(&path, b"old").unwrap();
        // A hard link to the old file keeps the old bytes: the new file is another inode.
        let link = dir.join("link");
        fs::hard_link(&path, &link).unwrap();
        write(&path, b"new contents").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new contents");
        assert_eq!(fs::read(&link).unwrap(), b"old");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_names_the_file_and_cleans_up() {
        let dir = scratch("fail");
        let e = write(&dir.join("no-such-folder").join("x"), b"x").unwrap_err();
        assert!(e.to_string().contains("no-such-folder"), "{e}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exchange_swaps_two_folders() {
        let dir = scratch("exchange");
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("f"), b"A").unwrap();
        fs::write(b.join("f"), b"B").unwrap();
        if exchange(&a, &b).unwrap() {
            assert_eq!(fs::read(a.join("f")).unwrap(), b"B");
            assert_eq!(fs::read(b.join("f")).unwrap(), b"A");
        }
        assert!(exchange(&a, &dir.join("missing")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}

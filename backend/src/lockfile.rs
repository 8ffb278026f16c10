//! Open-file-description locks on whole files (`F_OFD_SETLK`): held by one
//! open file, released when it is closed or its process dies, and seen by
//! every other open of the file, on this host or (with a file system whose
//! locks are cluster-wide, like NFS) on another. The disks' one-writer lock
//! and the storage roots' migration slots are both these.

use std::fs::File;
use std::os::fd::AsRawFd;

fn whole(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Takes the lock (a read lock when `shared`, else a write lock) without
/// waiting: `Ok(false)` when a conflicting lock is held elsewhere.
pub fn try_lock(file: &File, shared: bool) -> std::io::Result<bool> {
    let request = whole(if shared { libc::F_RDLCK } else { libc::F_WRLCK });
    // SAFETY: F_OFD_SETLK reads one `struct flock`, which lives for the call;
    // the descriptor is the open file's.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &request) };
    if rc == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(error),
    }
}

/// Whether any lock that would keep a writer out is held on the file.
pub fn held(file: &File) -> std::io::Result<bool> {
    let mut probe = whole(libc::F_WRLCK);
    // SAFETY: F_OFD_GETLK reads and writes one `struct flock` that lives for
    // the call; the descriptor is the open file's.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut probe) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

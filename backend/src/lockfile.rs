//! Open-file-description locks on whole files (`F_OFD_SETLK`): held by one
//! open file, released when it is closed or its process dies, and seen by
//! every other open of the file, on this host or (with a file system whose
//! locks are cluster-wide, like NFS) on another. The disks' one-writer lock
//! and the storage roots' migration slots are both these.

use std::fs::File;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

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
    match fcntl(file, FcntlArg::F_OFD_SETLK(&request)) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(errno) => Err(errno.into()),
    }
}

/// Whether any lock that would keep a writer out is held on the file.
pub fn held(file: &File) -> std::io::Result<bool> {
    let mut probe = whole(libc::F_WRLCK);
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

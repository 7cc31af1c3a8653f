//! Writes under a read-only mount (or the image's read-only root) fail with `EROFS`, "Read-only
//! file system", as the kernel says it, not with the `EPERM` of wasmtime-wasi's permission
//! check: programs and probes match on the kernel's wording (`touch: X: Read-only file
//! system`). Preview1 calls that only write are put in front of wasmtime-wasi's here;
//! `path_open` with write intent is mapped where it is counted (`files`).

use wasmtime::Caller;
use wasmtime_wasi::p1::wasi_snapshot_preview1 as abi;

use super::files::memory_and_host;
use super::P1Host;

const ERRNO_PERM: i32 = 63;
const ERRNO_ROFS: i32 = 69;

/// `path_open` flags and rights that mean the open would write.
const OFLAGS_CREAT: i32 = 1;
const OFLAGS_TRUNC: i32 = 8;
const RIGHT_FD_WRITE: i64 = 1 << 6;
const FDFLAGS_APPEND: i32 = 1;

/// The errno a write refused by a read-only preopen should carry.
pub(super) fn read_only_is_erofs(errno: i32) -> i32 {
    if errno == ERRNO_PERM {
        ERRNO_ROFS
    } else {
        errno
    }
}

/// Whether a `path_open` with these arguments writes.
pub(super) fn opens_for_writing(oflags: i32, rights: i64, fdflags: i32) -> bool {
    oflags & (OFLAGS_CREAT | OFLAGS_TRUNC) != 0
        || rights & RIGHT_FD_WRITE != 0
        || fdflags & FDFLAGS_APPEND != 0
}

/// Wraps preview1 call `$name`, which only writes, so its EPERM becomes EROFS.
macro_rules! writes {
    ($linker:expr, $name:ident, ($($arg:ident: $ty:ty),*)) => {
        $linker.func_wrap_async(
            "wasi_snapshot_preview1",
            stringify!($name),
            |mut caller: Caller<'_, P1Host>, ($($arg,)*): ($($ty,)*)| {
                Box::new(async move {
                    let (mut memory, host) = memory_and_host(&mut caller)?;
                    abi::$name(&mut host.wasi, &mut memory, $($arg),*)
                        .await
                        .map(read_only_is_erofs)
                })
            },
        )?
    };
}

pub(super) fn add_to_linker(linker: &mut wasmtime::Linker<P1Host>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    writes!(linker, path_create_directory, (fd: i32, path: i32, len: i32));
    writes!(linker, path_unlink_file, (fd: i32, path: i32, len: i32));
    writes!(linker, path_remove_directory, (fd: i32, path: i32, len: i32));
    writes!(linker, path_rename, (fd: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32));
    writes!(linker, path_symlink, (old: i32, old_len: i32, fd: i32, new: i32, new_len: i32));
    writes!(linker, path_link, (old_fd: i32, flags: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32));
    writes!(linker, path_filestat_set_times, (fd: i32, flags: i32, path: i32, len: i32, atim: i64, mtim: i64, fst_flags: i32));
    linker.allow_shadowing(false);
    Ok(())
}

//! A container's root filesystem, mounted from the snapshotter's mounts at `<bundle>/rootfs`
//! as containerd asks of a shim, and unmounted when the task is deleted.

use std::ffi::CString;
use std::path::Path;

use containerd_shim_protos::api::Mount;

/// Flags a mount option sets (or clears, for its `no` twin), as mount(8) spells them.
const FLAGS: &[(&str, libc::c_ulong, bool)] = &[
    ("ro", libc::MS_RDONLY, false),
    ("rw", libc::MS_RDONLY, true),
    ("nosuid", libc::MS_NOSUID, false),
    ("suid", libc::MS_NOSUID, true),
    ("nodev", libc::MS_NODEV, false),
    ("dev", libc::MS_NODEV, true),
    ("noexec", libc::MS_NOEXEC, false),
    ("exec", libc::MS_NOEXEC, true),
    ("sync", libc::MS_SYNCHRONOUS, false),
    ("noatime", libc::MS_NOATIME, false),
    ("nodiratime", libc::MS_NODIRATIME, false),
    ("relatime", libc::MS_RELATIME, false),
    ("strictatime", libc::MS_STRICTATIME, false),
    ("bind", libc::MS_BIND, false),
    ("rbind", libc::MS_BIND | libc::MS_REC, false),
    ("remount", libc::MS_REMOUNT, false),
];

/// Mounts `mounts` (in order, each over the last) at `target`.
pub fn mount_all(mounts: &[Mount], target: &Path) -> std::io::Result<()> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..i {
                unmount(target);
            }
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "mounting {} {} at {}: {e}",
                    m.type_,
                    m.source,
                    target.display()
                ),
            ));
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> std::io::Result<()> {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for opt in &m.options {
        match FLAGS.iter().find(|(name, _, _)| name == opt) {
            Some((_, f, true)) => flags &= !f,
            Some((_, f, false)) => flags |= f,
            None => data.push(opt.as_str()),
        }
    }
    let c = |s: &str| CString::new(s).map_err(|_| std::io::Error::other("NUL in a mount field"));
    let source = c(&m.source)?;
    let fstype = c(&m.type_)?;
    let target_c = c(&target.to_string_lossy())?;
    let data = c(&data.join(","))?;
    let bind = flags & libc::MS_BIND != 0;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags & !libc::MS_RDONLY | if bind { 0 } else { flags & libc::MS_RDONLY },
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if bind && flags & libc::MS_RDONLY != 0 {
        // A bind mount takes read-only only on a remount.
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target_c.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            unmount(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Detaches whatever is mounted at `target` (nothing mounted is fine).
pub fn unmount(target: &Path) {
    let Ok(c) = CString::new(target.to_string_lossy().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
}

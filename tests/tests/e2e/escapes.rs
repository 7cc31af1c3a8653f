//! A guest must not reach host files outside its mounts: `..`, symlinks (absolute, relative,
//! created by the guest, followed with a trailing slash), hard links, and subPaths that lead
//! out. Every attempt must fail inside the guest and leave the host files outside untouched.
//! Each case runs with both the preview1 and the preview2 fsprobe.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use wasmpod_runtime::error::ErrorKind;
use wasmpod_runtime::spec::HostPathKind;
use wasmpod_tests::*;

const SECRET: &str = "the host's secret";

/// A host layout with a volume and things next to it the guest must not reach:
/// ```text
/// <tmp>/secret              a file outside the volume
/// <tmp>/outside/            an empty directory outside the volume
/// <tmp>/vol/                mounted at /data
///     abs-link    -> <tmp>/secret      (absolute)
///     rel-link    -> ../secret         (relative, leads out)
///     rel-dir     -> ../outside        (relative, a directory outside)
///     abs-dir     -> <tmp>/outside     (absolute, a directory outside)
///     inside.txt
/// ```
struct Layout {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    rt: std::sync::Arc<wasmpod_runtime::runtime::Runtime>,
}

impl Layout {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::write(root.join("secret"), SECRET).unwrap();
        std::fs::create_dir(root.join("outside")).unwrap();
        let vol = root.join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("inside.txt"), "inside").unwrap();
        std::os::unix::fs::symlink(root.join("secret"), vol.join("abs-link")).unwrap();
        std::os::unix::fs::symlink("../secret", vol.join("rel-link")).unwrap();
        std::os::unix::fs::symlink("../outside", vol.join("rel-dir")).unwrap();
        std::os::unix::fs::symlink(root.join("outside"), vol.join("abs-dir")).unwrap();
        let rt = runtime(&root.join("state"));
        Self {
            _tmp: tmp,
            root,
            rt,
        }
    }

    fn secret(&self) -> PathBuf {
        self.root.join("secret")
    }

    /// Runs fsprobe with the volume at /data; returns the run.
    async fn probe(&self, kind: &str, args: &[&str]) -> Ran {
        run_guest(
            &self.rt,
            &wasm(&format!("fsprobe.{kind}")),
            args,
            vec![host_path(
                "vol",
                &self.root.join("vol"),
                HostPathKind::Directory,
            )],
            vec![mount("vol", None, "/data", false)],
        )
        .await
    }

    /// Runs an escape attempt: it must fail (exit 1, an fsprobe error line), print nothing of
    /// the secret, and leave everything outside the volume as it was.
    async fn denied(&self, kind: &str, args: &[&str]) -> Ran {
        let ran = self.probe(kind, args).await;
        let what = format!("fsprobe.{kind} {}", args.join(" "));
        assert_eq!(
            ran.exit.code, 1,
            "{what}: the escape must fail: {:?} {:?}",
            ran.exit, ran.log
        );
        let err = ran.stderr();
        assert!(
            err.starts_with("fsprobe: ") && err.contains("errno="),
            "{what}: {err}"
        );
        assert!(!ran.stdout().contains(SECRET), "{what}: read the secret");
        self.assert_outside_untouched(&what);
        ran
    }

    /// Runs each escape attempt of `attempts` as [`Layout::denied`] does.
    async fn all_denied(&self, kind: &str, attempts: &[&[&str]]) {
        for args in attempts {
            self.denied(kind, args).await;
        }
    }

    fn assert_outside_untouched(&self, what: &str) {
        let secret = self.secret();
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            SECRET,
            "{what}: the secret changed"
        );
        assert_eq!(
            std::fs::metadata(&secret).unwrap().nlink(),
            1,
            "{what}: the secret got a hard link"
        );
        let outside: Vec<_> = std::fs::read_dir(self.root.join("outside"))
            .unwrap()
            .collect();
        assert!(outside.is_empty(), "{what}: created {outside:?} outside");
        let mut top: Vec<_> = std::fs::read_dir(&self.root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["outside", "secret", "state", "vol"],
            "{what}: files appeared next to the volume"
        );
    }
}

async fn dot_dot(kind: &str) {
    let l = Layout::new();
    // The setup is sound: a file inside the volume is readable.
    let ran = l.probe(kind, &["read", "/data/inside.txt"]).await;
    assert_eq!(ran.stdout(), "inside\n", "{:?}", ran.log);
    l.all_denied(
        kind,
        &[
            &["read", "/data/../secret"],
            &["write", "/data/../secret", "pwned"],
            &["write", "/data/../outside/new", "x"],
            &["ls", "/data/.."],
            &["read", "/data/sub/../../secret"],
        ],
    )
    .await;
}

p1_and_p2_tests!(dot_dot => dot_dot_is_denied_p1, dot_dot_is_denied_p2);

async fn planted_symlinks(kind: &str) {
    let l = Layout::new();
    l.all_denied(
        kind,
        &[
            &["read", "/data/abs-link"],
            &["write", "/data/abs-link", "pwned"],
            &["append", "/data/abs-link", "pwned"],
            &["read", "/data/rel-link"],
            &["write", "/data/rel-link", "pwned"],
            &["ls", "/data/rel-dir"],
            &["write", "/data/rel-dir/new", "x"],
            &["ls", "/data/abs-dir"],
            &["write", "/data/abs-dir/new", "x"],
            &["mkdir", "/data/abs-dir/new"],
        ],
    )
    .await;
    // The links themselves are visible (not followed) as links.
    let ran = l.probe(kind, &["stat", "/data/abs-link"]).await;
    assert_eq!(ran.stdout(), "symlink\n", "{:?}", ran.log);
}

p1_and_p2_tests!(
    planted_symlinks =>
    planted_symlinks_are_not_followed_out_p1,
    planted_symlinks_are_not_followed_out_p2
);

async fn trailing_slash(kind: &str) {
    let l = Layout::new();
    l.all_denied(
        kind,
        &[
            &["read", "/data/rel-link/"],
            &["read", "/data/abs-link/"],
            &["ls", "/data/rel-dir/"],
            &["ls", "/data/abs-dir/"],
            &["write", "/data/rel-link/", "x"],
        ],
    )
    .await;
}

p1_and_p2_tests!(
    trailing_slash =>
    trailing_slash_does_not_follow_links_out_p1,
    trailing_slash_does_not_follow_links_out_p2
);

async fn guest_made_symlinks(kind: &str) {
    let l = Layout::new();
    let secret = l.secret().display().to_string();
    // Absolute targets, and relative ones leading out: either making the link or going
    // through it must fail.
    for (target, link, then) in [
        (secret.as_str(), "/data/mine", vec!["read", "/data/mine"]),
        (
            secret.as_str(),
            "/data/mine2",
            vec!["write", "/data/mine2", "pwned"],
        ),
        ("../secret", "/data/mine3", vec!["read", "/data/mine3"]),
        (
            "../outside",
            "/data/mine4",
            vec!["write", "/data/mine4/x", "x"],
        ),
    ] {
        let args: Vec<&str> = ["symlink", target, link, "--"]
            .into_iter()
            .chain(then)
            .collect();
        l.denied(kind, &args).await;
    }
    // A link inside the volume works: the guest can make ordinary symlinks.
    let ran = l
        .probe(
            kind,
            &[
                "symlink",
                "inside.txt",
                "/data/ok-link",
                "--",
                "read",
                "/data/ok-link",
            ],
        )
        .await;
    assert_eq!(ran.exit.code, 0, "{kind}: {:?}", ran.log);
    assert_eq!(ran.stdout(), "inside\n");
}

p1_and_p2_tests!(
    guest_made_symlinks =>
    guest_made_symlinks_do_not_lead_out_p1,
    guest_made_symlinks_do_not_lead_out_p2
);

async fn hard_links(kind: &str) {
    let l = Layout::new();
    l.denied(kind, &["hardlink", "/data/../secret", "/data/hl"])
        .await;
    assert!(!l.root.join("vol/hl").exists());
    // Linking a planted symlink must not produce a link to the file it points at.
    for link in ["abs-link", "rel-link"] {
        let src = format!("/data/{link}");
        let dst = format!("/data/hl-{link}");
        let ran = l
            .probe(
                kind,
                &["hardlink", &src, &dst, "--", "write", &dst, "pwned"],
            )
            .await;
        assert_ne!(ran.exit.code, 0, "{kind} {link}: {:?}", ran.log);
        l.assert_outside_untouched(&format!("{kind}: hard link of {link}"));
    }
}

p1_and_p2_tests!(
    hard_links =>
    hard_links_to_outside_are_denied_p1,
    hard_links_to_outside_are_denied_p2
);

/// Creating a container whose subPath leads out of the volume fails with InvalidArgument,
/// and nothing is created outside.
async fn refused_sub_path(l: &Layout, kind: &str, sub: &str) {
    let mut p = pod("subpath");
    p.volumes = vec![host_path(
        "vol",
        &l.root.join("vol"),
        HostPathKind::Directory,
    )];
    let pod_id = l.rt.run_pod(p).unwrap();
    let mut c = container(
        "c",
        &wasm(&format!("fsprobe.{kind}")),
        &["write", "/sub/x", "pwned"],
    );
    c.mounts = vec![mount("vol", Some(sub), "/sub", false)];
    let err = l.rt.create_container(&pod_id, c).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{sub}: {err}");
    assert!(
        err.message.contains("subPath") && err.message.contains(sub),
        "{sub}: the message names the subPath: {err}"
    );
    assert!(
        err.message.contains("container c"),
        "{sub}: and the container: {err}"
    );
    assert!(
        l.rt.containers().is_empty(),
        "{sub}: no container was registered"
    );
    l.assert_outside_untouched(&format!("subPath {sub}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_paths_leading_out_are_refused_at_creation() {
    let l = Layout::new();
    std::os::unix::fs::symlink("../outside/not-yet", l.root.join("vol/dangling")).unwrap();
    for kind in ["p1", "p2"] {
        for sub in [
            "../outside",
            "a/../../outside",
            "/etc",
            "rel-dir",
            "abs-dir",
            "rel-link",
            "abs-link",
            "rel-dir/deeper",
            "dangling",
        ] {
            refused_sub_path(&l, kind, sub).await;
        }
    }
    assert!(
        !l.root.join("outside/not-yet").exists(),
        "a dangling link was not created through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mount_staging_does_not_expose_the_host_directory() {
    // A single-file mount shows only that file (beside the pod's own /etc/hostname), not its
    // host directory's other files.
    let l = Layout::new();
    let file = l.root.join("vol/inside.txt");
    for kind in ["p1", "p2"] {
        let ran = run_guest(
            &l.rt,
            &wasm(&format!("fsprobe.{kind}")),
            &["ls", "/etc", "--", "read", "/etc/../secret"],
            vec![host_path("f", &file, HostPathKind::File)],
            vec![mount("f", None, "/etc/inside.txt", true)],
        )
        .await;
        assert_eq!(ran.exit.code, 1, "{kind}: {:?}", ran.log);
        assert_eq!(ran.stdout(), "hostname\ninside.txt\n", "{kind}");
        assert!(!ran.stdout().contains(SECRET));
        l.assert_outside_untouched(kind);
    }
}

/// A relative symlink target that climbs to the host's `/` from any directory and goes on to
/// `path`: guests cannot make absolute links, but nothing stops them writing this one.
fn up_to_root(path: &std::path::Path) -> String {
    format!(
        "{}{}",
        "../".repeat(32),
        path.display().to_string().trim_start_matches('/')
    )
}

/// A writable file mount on another filesystem than the state directory (here tmpfs, like a
/// memory emptyDir) is copied in and written back on exit. The guest replaces its copy with a
/// symlink to a host file: the write-back must not read that file into the mount's source.
async fn file_mount_copy_swapped_for_symlink(kind: &str) {
    let l = Layout::new();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let source = shm.path().join("state.txt");
    std::fs::write(&source, "mine").unwrap();
    let secret = up_to_root(&l.secret());
    let ran = run_guest(
        &l.rt,
        &wasm(&format!("fsprobe.{kind}")),
        &[
            "rm",
            "/work/state.txt",
            "--",
            "symlink",
            &secret,
            "/work/state.txt",
        ],
        vec![host_path("f", &source, HostPathKind::File)],
        vec![mount("f", None, "/work/state.txt", false)],
    )
    .await;
    assert_eq!(
        ran.exit.code, 0,
        "{kind}: the guest planted its link: {:?}",
        ran.log
    );
    let now = std::fs::read_to_string(&source).unwrap();
    assert_eq!(
        now, "mine",
        "{kind}: the write-back read the host file through the link"
    );
    assert!(!std::fs::symlink_metadata(&source).unwrap().is_symlink());
    l.assert_outside_untouched(kind);
}

p1_and_p2_tests!(
    file_mount_copy_swapped_for_symlink =>
    file_mount_write_back_reads_no_planted_link_p1,
    file_mount_write_back_reads_no_planted_link_p2
);

/// The guest also mounts the directory of its file mount's source and swaps the source for a
/// symlink to a host file, then writes its copy: the write-back must go to the file that was
/// mounted, never through the new link.
async fn file_mount_source_swapped_for_symlink(kind: &str) {
    let l = Layout::new();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let dir = shm.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("state.txt"), "mine").unwrap();
    let secret = up_to_root(&l.secret());
    let ran = run_guest(
        &l.rt,
        &wasm(&format!("fsprobe.{kind}")),
        &[
            "rm",
            "/dir/state.txt",
            "--",
            "symlink",
            &secret,
            "/dir/state.txt",
            "--",
            "write",
            "/work/state.txt",
            "pwned",
        ],
        vec![
            host_path("d", &dir, HostPathKind::Directory),
            host_path("f", &dir.join("state.txt"), HostPathKind::File),
        ],
        vec![
            mount("d", None, "/dir", false),
            mount("f", None, "/work/state.txt", false),
        ],
    )
    .await;
    assert_eq!(
        ran.exit.code, 0,
        "{kind}: the guest swapped the source: {:?}",
        ran.log
    );
    l.assert_outside_untouched(kind);
}

p1_and_p2_tests!(
    file_mount_source_swapped_for_symlink =>
    file_mount_write_back_writes_through_no_planted_link_p1,
    file_mount_write_back_writes_through_no_planted_link_p2
);

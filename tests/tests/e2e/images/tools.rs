//! The real image tools: buildah (building and pushing "compat" images) and skopeo (copying
//! between registries, OCI layouts and archives). Each buildah has its own storage.

use std::process::{Command, Output};

/// Runs `cmd`, failing the test with its output unless it succeeds.
pub fn check(mut cmd: Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// buildah over private vfs storage in a temporary directory.
pub struct Buildah {
    dir: tempfile::TempDir,
}

impl Buildah {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--storage-driver")
            .arg("vfs")
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("run"))
            .env("TMPDIR", self.dir.path());
        cmd
    }

    /// `buildah bud --platform wasi/wasm` of `containerfile` in a context holding `files`
    /// (name, host path or bytes); tags the result `localhost/<tag>`.
    pub fn build(&self, tag: &str, containerfile: &str, files: &[(&str, Vec<u8>)]) -> String {
        let ctx = self
            .dir
            .path()
            .join(format!("ctx-{}", tag.replace([':', '/'], "-")));
        std::fs::create_dir_all(&ctx).unwrap();
        for (name, bytes) in files {
            std::fs::write(ctx.join(name), bytes).unwrap();
        }
        std::fs::write(ctx.join("Containerfile"), containerfile).unwrap();
        let image = format!("localhost/{tag}");
        let mut cmd = self.cmd();
        cmd.args(["bud", "--platform", "wasi/wasm", "-t", &image, "-f"])
            .arg(ctx.join("Containerfile"))
            .arg(&ctx);
        check(cmd);
        image
    }

    /// `buildah push [extra...] <image> <dest>` (dest: `docker://…`, `oci:…`, …).
    pub fn push(&self, image: &str, dest: &str, extra: &[&str]) {
        let mut cmd = self.cmd();
        cmd.args(["push", "--tls-verify=false"])
            .args(extra)
            .arg(image)
            .arg(dest);
        check(cmd);
    }

    /// Builds the image of `FROM scratch`, `COPY <guest> /<name>`, `ENTRYPOINT ["/<name>"]`
    /// (plus `extra` files copied to `/data/`) and pushes it to `dest`.
    pub fn compat_image(&self, guest: &str, name: &str, extra: &[(&str, &[u8])], dest: &str) {
        let wasm = std::fs::read(wasmpod_tests::wasm(guest)).unwrap();
        let mut files = vec![(name, wasm)];
        let mut containerfile = format!("FROM scratch\nCOPY {name} /{name}\n");
        for (file, bytes) in extra {
            files.push((file, bytes.to_vec()));
            containerfile.push_str(&format!("COPY {file} /data/{file}\n"));
        }
        containerfile.push_str(&format!("ENTRYPOINT [\"/{name}\"]\n"));
        let tag = format!("{}:1", name.trim_end_matches(".wasm"));
        let image = self.build(&tag, &containerfile, &files);
        self.push(&image, dest, &[]);
    }
}

/// `skopeo copy --preserve-digests` from `src` to `dest` (plain HTTP to loopback registries).
/// Digests are kept so skopeo never swaps in a blob it knows from elsewhere.
pub fn skopeo_copy(src: &str, dest: &str) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"]);
    if !dest.starts_with("docker-archive:") {
        cmd.arg("--preserve-digests");
    }
    cmd.arg(src).arg(dest);
    check(cmd);
}

/// A `wasm` guest of `examples/wasm` (its bytes).
pub fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(wasmpod_tests::wasm(name)).unwrap()
}

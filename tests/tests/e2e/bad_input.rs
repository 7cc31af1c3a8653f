//! Bad input, through the CLI, the manifest parser and `Runtime::create_container`: each gets
//! a precise message, nothing panics, and a pod already running is unaffected.

use std::path::Path;
use std::sync::Arc;

use wasmpod_runtime::container::ContainerState;
use wasmpod_runtime::error::{Error, ErrorKind};
use wasmpod_runtime::exit::ExitReason;
use wasmpod_runtime::manifest::PodManifest;
use wasmpod_runtime::runtime::Runtime;
use wasmpod_runtime::spec::{ContainerConfig, Medium, VolumeSpec};
use wasmpod_tests::*;

/// Runs `wasmpod run` on `yaml`; returns (exit code, stdout, stderr).
fn cli_run(dir: &Path, yaml: &str) -> (Option<i32>, String, String) {
    let manifest = manifest_file(dir, "pod.yaml", yaml);
    let out = output_within(wasmpod(&dir.join("state")).arg("run").arg(&manifest), 120);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code(), text(&out.stdout), stderr)
}

fn parse(yaml: &str) -> Result<PodManifest, Error> {
    PodManifest::parse(yaml, &example("wasm"))
}

#[test]
fn malformed_yaml_names_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers: [\n    {name: a, image: a.wasm\n";
    let err = parse(yaml).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.message.contains("malformed manifest"), "{err}");
    assert!(
        err.message.contains("line ") && err.message.contains("column "),
        "{err}"
    );
    let (code, _, stderr) = cli_run(tmp.path(), yaml);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(stderr.contains("pod.yaml"), "names the file: {stderr}");
    assert!(
        stderr.contains("line ") && stderr.contains("column "),
        "{stderr}"
    );

    // A tab indentation error, and a type error (containers is not a list), also point at
    // where.
    for yaml in [
        "apiVersion: v1\nkind: Pod\nmetadata:\n\tname: x\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: 3\n",
    ] {
        let err = parse(yaml).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidArgument);
        assert!(err.message.contains("line "), "{yaml:?}: {err}");
    }
}

#[test]
fn a_deployment_is_not_a_pod() {
    let tmp = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n";
    let err = parse(yaml).unwrap_err();
    assert!(
        err.message.contains("Deployment") && err.message.contains("not a Pod"),
        "{err}"
    );
    let (code, _, stderr) = cli_run(tmp.path(), yaml);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("Deployment, not a Pod"), "{stderr}");
    // No kind at all.
    let err = parse("apiVersion: v1\nmetadata: {name: x}\n").unwrap_err();
    assert!(err.message.contains("kind: Pod"), "{err}");
}

#[test]
fn unknown_fields_warn_but_the_pod_runs() {
    require_guests();
    let tmp = tempfile::tempdir().unwrap();
    let yaml = pod_yaml(
        "extra",
        "Never",
        &format!(
            r#"
  nodeSelector: {{disk: ssd}}
  containers:
    - name: hello
      image: {}
      livenessProbe: {{exec: {{command: [x]}}}}
"#,
            wasm("hello.p1").display()
        ),
    );
    let m = parse(&yaml).unwrap();
    assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
    assert!(
        m.warnings.iter().any(|w| w.contains("nodeSelector")),
        "{:?}",
        m.warnings
    );
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains("spec.containers") && w.contains("livenessProbe")),
        "{:?}",
        m.warnings
    );
    let (code, stdout, stderr) = cli_run(tmp.path(), &yaml);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("hello | Hello from wasmpod!"), "{stdout}");
    let warnings: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings.iter().any(|w| w.contains("livenessProbe")),
        "{stderr}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("nodeSelector")),
        "{stderr}"
    );
}

/// Each (spec, field) must be refused by the parser and the CLI with a message naming field.
fn assert_refused(cases: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    for &(spec, field) in cases {
        let yaml = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\n{spec}\n");
        let err = match parse(&yaml) {
            Ok(m) => panic!(
                "{field}: true was accepted, not refused (warnings: {:?})",
                m.warnings
            ),
            Err(e) => e,
        };
        assert_eq!(err.kind, ErrorKind::InvalidArgument, "{field}");
        assert!(err.message.contains(field), "{field}: {err}");
        let (code, _, stderr) = cli_run(tmp.path(), &yaml);
        assert_eq!(code, Some(1), "{field}: {stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
    }
}

#[test]
fn host_network_is_refused_and_privileged_accepted() {
    assert_refused(&[(
        "spec: {hostNetwork: true, containers: [{name: a, image: a.wasm}]}",
        "spec.hostNetwork",
    )]);
    // privileged grants a Wasm guest nothing, so it is accepted, as over the CRI.
    let m = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: app, image: a.wasm, securityContext: {privileged: true}}]}\n").unwrap();
    assert_eq!(m.containers[0].name, "app");
}

#[test]
fn host_pid_and_host_ipc_are_refused_by_name() {
    // Spelled as Kubernetes spells them: hostPID, hostIPC (not hostPid, hostIpc).
    assert_refused(&[
        (
            "spec: {hostPID: true, containers: [{name: a, image: a.wasm}]}",
            "spec.hostPID",
        ),
        (
            "spec: {hostIPC: true, containers: [{name: a, image: a.wasm}]}",
            "spec.hostIPC",
        ),
    ]);
}

#[test]
fn invalid_and_truncated_wasm_through_the_cli() {
    require_guests();
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all, just text\n").unwrap();
    let truncated = tmp.path().join("truncated.wasm");
    let hello = std::fs::read(wasm("hello.p1")).unwrap();
    std::fs::write(&truncated, &hello[..20]).unwrap();
    for (file, want) in [
        (&garbage, "not a WebAssembly binary"),
        (&truncated, "invalid WebAssembly"),
    ] {
        let yaml = pod_yaml(
            "x",
            "Never",
            &format!(
                "\n  containers: [{{name: broken, image: {}}}]\n",
                file.display()
            ),
        );
        let (code, stdout, stderr) = cli_run(tmp.path(), &yaml);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stdout.is_empty(), "no guest ran: {stdout}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(
            stderr.contains("container broken"),
            "names the container: {stderr}"
        );
        assert!(
            stderr.contains(&file.display().to_string()),
            "names the file: {stderr}"
        );
    }
}

#[test]
fn missing_image_file_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("not-built.wasm");
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec:\n  containers: [{{name: app, image: {}}}]\n",
        missing.display()
    );
    let (code, _, stderr) = cli_run(tmp.path(), &yaml);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&missing.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("container app"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("no such file"),
        "says why: {stderr}"
    );
}

#[test]
fn manifest_mount_errors_are_precise() {
    let err = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: app, image: a.wasm, volumeMounts: [{name: nope, mountPath: /x}]}]}\n").unwrap_err();
    assert!(
        err.message.contains("\"nope\"") && err.message.contains("container app"),
        "{err}"
    );
    let err = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: app, image: a.wasm, volumeMounts: [{name: v, mountPath: /data}, {name: v, mountPath: /data/}]}]}\n").unwrap_err();
    assert!(err.message.contains("two mounts on /data"), "{err}");
    let err = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {volumes: [{name: v, emptyDir: {}}], containers: [{name: app, image: a.wasm, volumeMounts: [{name: v, mountPath: data}]}]}\n").unwrap_err();
    assert!(err.message.contains("must be absolute"), "{err}");
}

/// A runtime with a pod whose ticker keeps running while bad containers are created beside
/// it, in another pod.
struct Bystander {
    rt: Arc<Runtime>,
    id: String,
}

impl Bystander {
    async fn start(state: &Path) -> Self {
        let rt = runtime(state);
        let ticker = container("ticker", &wasm("forever.p1"), &[]);
        let id = start_in_new_pod(&rt, "bystander", ticker).await;
        Self { rt, id }
    }

    fn assert_running(&self) {
        assert!(
            matches!(
                self.rt.container(&self.id).unwrap().state(),
                ContainerState::Running { .. }
            ),
            "the bystander still runs"
        );
    }

    /// Fails to create `config` in a fresh pod; checks no container was left registered.
    async fn create_fails(
        &self,
        config: ContainerConfig,
        volumes: Option<Vec<VolumeSpec>>,
    ) -> Error {
        let mut p = pod("bad");
        p.volumes = volumes.unwrap_or_default();
        let pod_id = self.rt.run_pod(p).unwrap();
        let err = self.rt.create_container(&pod_id, config).await.unwrap_err();
        assert_eq!(
            self.rt.containers().len(),
            1,
            "only the bystander is registered after: {err}"
        );
        self.rt.remove_pod(&pod_id).await.unwrap();
        self.assert_running();
        err
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_containers_fail_at_creation_and_leave_a_running_pod_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let by = Bystander::start(&tmp.path().join("state")).await;

    // Garbage bytes, and the first 20 bytes of a real module: refused, naming the container,
    // the file and what is wrong with it.
    let hello = std::fs::read(wasm("hello.p1")).unwrap();
    for (name, file, bytes, want) in [
        (
            "junk",
            "garbage.wasm",
            [0xde, 0xad, 0xbe, 0xef].repeat(64),
            "not a WebAssembly binary",
        ),
        (
            "cut",
            "truncated.wasm",
            hello[..20].to_vec(),
            "invalid WebAssembly",
        ),
    ] {
        let path = tmp.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let err = by.create_fails(container(name, &path, &[]), None).await;
        assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
        assert!(err.message.contains(&format!("container {name}")), "{err}");
        assert!(err.message.contains(&path.display().to_string()), "{err}");
        assert!(err.message.contains(want), "{err}");
    }

    // Only the magic: too short to tell what it is.
    let stub = tmp.path().join("stub.wasm");
    std::fs::write(&stub, b"\0asm").unwrap();
    let err = by.create_fails(container("stub", &stub, &[]), None).await;
    assert!(err.message.contains("truncated"), "{err}");

    // A missing file.
    let missing = tmp.path().join("missing.wasm");
    let err = by
        .create_fails(container("gone", &missing, &[]), None)
        .await;
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(
        err.message.contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(err.message.contains("container gone"), "{err}");

    // A directory given as the image.
    let err = by
        .create_fails(container("dir", tmp.path(), &[]), None)
        .await;
    assert!(err.message.contains("not a file"), "{err}");

    // A relative path is not a local file (it reads as an image reference).
    let mut c = container("rel", &wasm("hello.p1"), &[]);
    c.image = "hello.p1.wasm".into();
    let err = by.create_fails(c, None).await;
    assert!(
        matches!(err.kind, ErrorKind::InvalidArgument | ErrorKind::NotFound),
        "{err}"
    );
    assert!(err.message.contains("hello.p1.wasm"), "{err}");

    // An import WASI does not have: a link error naming it.
    let nope = wat_file(
        tmp.path(),
        "nope.wasm",
        r#"(module (import "env" "nope" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
    );
    let err = by.create_fails(container("link", &nope, &[]), None).await;
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("cannot link"), "{err}");
    assert!(
        err.message.contains("env") && err.message.contains("nope"),
        "{err}"
    );

    // A mount of a volume the pod does not have.
    let mut c = container("mnt", &wasm("hello.p1"), &[]);
    c.mounts = vec![mount("ghost", None, "/data", false)];
    let err = by.create_fails(c, None).await;
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("\"ghost\""), "{err}");
    assert!(err.message.contains("container mnt"), "{err}");

    // Two mounts on one path (spelled differently).
    let mut c = container("twice", &wasm("hello.p1"), &[]);
    c.mounts = vec![
        mount("v", None, "/data", false),
        mount("v", None, "/data/", true),
    ];
    let err = by
        .create_fails(c, Some(vec![empty_dir("v", Medium::Disk, None)]))
        .await;
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
    assert!(err.message.contains("two mounts on /data"), "{err}");

    // A relative mount path and a path with '..'.
    for bad in ["data", "/a/../etc"] {
        let mut c = container("path", &wasm("hello.p1"), &[]);
        c.mounts = vec![mount("v", None, bad, false)];
        let err = by
            .create_fails(c, Some(vec![empty_dir("v", Medium::Disk, None)]))
            .await;
        assert_eq!(err.kind, ErrorKind::InvalidArgument, "{bad}: {err}");
        assert!(err.message.contains(bad), "{bad}: {err}");
    }

    // An empty name.
    let err = by
        .create_fails(container("", &wasm("hello.p1"), &[]), None)
        .await;
    assert!(err.message.contains("name is empty"), "{err}");

    // After all that, the bystander still runs and a good container in a new pod works.
    by.assert_running();
    let ran = run_container(
        &by.rt,
        pod("good"),
        container("good", &wasm("hello.p2"), &[]),
    )
    .await
    .unwrap();
    assert_exit(&ran.exit, 0, ExitReason::Completed);
    by.rt
        .stop_container(&by.id, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(by.rt.wait_container(&by.id).await.unwrap().code, 137);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_without_start_is_refused_at_creation() {
    // A core module that is not a WASI command (no `_start`, e.g. a reactor or a library)
    // cannot run; like a component without wasi:cli/run, it should be refused when the
    // container is created, not fail later as if it had trapped.
    let (tmp, rt) = temp_runtime();
    let lib = wat_file(
        tmp.path(),
        "reactor.wasm",
        r#"(module (memory (export "memory") 1) (func (export "_initialize")))"#,
    );
    let pod_id = rt.run_pod(pod("reactor")).unwrap();
    let result = rt
        .create_container(&pod_id, container("reactor", &lib, &[]))
        .await;
    match result {
        Err(err) => {
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{err}");
            assert!(err.message.contains("_start"), "{err}");
        }
        Ok(id) => {
            rt.start_container(&id).unwrap();
            let exit = rt.wait_container(&id).await.unwrap();
            panic!("a module without _start was accepted; at run time it ended with {exit:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_container_names_and_missing_pods_are_refused() {
    let (_tmp, rt) = temp_runtime();
    let pod_id = rt.run_pod(pod("dups")).unwrap();
    rt.create_container(&pod_id, container("same", &wasm("hello.p1"), &[]))
        .await
        .unwrap();
    let err = rt
        .create_container(&pod_id, container("same", &wasm("hello.p2"), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    assert!(err.message.contains("same"), "{err}");
    let err = rt
        .create_container("no-such-pod", container("x", &wasm("hello.p1"), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert_eq!(
        rt.start_container("no-such-container").unwrap_err().kind,
        ErrorKind::NotFound
    );
    // A stopped (not ready) pod takes no new container.
    rt.stop_pod(&pod_id, std::time::Duration::ZERO)
        .await
        .unwrap();
    let err = rt
        .create_container(&pod_id, container("late", &wasm("hello.p1"), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition, "{err}");
}

/// Env entries a guest's environ cannot carry are refused at creation, naming the variable,
/// from a manifest through `wasmpod run` as from the CRI (one check in the core).
#[test]
fn env_entries_a_guest_cannot_carry_are_refused_by_wasmpod_run() {
    require_guests();
    let tmp = tempfile::tempdir().unwrap();
    for (env, why) in [
        (r#"{name: "A=B", value: x}"#, "'='"),
        (r#"{name: "", value: x}"#, "empty name"),
        (r#"{name: "NUL\0", value: x}"#, "NUL byte in its name"),
        (
            r#"{name: NULVALUE, value: "a\0b"}"#,
            "NUL byte in its value",
        ),
    ] {
        let yaml = pod_yaml(
            "env",
            "Never",
            &format!(
                "\n  containers:\n    - name: hello\n      image: {}\n      env: [{env}]\n",
                wasm("hello.p1").display()
            ),
        );
        let (code, stdout, stderr) = cli_run(tmp.path(), &yaml);
        assert_eq!(code, Some(1), "{env}: {stderr}");
        assert!(stderr.contains(why), "{env}: {stderr}");
        assert!(stderr.contains("container hello"), "{env}: {stderr}");
        assert!(!stdout.contains("Hello"), "{env}: the guest ran: {stdout}");
    }
}

/// A hostPath with `..` would make the directory before it (`made` here) when created: it is
/// refused before anything is made.
#[test]
fn a_host_path_with_dotdot_is_refused_before_anything_is_created() {
    require_guests();
    let tmp = tempfile::tempdir().unwrap();
    let sneaky = tmp.path().join("made/../target");
    let yaml = pod_yaml(
        "dotdot",
        "Never",
        &format!(
            "\n  volumes: [{{name: h, hostPath: {{path: {}, type: DirectoryOrCreate}}}}]\
             \n  containers:\n    - name: hello\n      image: {}\n",
            sneaky.display(),
            wasm("hello.p1").display()
        ),
    );
    let (code, _, stderr) = cli_run(tmp.path(), &yaml);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("must not contain '..'"), "{stderr}");
    assert!(!tmp.path().join("made").exists());
    assert!(!tmp.path().join("target").exists());
}

/// The same pod twice in one runtime is refused while the first is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pod_with_the_same_metadata_already_exists() {
    let (_tmp, rt) = temp_runtime();
    let config = pod("twice");
    let first = rt.run_pod(config.clone()).unwrap();
    let err = rt.run_pod(config.clone()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    assert_eq!(rt.pods().len(), 1);
    rt.remove_pod(&first).await.unwrap();
    rt.run_pod(config).unwrap();
}

//! containerd (Debian's 1.6, and 2.x for `ctr run` and a crictl pod) running Wasm pods on wasmpod through its shim (runtime type
//! `io.containerd.wasmpod.v1`, CRI handler `wasmpod`): `ctr run`, crictl against containerd's
//! CRI with CNI pod networks, kills of containerd and of the wasmpod daemon, and a hundred pods
//! leaving nothing behind. Each test's containerd, its CNI bridge and the wasmpod daemon the
//! shim starts live in a network namespace the harness makes (traffic stays in it); the
//! `harness_*` tests check that setup with containerd and runc alone.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use serde_json::{json, Value};
use wasmpod_tests::containerd::{
    self, Containerd, Flavour, Options, NAMESPACE, TOOLBOX_P1, TOOLBOX_P2, WASMPOD_HANDLER,
    WASMPOD_RUNTIME,
};
use wasmpod_tests::crictl::{
    container_json, id_of, pods, ps, status, wait_log, wait_state, Crictl,
};
use wasmpod_tests::{curl_in, read_log, stream_text, text};

/// One containerd at a time: they share /run/containerd, the `k8s.io` cgroups and CNI's result
/// cache, and the last test counts the daemon's threads and descriptors.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Slack for the daemon's open descriptors and threads after a hundred pods come and go: far
/// above what a pod holds while alive (its sockets, log files, a task), far below a per-pod leak.
const FD_SLACK: usize = 16;
const THREAD_SLACK: usize = 8;

/// containerd 1.6 with the `wasmpod` handler and CNI in a netns of its own.
async fn wasmpod_containerd() -> Containerd {
    wasmpod_containerd_of(Flavour::Debian16).await
}

/// [`wasmpod_containerd`] on either flavour: the tests both share run on this.
async fn wasmpod_containerd_of(flavour: Flavour) -> Containerd {
    Options::wasmpod_cni().flavour(flavour).start().await
}

/// Runs pod `name` on wasmpod with the preview2 toolbox's httpd serving port 8080 (its built-in
/// page); returns once it listens: (pod id, container id, pod IP).
fn web_pod(c: &Containerd, crictl: &Crictl, name: &str) -> (String, String, String) {
    web_pod_of(crictl, name, &c.pod_json(name))
}

/// [`web_pod`] with the pod config `pod`.
fn web_pod_of(crictl: &Crictl, name: &str, pod: &Value) -> (String, String, String) {
    let pod = crictl.write(&format!("{name}-pod.json"), pod);
    let pod_id = id_of(&crictl.ok(&["runp", "--runtime", WASMPOD_HANDLER, &pod]));
    let mut web = container_json("web", TOOLBOX_P2, &["-p", "8080"]);
    web["command"] = json!(["/bin/httpd"]);
    let config = crictl.write(&format!("{name}-web.json"), &web);
    let id = id_of(&crictl.ok(&["create", &pod_id, &config, &pod]));
    crictl.ok(&["start", &id]);
    wait_log(crictl, &id, "httpd: listening on 0.0.0.0:8080");
    let ip = pod_ip(crictl, &pod_id);
    (pod_id, id, ip)
}

/// `crictl inspectp`'s pod IP ("" when it has none).
fn pod_ip(crictl: &Crictl, pod_id: &str) -> String {
    let st = crictl.json(&["inspectp", pod_id]);
    st["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// GET `http://ip:port/path` from inside the instance's netns: (status, body).
async fn get(c: &Containerd, ip: &str, port: u16, path: &str) -> (u16, String) {
    let ns = c.netns().expect("the instance has a netns").path();
    curl_in(Some(&ns), &format!("http://{ip}:{port}{path}")).await
}

/// `crictl exec -s ID CMD…`'s stdout, checking stderr was empty: crictl prints the command's
/// stdout and then its stderr, a newline after each.
#[track_caller]
fn exec(crictl: &Crictl, id: &str, cmd: &[&str]) -> String {
    let mut args = vec!["exec", "-s", id];
    args.extend_from_slice(cmd);
    let out = crictl.ok(&args);
    match out.strip_suffix("\n\n") {
        Some(stdout) => stdout.to_owned(),
        None => panic!("crictl {args:?}: stderr not empty or output cut: {out:?}"),
    }
}

/// `crictl stopp` + `rmp`.
fn remove_pod(crictl: &Crictl, pod_id: &str) {
    crictl.ok(&["stopp", pod_id]);
    crictl.ok(&["rmp", pod_id]);
}

/// What must hold once every pod is gone: no task bundle, mount, pod address or CNI result
/// left.
#[track_caller]
fn assert_clean(c: &Containerd) {
    assert!(pods(&c.crictl()).is_empty(), "{:#?}", pods(&c.crictl()));
    for ns in [NAMESPACE, containerd::CTR_NAMESPACE] {
        let bundles = c.bundles(ns);
        assert!(bundles.is_empty(), "task bundles left in {ns}: {bundles:?}");
    }
    let mounts = containerd::mounts_under(c.dir.path());
    assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
    let ips = c.reserved_ips();
    assert!(ips.is_empty(), "pod addresses still reserved: {ips:?}");
    let cached = c.cni_results();
    assert!(cached.is_empty(), "CNI results cached for pods: {cached:?}");
}

/// The number of entries of `/proc/<pid>/<what>` (`fd`, `task`).
fn proc_count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/{what}: {e}"))
}

/// The harness alone: containerd in a netns of its own with the `wasmpod` handler beside runc,
/// its CNI config loaded, the toolbox images in both namespaces, the daemon's config written and
/// named in containerd's environment; no wasmpod task runs, so no runc, shim or daemon is needed.
/// Dropping it leaves no process, mount, netns or dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_runs_containerd_with_the_wasmpod_handler_and_cni() {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd().await;
    let crictl = c.crictl();
    let info = crictl.json(&["info"]);
    let config = &info["config"];
    assert_eq!(
        config["containerd"]["runtimes"][WASMPOD_HANDLER]["runtimeType"], WASMPOD_RUNTIME,
        "{info:#}"
    );
    assert_eq!(
        config["containerd"]["defaultRuntimeName"], "runc",
        "{info:#}"
    );
    assert_eq!(
        config["cni"]["confDir"],
        c.dir.path().join("cni/net.d").display().to_string(),
        "{info:#}"
    );
    let conditions = info["status"]["conditions"].as_array().unwrap();
    for wanted in ["RuntimeReady", "NetworkReady"] {
        assert!(
            conditions
                .iter()
                .any(|x| x["type"] == wanted && x["status"] == true),
            "{wanted}: {info:#}"
        );
    }
    // The loaded network is ours: the subnet of this instance.
    let cni = info["cniconfig"].to_string();
    assert!(
        cni.contains(&c.pod_cidr().unwrap()),
        "{}: {info:#}",
        c.pod_cidr().unwrap()
    );

    let tags = image_tags(&crictl.json(&["images", "-o", "json"]));
    for image in [TOOLBOX_P1, TOOLBOX_P2, c.pause_image()] {
        assert!(
            tags.iter().any(|t| t == image),
            "{image} not in CRI: {tags:?}"
        );
    }
    let out = c.ctr_output(containerd::CTR_NAMESPACE, &["images", "ls", "-q"]);
    let names = text(&out.stdout);
    for image in [TOOLBOX_P1, TOOLBOX_P2] {
        assert!(
            names.lines().any(|l| l == image),
            "{image} not in ctr's namespace: {names}{}",
            text(&out.stderr)
        );
    }

    // containerd runs in the instance's netns, with the daemon's config and this build's
    // binaries (the shim and wasmpod side by side) first on its PATH.
    let pid = c.containerd_pid().unwrap();
    let ns = c.netns().unwrap();
    let inode = |p: &str| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(&format!("/proc/{pid}/ns/net")),
        std::fs::metadata(ns.path()).unwrap().ino()
    );
    assert_ne!(
        inode(&format!("/proc/{pid}/ns/net")),
        inode("/proc/self/ns/net")
    );
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .into_owned();
    let env: Vec<&str> = environ.split('\0').collect();
    let wasmpod_config = c.wasmpod_config().unwrap();
    assert!(
        env.contains(&format!("WASMPOD_CONFIG={}", wasmpod_config.display()).as_str()),
        "{env:?}"
    );
    let shim_dir = containerd::shim_bin().parent().unwrap();
    assert!(
        env.contains(&format!("PATH={}", shim_dir.display()).as_str())
            || env
                .iter()
                .any(|e| e.starts_with(&format!("PATH={}:", shim_dir.display()))),
        "{env:?}"
    );
    assert!(shim_dir.join("wasmpod").is_file());
    let daemon_config = std::fs::read_to_string(wasmpod_config).unwrap();
    assert!(
        daemon_config.contains(&format!(
            "[containerd]\nsocket = \"{}\"",
            c.wasmpod_ttrpc_socket().unwrap().display()
        )),
        "{daemon_config}"
    );
    assert!(c.wasmpod_pid().is_none(), "no task yet, so no daemon");

    let dir = c.dir.path().to_path_buf();
    let netns = ns.path();
    drop(crictl);
    drop(c);
    assert!(!netns.exists(), "{} was not deleted", netns.display());
    let left = containerd::processes_under(&dir);
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(containerd::mounts_under(&dir).is_empty());
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// The harness's CNI with runc pods: an address in the instance's subnet, reachable over the
/// bridge from the instance's netns (a closed port refuses, rather than nothing answering),
/// crictl exec through containerd's streaming server on the netns's loopback, and the address
/// and the pod's netns released on removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cni_gives_runc_pods_addresses_in_the_test_netns() {
    let _serial = SERIAL.lock().await;
    let c = Options::default().cni(true).start().await;
    let crictl = c.crictl();
    let config = crictl.write("idle.json", &container_json("idle", c.idle_image(), &[]));
    let run_idle = |name: &str| {
        let pod = crictl.write(&format!("{name}.json"), &c.pod_json(name));
        let pod_id = id_of(&crictl.ok(&["runp", &pod]));
        let id = id_of(&crictl.ok(&["create", &pod_id, &config, &pod]));
        crictl.ok(&["start", &id]);
        wait_log(&crictl, &id, "tick 1");
        (pod_id, id)
    };
    let (pod_id, id) = run_idle("runc-net");

    let ip = pod_ip(&crictl, &pod_id);
    assert!(c.in_pod_subnet(&ip), "{ip} not in {:?}", c.pod_cidr());
    assert_eq!(c.reserved_ips(), vec![ip.clone()]);
    assert_eq!(c.cni_results(), vec![pod_id.clone()]);
    // bash names connect's error (curl says "Couldn't connect" for refused and unreachable).
    let out = wasmpod_tests::output_within(
        c.netns()
            .unwrap()
            .command("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/1")]),
        60,
    );
    assert!(text(&out.stderr).contains("Connection refused"), "{out:?}");
    assert_eq!(exec(&crictl, &id, &["/idle", "echo", "hi"]), "hi\n");

    crictl.ok(&["stop", &id]);
    crictl.ok(&["rm", &id]);
    remove_pod(&crictl, &pod_id);
    assert_clean(&c);

    // A pod left running for Drop: its processes, netns file, cached CNI result and the
    // instance's netns all go.
    let (left, _) = run_idle("left");
    let dir = c.dir.path().to_path_buf();
    let netns = c.netns().unwrap().path();
    let pids = c.container_pids();
    assert_eq!(pids.len(), 2, "pause + idle: {pids:?}");
    assert!(!containerd::mounts_under(&dir).is_empty(), "its netns file");
    drop(crictl);
    drop(c);
    assert!(!netns.exists(), "{} was not deleted", netns.display());
    assert!(containerd::processes_under(&dir).is_empty());
    assert!(pids.iter().all(|p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    }));
    assert!(containerd::mounts_under(&dir).is_empty());
    let cached: Vec<String> = std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&left))
        .collect();
    assert!(cached.is_empty(), "{cached:?}");
}

/// a. `ctr run --rm` on wasmpod: the guest's stdout and stderr reach ctr, ctr exits with the
/// guest's status, and `--rm` frees the id for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_run_prints_and_returns_the_exit_status() {
    ctr_run_prints_and_returns_the_exit_status_on(Flavour::Debian16).await;
}

/// a on containerd 2.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_run_prints_and_returns_the_exit_status_on_containerd2() {
    ctr_run_prints_and_returns_the_exit_status_on(Flavour::V2).await;
}

async fn ctr_run_prints_and_returns_the_exit_status_on(flavour: Flavour) {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd_of(flavour).await;
    let out = c.ctr_run_wasmpod(
        TOOLBOX_P1,
        "t1",
        &["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"],
    );
    assert_eq!(text(&out.stdout), "hi\n", "{out:?}\n{}", c.log_tail(30));
    assert!(text(&out.stderr).contains("oops"), "{out:?}");
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", c.log_tail(30));

    let out = c.ctr_run_wasmpod(TOOLBOX_P1, "t1", &["/bin/echo", "again"]);
    assert_eq!(text(&out.stdout), "again\n", "{out:?}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = c.ctr_output(containerd::CTR_NAMESPACE, &["containers", "ls", "-q"]);
    assert_eq!(text(&out.stdout), "", "--rm left containers: {out:?}");
    assert!(c.wasmpod_pid().is_some(), "the shim started the daemon");
    assert_clean(&c);
}

/// b. A pod through crictl on containerd with the `wasmpod` handler: a CNI address in the test
/// subnet, httpd answering there from the test netns, logs, exec, the pod's hostname and DNS
/// settings, then stop (exit status in inspect), rm, stopp, rmp leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_pod_on_the_pod_network() {
    crictl_pod_on_the_pod_network_on(Flavour::Debian16).await;
}

/// b on containerd 2.x.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_pod_on_the_pod_network_on_containerd2() {
    crictl_pod_on_the_pod_network_on(Flavour::V2).await;
}

async fn crictl_pod_on_the_pod_network_on(flavour: Flavour) {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd_of(flavour).await;
    let crictl = c.crictl();
    let (pod_id, id, ip) = web_pod(&c, &crictl, "web");
    assert!(c.in_pod_subnet(&ip), "{ip} not in {:?}", c.pod_cidr());
    let pod = &pods(&crictl)[0];
    assert_eq!(pod["runtimeHandler"], WASMPOD_HANDLER, "{pod:#}");
    assert_eq!(pod["state"], "SANDBOX_READY", "{pod:#}");
    assert_eq!(status(&crictl, &id)["state"], "CONTAINER_RUNNING");
    // What assert_clean looks for at the end is there while the pod runs.
    let bundles = c.bundles(NAMESPACE);
    assert!(
        bundles.contains(&pod_id) && bundles.contains(&id),
        "{bundles:?}"
    );
    assert_eq!(c.reserved_ips(), vec![ip.clone()]);
    assert_eq!(c.cni_results(), vec![pod_id.clone()]);

    let (code, body) = get(&c, &ip, 8080, "/").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("It works!"), "{body}");
    let logs = wait_log(&crictl, &id, "GET / 200");
    assert!(
        logs.starts_with("httpd: listening on 0.0.0.0:8080\n"),
        "{logs}"
    );
    // containerd wrote the CRI log file at the pod's log_directory + the container's log_path.
    let file = read_log(&c.pod_log_dir("web").join("web/0.log"));
    assert!(
        stream_text(&file, "stdout").contains("GET / 200"),
        "{file:?}"
    );

    assert_eq!(exec(&crictl, &id, &["echo", "hello"]), "hello\n");
    // What CRI puts in every container of the pod: HOSTNAME, /etc/hostname, /etc/resolv.conf.
    assert_eq!(exec(&crictl, &id, &["printenv", "HOSTNAME"]), "web\n");
    assert_eq!(exec(&crictl, &id, &["cat", "/etc/hostname"]), "web\n");
    let resolv = exec(&crictl, &id, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {}", c.pod_gateway().unwrap()))
            && resolv.contains("search shim.svc.wasmpod.test")
            && resolv.contains("ndots:2"),
        "{resolv}"
    );
    // A failing command's status and stderr reach crictl (preview2 can only say 1: failure).
    let failed = crictl.fails(&["exec", "-s", &id, "sh", "-c", "echo bad >&2; exit 7"]);
    assert!(failed.contains("exited with 1: bad"), "{failed}");

    crictl.ok(&["stop", &id]);
    let st = wait_state(&crictl, &id, "CONTAINER_EXITED");
    let code = st["exitCode"].as_i64().unwrap();
    assert!(code == 143 || code == 137, "{st:#}");
    let (code, _) = get(&c, &ip, 8080, "/").await;
    assert_eq!(code, 0, "a stopped server answers no more");
    crictl.ok(&["rm", &id]);
    assert!(ps(&crictl, &["--pod", &pod_id]).is_empty());
    remove_pod(&crictl, &pod_id);
    assert_clean(&c);
}

/// c. Two containers of a pod (and a third reading) share a host directory mount and the
/// pod's localhost: the server writes a file and serves the directory on 127.0.0.1:9000, the
/// reader sees the file and answers through the mount, the client fetches it over localhost;
/// the pod IP does not serve the loopback-only port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_share_a_host_dir_and_localhost() {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd().await;
    let crictl = c.crictl();
    let shared = c.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let pod = crictl.write("pair-pod.json", &c.pod_json("pair"));
    let pod_id = id_of(&crictl.ok(&["runp", "--runtime", WASMPOD_HANDLER, &pod]));
    let run = |name: &str, image: &str, command: &str, args: &[&str]| {
        let mut config = container_json(name, image, args);
        config["command"] = json!([command]);
        config["mounts"] = json!([{
            "container_path": "/data",
            "host_path": shared.display().to_string(),
        }]);
        let file = crictl.write(&format!("{name}.json"), &config);
        let id = id_of(&crictl.ok(&["create", &pod_id, &file, &pod]));
        crictl.ok(&["start", &id]);
        id
    };
    let server = run(
        "server",
        TOOLBOX_P2,
        "/bin/sh",
        &[
            "-c",
            "echo from-server > /data/msg && httpd -p 127.0.0.1:9000 -h /data",
        ],
    );
    wait_log(&crictl, &server, "httpd: listening on 127.0.0.1:9000");
    assert_eq!(
        std::fs::read_to_string(shared.join("msg")).unwrap(),
        "from-server\n"
    );

    let reader = run(
        "reader",
        TOOLBOX_P1,
        "/bin/sh",
        &["-c", "cat /data/msg && echo from-reader > /data/ack"],
    );
    let st = wait_state(&crictl, &reader, "CONTAINER_EXITED");
    assert_eq!(st["exitCode"], 0, "{st:#}");
    assert_eq!(crictl.ok(&["logs", &reader]), "from-server\n");
    assert_eq!(
        std::fs::read_to_string(shared.join("ack")).unwrap(),
        "from-reader\n"
    );

    // netprobe sends the line and a newline: an HTTP/1.0 request with no headers.
    let client = run(
        "client",
        TOOLBOX_P2,
        "/bin/netprobe",
        &["tcp-client", "127.0.0.1:9000", "GET /msg HTTP/1.0\n"],
    );
    let st = wait_state(&crictl, &client, "CONTAINER_EXITED");
    assert_eq!(
        st["exitCode"],
        0,
        "{st:#}\n{}",
        crictl.ok(&["logs", &client])
    );
    assert_eq!(crictl.ok(&["logs", &client]), "reply: HTTP/1.1 200 OK\n");
    wait_log(&crictl, &server, "GET /msg 200");

    let ip = pod_ip(&crictl, &pod_id);
    assert!(c.in_pod_subnet(&ip), "{ip}");
    let (code, body) = get(&c, &ip, 9000, "/msg").await;
    assert_eq!(code, 0, "127.0.0.1:9000 is the pod's own: {body}");

    for id in [&server, &reader, &client] {
        crictl.ok(&["stop", id]);
        crictl.ok(&["rm", id]);
    }
    remove_pod(&crictl, &pod_id);
    assert_clean(&c);
    assert!(
        shared.join("msg").is_file(),
        "the host dir outlives the pod"
    );
}

/// d. containerd killed with SIGKILL and started again on the same config: the pod's task
/// lives on in the daemon (same daemon, same address), and containerd finds it running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_survive_a_containerd_kill() {
    let _serial = SERIAL.lock().await;
    let mut c = wasmpod_containerd().await;
    let crictl = c.crictl();
    let (pod_id, id, ip) = web_pod(&c, &crictl, "survivor");
    let daemon = c.wasmpod_pid().expect("the shim started the daemon");

    c.kill9();
    // The daemon serves on with containerd gone.
    let (code, _) = get(&c, &ip, 8080, "/").await;
    assert_eq!(code, 200);
    c.restart().await;

    assert_eq!(c.wasmpod_pid(), Some(daemon), "the same daemon");
    let st = status(&crictl, &id);
    assert_eq!(
        st["state"],
        "CONTAINER_RUNNING",
        "{st:#}\n{}",
        c.log_tail(30)
    );
    let listed = ps(&crictl, &["--pod", &pod_id]);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["state"], "CONTAINER_RUNNING", "{listed:#?}");
    assert_eq!(pods(&crictl)[0]["state"], "SANDBOX_READY");
    assert_eq!(pod_ip(&crictl, &pod_id), ip);
    assert_eq!(exec(&crictl, &id, &["echo", "hello"]), "hello\n");
    let (code, body) = get(&c, &ip, 8080, "/").await;
    assert_eq!(code, 200, "{body}");

    crictl.ok(&["stop", &id]);
    let st = wait_state(&crictl, &id, "CONTAINER_EXITED");
    assert_ne!(st["exitCode"], 0, "{st:#}");
    crictl.ok(&["rm", &id]);
    remove_pod(&crictl, &pod_id);
    assert_clean(&c);
}

/// e. The wasmpod daemon killed with SIGKILL: containerd reports the pod's containers exited,
/// removing them and the pod leaves no bundle, mount or address, and the next pod runs (the
/// shim starts a daemon again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_exits_the_containers_and_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd().await;
    let crictl = c.crictl();
    let pod = crictl.write("victim-pod.json", &c.pod_json("victim"));
    let pod_id = id_of(&crictl.ok(&["runp", "--runtime", WASMPOD_HANDLER, &pod]));
    let ids: Vec<String> = ["one", "two"]
        .iter()
        .map(|name| {
            let config = container_json(name, TOOLBOX_P1, &["-c", "echo up; pause"]);
            let file = crictl.write(&format!("{name}.json"), &config);
            let id = id_of(&crictl.ok(&["create", &pod_id, &file, &pod]));
            crictl.ok(&["start", &id]);
            wait_log(&crictl, &id, "up");
            id
        })
        .collect();
    let daemon = c.wasmpod_pid().expect("the shim started the daemon");

    // SAFETY: kill has no memory-safety preconditions; the pid is our instance's daemon.
    unsafe { libc::kill(daemon as libc::pid_t, libc::SIGKILL) };
    for id in &ids {
        let st = wait_state(&crictl, id, "CONTAINER_EXITED");
        assert_ne!(st["exitCode"], 0, "{st:#}");
    }
    for id in &ids {
        crictl.ok(&["rm", id]);
    }
    remove_pod(&crictl, &pod_id);
    assert_clean(&c);

    let mut rt = c.runtime().await;
    let logs = c.pod_log_dir("after");
    std::fs::create_dir_all(&logs).unwrap();
    let run = c
        .lifecycle(
            &mut rt,
            WASMPOD_HANDLER,
            wasmpod_tests::cri::pod_config("after", &logs),
            wasmpod_tests::cri::container_config("c", TOOLBOX_P1, &["-c", "echo again; pause"]),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stream_text(&run.log, "stdout"), "again\n", "{run:?}");
    let again = c.wasmpod_pid().expect("a daemon runs again");
    assert_ne!(again, daemon);
    assert_clean(&c);
}

/// f. A hundred pods through the CRI on wasmpod, one after another: each logs its line; then no
/// bundle, mount or address is left and the daemon (the same one) holds about the descriptors
/// and threads it held after the first pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pods_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd().await;
    let mut rt = c.runtime().await;
    let configs = |i: usize| {
        let name = format!("pod-{i}");
        let logs = c.pod_log_dir(&name);
        std::fs::create_dir_all(&logs).unwrap();
        let sandbox = wasmpod_tests::cri::pod_config(&name, &logs);
        let config =
            wasmpod_tests::cri::container_config("c", TOOLBOX_P1, &["-c", "echo up; pause"]);
        (sandbox, config)
    };
    let (sandbox, config) = configs(0);
    c.lifecycle(&mut rt, WASMPOD_HANDLER, sandbox, config)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let daemon = c.wasmpod_pid().expect("the shim started the daemon");
    let fds = proc_count(daemon, "fd");
    let threads = proc_count(daemon, "task");

    for i in 1..=100 {
        let (sandbox, config) = configs(i);
        let run = c
            .lifecycle(&mut rt, WASMPOD_HANDLER, sandbox, config)
            .await
            .unwrap_or_else(|e| panic!("pod {i}: {e:#}"));
        assert_eq!(stream_text(&run.log, "stdout"), "up\n", "pod {i}: {run:?}");
    }
    assert_eq!(c.wasmpod_pid(), Some(daemon), "the same daemon throughout");
    assert_clean(&c);
    // Idle blocking threads and closing connections wind down on their own: wait for it
    // (bounded), then compare.
    let (mut fds_now, mut threads_now) = (0, 0);
    for _ in 0..600 {
        fds_now = proc_count(daemon, "fd");
        threads_now = proc_count(daemon, "task");
        if fds_now <= fds + FD_SLACK && threads_now <= threads + THREAD_SLACK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "wasmpod daemon after the first pod / after 100 more: {fds} / {fds_now} descriptors, \
         {threads} / {threads_now} threads"
    );
    assert!(
        fds_now <= fds + FD_SLACK,
        "open descriptors: {fds} after the first pod, {fds_now} after 100 more"
    );
    assert!(
        threads_now <= threads + THREAD_SLACK,
        "threads: {threads} after the first pod, {threads_now} after 100 more"
    );
}

/// The tags of `crictl images -o json`.
fn image_tags(images: &Value) -> Vec<String> {
    images["images"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["repoTags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect()
}

/// What containerd offers around a running Wasm pod, through its own code paths: `crictl stats`
/// (the daemon's cgroup v2 metrics), `crictl port-forward` (containerd dials the port inside
/// the pod's namespace, where the guest's listener was made) and a hostPort (CNI portmap's
/// DNAT to the pod IP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_port_forward_and_host_port_go_through_containerd() {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd().await;
    let crictl = c.crictl();
    let mut pod = c.pod_json("ports");
    pod["port_mappings"] = json!([{"protocol": 0, "container_port": 8080, "host_port": 18080}]);
    let (pod_id, id, _ip) = web_pod_of(&crictl, "ports", &pod);

    let stats = crictl.json(&["stats", "-o", "json", &id]);
    let memory = stats["stats"][0]["memory"]["workingSetBytes"]["value"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(memory > 0, "no memory figure in {stats:#}");

    let gateway = c.pod_gateway().unwrap();
    let (code, body) = get(&c, &gateway, 18080, "/").await;
    assert_eq!(
        code,
        200,
        "hostPort 18080 on {gateway}: {body}\n{}",
        c.log_tail(20)
    );
    assert!(body.contains("It works!"), "{body}");

    let mut forward = crictl
        .command(&["port-forward", &pod_id, ":8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(forward.stdout.take().unwrap()));
    // crictl says where it listens before it accepts: "Forwarding from 127.0.0.1:N -> 8080".
    let local: u16 = lines
        .by_ref()
        .take(5)
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("Forwarding from 127.0.0.1:")
                .and_then(|l| l.split(' ').next())
                .and_then(|p| p.parse().ok())
        })
        .unwrap_or_else(|| panic!("crictl port-forward printed no local port"));
    let forwarded = get(&c, "127.0.0.1", local, "/").await;
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(forwarded.0, 200, "through port-forward: {}", forwarded.1);
    assert!(forwarded.1.contains("It works!"), "{}", forwarded.1);

    crictl.ok(&["stop", &id]);
    crictl.ok(&["rm", &id]);
    remove_pod(&crictl, &pod_id);
    assert_clean(&c);
}

/// How long a CPU figure is measured: long enough that one 100 ms period more or less moves it
/// by 2 %, short enough for a test.
const CPU_WINDOW: Duration = Duration::from_secs(5);

/// The toolbox shell spinning without a host call.
const SPIN: &[&str] = &["/bin/sh", "-c", "while :; do :; done"];

/// The cores task `id` of `namespace` used over [`CPU_WINDOW`], from `ctr task metrics`
/// (the shim's cgroup v2 `cpu.usage_usec`, what containerd's stats read too).
fn task_cores(c: &Containerd, namespace: &str, id: &str) -> f64 {
    let usage = || {
        let out = c.ctr_output(namespace, &["task", "metrics", "--format", "json", id]);
        let m: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ctr task metrics {id}: {e}: {out:?}"));
        let usec = m["cpu"]["usage_usec"].as_u64();
        (
            usec.unwrap_or_else(|| panic!("no cpu.usage_usec in {m:#}")),
            std::time::Instant::now(),
        )
    };
    let (u0, t0) = usage();
    std::thread::sleep(CPU_WINDOW);
    let (u1, t1) = usage();
    (u1 - u0) as f64 / 1e6 / (t1 - t0).as_secs_f64()
}

/// `measured` is within `range` cores of what `asked` gave.
#[track_caller]
fn assert_cores(what: &str, measured: f64, range: std::ops::Range<f64>, c: &Containerd) {
    println!("{what}: {measured:.3} cores");
    assert!(
        range.contains(&measured),
        "{what}: {measured:.3} cores, expected {range:?}\n{}",
        c.log_tail(20)
    );
}

/// CPU limits through containerd 2.x: `ctr run --cpu-quota/--cpu-period` reaches the guest from
/// the OCI spec; a crictl container's CRI limit too, and `crictl update` (containerd's CRI
/// UpdateContainerResources → the task API's Update) changes it live; bad figures are refused
/// with the runtime's reason. ctr 2.x has no `task update`, so the CRI is the way to Update.
/// Spinners measured over 5 s on a shared 2-core machine: 0.2 asked → 0.1..0.3 (an unlimited
/// spinner gets near 1), 0.5 → 0.3..0.7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_limits_and_live_updates_through_containerd2() {
    let _serial = SERIAL.lock().await;
    let c = wasmpod_containerd_of(Flavour::V2).await;
    let snapshotter = c.snapshotter().to_owned();
    let ctr_run = |id: &str, quota: &str| {
        let mut args = vec![
            "run",
            "-d",
            "--runtime",
            WASMPOD_RUNTIME,
            "--snapshotter",
            &snapshotter,
            "--cpu-quota",
            quota,
            "--cpu-period",
            "100000",
            TOOLBOX_P1,
            id,
        ];
        args.extend_from_slice(SPIN);
        c.ctr_output(containerd::CTR_NAMESPACE, &args)
    };
    let out = ctr_run("spin", "20000");
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail(30));
    let cores = task_cores(&c, containerd::CTR_NAMESPACE, "spin");
    assert_cores("ctr run --cpu-quota 20000", cores, 0.1..0.3, &c);
    for args in [
        &["task", "kill", "-s", "SIGKILL", "spin"][..],
        &["task", "rm", "-f", "spin"],
        &["rm", "spin"],
    ] {
        c.ctr_output(containerd::CTR_NAMESPACE, args);
    }
    let out = ctr_run("bad", "500");
    assert!(!out.status.success(), "a 0.5 ms quota was taken: {out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("cpu quota 500 µs is outside"), "{err}");
    c.ctr_output(containerd::CTR_NAMESPACE, &["rm", "bad"]);

    let crictl = c.crictl();
    let pod = c.pod_json("cpu");
    let pod = crictl.write("cpu-pod.json", &pod);
    let pod_id = id_of(&crictl.ok(&["runp", "--runtime", WASMPOD_HANDLER, &pod]));
    let mut spin = container_json("spin", TOOLBOX_P1, &SPIN[1..]);
    spin["command"] = json!([SPIN[0]]);
    spin["linux"] =
        json!({"resources": {"cpu_period": 100000, "cpu_quota": 20000, "cpu_shares": 512}});
    let config = crictl.write("cpu-spin.json", &spin);
    let id = id_of(&crictl.ok(&["create", &pod_id, &config, &pod]));
    crictl.ok(&["start", &id]);
    wait_state(&crictl, &id, "CONTAINER_RUNNING");
    let cores = task_cores(&c, NAMESPACE, &id);
    assert_cores("CRI cpu_quota 20000", cores, 0.1..0.3, &c);

    crictl.ok(&["update", "--cpu-quota", "50000", &id]);
    let cores = task_cores(&c, NAMESPACE, &id);
    assert_cores("crictl update --cpu-quota 50000", cores, 0.3..0.7, &c);

    let err = crictl.fails(&["update", "--cpu-period", "999", &id]);
    assert!(err.contains("cpu period 999 µs is outside"), "{err}");
    let err = crictl.fails(&["update", "--cpu-share", "300000", &id]);
    assert!(err.contains("cpu shares 300000 are outside"), "{err}");
    assert_eq!(status(&crictl, &id)["state"], "CONTAINER_RUNNING");

    crictl.ok(&["stop", "-t", "0", &id]);
    crictl.ok(&["rm", &id]);
    remove_pod(&crictl, &pod_id);
    assert_clean(&c);
}

//! The real `crictl` (cri-tools, built by `scripts/peers`) against the real `wasmpod serve`:
//! the commands an operator types, with JSON configs in a temp dir, checked on what crictl
//! prints (exit codes, JSON fields, state names, log text).

use std::process::Command;

use serde_json::{json, Value};
use wasmpod_tests::cri::{Daemon, Registry};
use wasmpod_tests::crictl::{
    container_json, file_image, id_of, pod_json, pods, ps, status, wait_log, wait_state, Crictl,
    Events, COMMAND_SECS,
};
use wasmpod_tests::{example, output_within, peers, require_guests, text, wasm, wasmpod};

fn ids(items: &[Value]) -> Vec<&str> {
    items.iter().map(|i| i["id"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_info_name_the_runtime() {
    let d = Daemon::start().await;
    let c = Crictl::new(&d);

    let v = c.ok(&["version"]);
    assert!(v.contains("RuntimeName:  wasmpod"), "{v}");
    assert!(v.contains("RuntimeApiVersion:  v1"), "{v}");
    assert!(v.contains("Version:  0.1.0"), "{v}");

    let info = c.json(&["info"]);
    let conditions = info["status"]["conditions"].as_array().unwrap();
    for wanted in ["RuntimeReady", "NetworkReady"] {
        let cond = conditions
            .iter()
            .find(|x| x["type"] == wanted)
            .unwrap_or_else(|| panic!("no {wanted} condition: {info:#}"));
        assert_eq!(cond["status"], true, "{info:#}");
    }
    assert!(
        info["runtimeHandlers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "wasmpod"),
        "{info:#}"
    );
    // The verbose part: the daemon's own view, its state directory among it.
    assert_eq!(
        info["info"]["config"]["stateDir"],
        d.dir.path().join("state").display().to_string(),
        "{info:#}"
    );
    // `crictl --version` names the release scripts/peers built.
    let out = output_within(Command::new(peers::crictl()).arg("--version"), COMMAND_SECS);
    assert!(
        text(&out.stdout).starts_with("crictl version 1."),
        "{out:?}"
    );
}

/// The README's session, with the example configs as they are (only the pod's log directory
/// moved into the test's temp dir): an image imported with the CLI beside the daemon, a pod,
/// a container, its logs, then the pod stopped and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_session_with_the_example_configs() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);

    // `wasmpod image import` goes through the running daemon (serve.json in its state dir).
    let out = output_within(
        wasmpod(&d.dir.path().join("state"))
            .args(["image", "import", "--tag", "local/hello:1"])
            .arg(wasm("hello.p1")),
        COMMAND_SECS,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let images = c.ok(&["images"]);
    assert!(images.contains("docker.io/local/hello"), "{images}");

    let mut pod: Value =
        serde_json::from_str(&std::fs::read_to_string(example("crictl/pod.json")).unwrap())
            .unwrap();
    let logs = d.dir.path().join("logs");
    pod["log_directory"] = logs.display().to_string().into();
    let pod_path = c.write("pod.json", &pod);
    let pod_id = id_of(&c.ok(&["runp", &pod_path]));
    let hello = example("crictl/hello.json").display().to_string();
    let ctr = id_of(&c.ok(&["create", &pod_id, &hello, &pod_path]));
    assert_eq!(c.ok(&["start", &ctr]).trim(), ctr);
    let st = wait_state(&c, &ctr, "CONTAINER_EXITED");
    assert_eq!(st["exitCode"], 0, "{st:#}");

    let out = c.output(&["logs", &ctr]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Hello from wasmpod!"), "{stdout}");
    assert!(
        stdout.contains("GREETING=hello through the CRI"),
        "{stdout}"
    );
    assert!(stdout.contains("args: from crictl"), "{stdout}");
    assert!(text(&out.stderr).contains("hello: done"), "{out:?}");
    // The log file is where the two configs put it, in the CRI format.
    let log = wasmpod_tests::read_log(&logs.join("hello/0.log"));
    assert_eq!(
        wasmpod_tests::stream_text(&log, "stderr"),
        "hello: done\n",
        "{log:?}"
    );

    let stats = c.json(&["stats", "-a", "-o", "json"]);
    assert!(
        stats["stats"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["attributes"]["id"] == ctr.as_str()),
        "{stats:#}"
    );

    assert!(c.ok(&["stopp", &pod_id]).contains(&pod_id));
    assert!(c.ok(&["rmp", &pod_id]).contains(&pod_id));
    assert!(pods(&c).is_empty());
    assert!(ps(&c, &[]).is_empty());
}

/// runp, create, start, ps, inspect, inspectp, logs, rm, stopp, rmp: a pod's whole life, each
/// step checked on what crictl prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_and_its_container_from_runp_to_rmp() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod = pod_json(&d, "life");
    let pod_path = c.write("pod.json", &pod);
    let ctr_path = c.write(
        "hello.json",
        &container_json("hello", &file_image("hello.p1"), &["one", "two"]),
    );

    let pod_id = id_of(&c.ok(&["runp", &pod_path]));
    let listed = pods(&c);
    assert_eq!(ids(&listed), [pod_id.as_str()]);
    let p = &listed[0];
    assert_eq!(p["state"], "SANDBOX_READY", "{p:#}");
    assert_eq!(p["metadata"]["name"], "life", "{p:#}");
    assert_eq!(p["metadata"]["namespace"], "crictl", "{p:#}");
    assert_eq!(p["metadata"]["uid"], "uid-life", "{p:#}");
    assert_eq!(p["metadata"]["attempt"], 1, "{p:#}");
    assert_eq!(p["labels"]["app"], "life", "{p:#}");
    assert_eq!(p["annotations"]["note"], "from crictl", "{p:#}");
    // Filters are answered by the runtime (ListPodSandbox's filter).
    assert_eq!(c.ok(&["pods", "-q", "--name", "life"]).trim(), pod_id);
    assert_eq!(c.ok(&["pods", "-q", "--label", "app=life"]).trim(), pod_id);
    assert_eq!(c.ok(&["pods", "-q", "--label", "app=other"]).trim(), "");
    assert_eq!(c.ok(&["pods", "-q", "--state", "ready"]).trim(), pod_id);

    let p = c.json(&["inspectp", &pod_id]);
    let st = &p["status"];
    assert_eq!(st["id"], pod_id.as_str(), "{p:#}");
    assert_eq!(st["state"], "SANDBOX_READY", "{p:#}");
    assert_eq!(st["metadata"]["name"], "life", "{p:#}");
    let ip = st["network"]["ip"].as_str().unwrap_or_default();
    assert!(
        ip.parse::<std::net::IpAddr>().is_ok(),
        "the pod has an IP: {p:#}"
    );
    assert_eq!(p["info"]["runtimeHandler"], "wasmpod", "{p:#}");

    let ctr = id_of(&c.ok(&["create", &pod_id, &ctr_path, &pod_path]));
    let listed = ps(&c, &[]);
    assert_eq!(ids(&listed), [ctr.as_str()]);
    let x = &listed[0];
    assert_eq!(x["state"], "CONTAINER_CREATED", "{x:#}");
    assert_eq!(x["podSandboxId"], pod_id.as_str(), "{x:#}");
    assert_eq!(x["metadata"]["name"], "hello", "{x:#}");
    assert_eq!(x["labels"]["tier"], "wasm", "{x:#}");
    assert_eq!(
        status(&c, &ctr)["state"],
        "CONTAINER_CREATED",
        "created, not started"
    );

    assert_eq!(c.ok(&["start", &ctr]).trim(), ctr);
    let st = wait_state(&c, &ctr, "CONTAINER_EXITED");
    assert_eq!(st["exitCode"], 0, "{st:#}");
    assert_eq!(st["reason"], "Completed", "{st:#}");
    assert_eq!(st["metadata"]["name"], "hello", "{st:#}");
    assert_eq!(st["labels"]["tier"], "wasm", "{st:#}");
    assert_eq!(
        st["logPath"],
        d.dir
            .path()
            .join("logs/life/hello/0.log")
            .display()
            .to_string(),
        "{st:#}"
    );
    for time in ["createdAt", "startedAt", "finishedAt"] {
        let t = st[time].as_str().unwrap_or_default();
        assert!(wasmpod_tests::is_rfc3339_nano(t), "{time}: {st:#}");
    }
    let inspect = c.json(&["inspect", &ctr]);
    assert_eq!(inspect["info"]["sandboxID"], pod_id.as_str(), "{inspect:#}");

    // ps filters, answered by the runtime.
    for filter in [
        &["--pod", pod_id.as_str()][..],
        &["--name", "hel+o"],
        &["--label", "tier=wasm"],
        &["--state", "exited"],
        &["--id", &ctr[..12]],
    ] {
        assert_eq!(ids(&ps(&c, filter)), [ctr.as_str()], "ps {filter:?}");
    }
    for filter in [
        &["--name", "^nobody$"][..],
        &["--label", "tier=native"],
        &["--state", "running"],
    ] {
        assert!(ps(&c, filter).is_empty(), "ps {filter:?}");
    }

    let out = c.output(&["logs", &ctr]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "Hello from wasmpod!\nGREETING=hello through crictl\nargs: one two\nPWD=(unset)\ncwd: /\n"
    );
    assert_eq!(text(&out.stderr), "hello: done\n");
    // --tail counts lines of both streams: the last two are one of each.
    let out = c.output(&["logs", "--tail", "2", &ctr]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("cwd: /\n".to_owned(), "hello: done\n".to_owned())
    );
    // -t: each line behind the time the runtime wrote it.
    let stamped = c.ok(&["logs", "-t", &ctr]);
    for line in stamped.lines() {
        let (time, _) = line.split_once(' ').unwrap();
        assert!(wasmpod_tests::is_rfc3339_nano(time), "{stamped}");
    }
    // -f on an exited container prints the log and returns.
    assert!(c.ok(&["logs", "-f", &ctr]).contains("args: one two"));

    assert_eq!(c.ok(&["rm", &ctr]).trim(), ctr);
    assert!(ps(&c, &[]).is_empty());
    let err = c.fails(&["inspect", &ctr]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );

    assert!(c.ok(&["stopp", &pod_id]).contains(&pod_id));
    assert_eq!(pods(&c)[0]["state"], "SANDBOX_NOTREADY");
    assert_eq!(c.ok(&["pods", "-q", "--state", "notready"]).trim(), pod_id);
    assert!(c.ok(&["rmp", &pod_id]).contains(&pod_id));
    assert!(pods(&c).is_empty());
    let err = c.fails(&["inspectp", &pod_id]);
    assert!(err.contains("NotFound"), "{err}");
}

/// `crictl run` (runp, create and start in one) with guests that end with a code of their
/// own; the code, the reason and what they printed come back through ps, inspect and logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_come_back_through_run_inspect_and_logs() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);

    // (guest, the code it exits with, the code reported): a preview2 component's exit is
    // only success or failure (wasi:cli/exit), so its 42 comes back as 1.
    for (kind, code, reported) in [("p1", 7, 7), ("p2", 0, 0), ("p2", 42, 1)] {
        let name = format!("exit-{kind}-{code}");
        let pod_path = c.write(&format!("{name}-pod.json"), &pod_json(&d, &name));
        let ctr_path = c.write(
            &format!("{name}.json"),
            &container_json(
                "exit",
                &file_image(&format!("exit-code.{kind}")),
                &[&code.to_string()],
            ),
        );
        // A file:// image is not pulled (PullImage is for registries).
        let ctr = id_of(&c.ok(&["run", "--no-pull", &ctr_path, &pod_path]));
        let st = wait_state(&c, &ctr, "CONTAINER_EXITED");
        assert_eq!(st["exitCode"], reported, "{name}: {st:#}");
        let reason = if reported == 0 { "Completed" } else { "Error" };
        assert_eq!(st["reason"], reason, "{name}: {st:#}");
        assert_eq!(c.ok(&["logs", &ctr]), format!("exiting with {code}\n"));
        let listed = ps(&c, &["--id", &ctr]);
        assert_eq!(listed[0]["state"], "CONTAINER_EXITED", "{name}");
    }
    // Three pods, one container each, every one listed.
    assert_eq!(pods(&c).len(), 3);
    assert_eq!(ps(&c, &["--state", "exited"]).len(), 3);
    // `rm -a` and `rmp -af` (each pod stopped, then removed) clear the node.
    c.ok(&["rm", "-a"]);
    assert!(ps(&c, &[]).is_empty());
    assert_eq!(pods(&c).len(), 3, "rm -a leaves the pods");
    c.ok(&["rmp", "-a", "-f"]);
    assert!(pods(&c).is_empty());
}

/// A guest that never ends: it runs, logs while running, shows in stats, and is ended by
/// `stop`, by `rm -f`, and by `stopp` with its pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_guests_are_stopped_by_stop_rm_force_and_stopp() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod_path = c.write("pod.json", &pod_json(&d, "forever"));
    let pod_id = id_of(&c.ok(&["runp", &pod_path]));
    let start = |name: &str, args: &[&str]| {
        let path = c.write(
            &format!("{name}.json"),
            &container_json(name, &file_image("forever.p2"), args),
        );
        let id = id_of(&c.ok(&["create", &pod_id, &path, &pod_path]));
        assert_eq!(c.ok(&["start", &id]).trim(), id);
        id
    };

    let ticker = start("ticker", &[]);
    wait_log(&c, &ticker, "tick 2\n");
    let st = status(&c, &ticker);
    assert_eq!(st["state"], "CONTAINER_RUNNING", "{st:#}");
    assert!(
        wasmpod_tests::is_rfc3339_nano(st["startedAt"].as_str().unwrap_or_default()),
        "{st:#}"
    );
    assert_eq!(
        c.ok(&["ps", "-q", "--state", "running"]).trim(),
        ticker,
        "ps without -a lists running containers"
    );
    let stats = c.json(&["stats", "-o", "json", &ticker]);
    assert_eq!(
        stats["stats"][0]["attributes"]["id"],
        ticker.as_str(),
        "{stats:#}"
    );
    // crictl refuses to remove a running container or a ready pod without -f.
    c.fails(&["rm", &ticker]);
    c.fails(&["rmp", &pod_id]);

    assert_eq!(c.ok(&["stop", "--timeout", "5", &ticker]).trim(), ticker);
    let st = status(&c, &ticker);
    assert_eq!(
        st["state"], "CONTAINER_EXITED",
        "stop returns once it ended: {st:#}"
    );
    // Ended by a signal, as a process would be: 128 + SIGTERM, or + SIGKILL.
    let code = st["exitCode"].as_i64().unwrap();
    assert!(code == 143 || code == 137, "{st:#}");
    assert!(
        wasmpod_tests::is_rfc3339_nano(st["finishedAt"].as_str().unwrap_or_default()),
        "{st:#}"
    );
    // Stopping again is fine (kubelet retries), and changes nothing.
    c.ok(&["stop", &ticker]);
    assert_eq!(status(&c, &ticker)["exitCode"], code);
    let logged = c.ok(&["logs", &ticker]);
    assert!(logged.starts_with("tick 1\ntick 2\n"), "{logged}");

    // A spinning guest (no host calls to stop at) ended by rm -f.
    let spinner = start("spinner", &["--spin"]);
    wait_log(&c, &spinner, "spinning\n");
    c.ok(&["rm", "-f", &spinner]);
    assert_eq!(ids(&ps(&c, &[])), [ticker.as_str()]);

    // stopp ends what still runs in the pod.
    let last = start("last", &["--spin"]);
    wait_log(&c, &last, "spinning\n");
    c.ok(&["stopp", &pod_id]);
    let st = status(&c, &last);
    assert_eq!(st["state"], "CONTAINER_EXITED", "{st:#}");
    assert_ne!(st["exitCode"], 0, "{st:#}");
    assert_eq!(pods(&c)[0]["state"], "SANDBOX_NOTREADY");
    c.ok(&["rmp", &pod_id]);
    assert!(pods(&c).is_empty());
    assert!(ps(&c, &[]).is_empty(), "rmp removes the pod's containers");
}

/// The image service through crictl: pull from a registry, images, inspecti, a container
/// from the pulled image by name, rmi, and the errors for what is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_listed_run_and_removed() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let registry = Registry::start(d.dir.path()).await;
    let reference = registry.push_wasm(&wasm("hello.p2"), "crictl/hello:1", d.dir.path());
    let (repo, tag) = reference.rsplit_once(':').unwrap();

    assert!(c.json(&["images", "-o", "json"])["images"]
        .as_array()
        .unwrap()
        .is_empty());
    let pulled = c.ok(&["pull", &reference]);
    let image_id = pulled
        .trim()
        .strip_prefix("Image is up to date for ")
        .unwrap_or_else(|| panic!("{pulled}"))
        .to_owned();
    assert!(image_id.starts_with("sha256:"), "{pulled}");

    let images = c.json(&["images", "-o", "json"]);
    let listed = images["images"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{images:#}");
    assert_eq!(listed[0]["id"], image_id.as_str(), "{images:#}");
    assert_eq!(listed[0]["repoTags"], json!([reference]), "{images:#}");
    let digests = listed[0]["repoDigests"].as_array().unwrap();
    assert!(
        digests.len() == 1
            && digests[0]
                .as_str()
                .unwrap()
                .starts_with(&format!("{repo}@sha256:")),
        "{images:#}"
    );
    assert!(listed[0]["size"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    let table = c.ok(&["images"]);
    let row = table.lines().nth(1).unwrap_or_default();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..2], [repo, tag], "{table}");
    assert_eq!(c.ok(&["images", "-q"]).trim(), image_id);
    let inspected = c.json(&["inspecti", &reference]);
    assert_eq!(
        inspected["status"]["id"],
        image_id.as_str(),
        "{inspected:#}"
    );
    // By id too.
    assert_eq!(
        c.json(&["inspecti", &image_id])["status"]["repoTags"],
        json!([reference])
    );
    let fs = c.json(&["imagefsinfo"]);
    let used = &fs["status"]["imageFilesystems"][0]["usedBytes"]["value"];
    assert!(
        used.as_str().unwrap_or("0").parse::<u64>().unwrap() > 0,
        "{fs:#}"
    );

    // A container from the pulled image, by the name it was pulled as.
    let pod_path = c.write("pod.json", &pod_json(&d, "pulled"));
    let ctr_path = c.write("app.json", &container_json("app", &reference, &["p2"]));
    let pod_id = id_of(&c.ok(&["runp", &pod_path]));
    let ctr = id_of(&c.ok(&["create", &pod_id, &ctr_path, &pod_path]));
    c.ok(&["start", &ctr]);
    let st = wait_state(&c, &ctr, "CONTAINER_EXITED");
    assert_eq!(st["exitCode"], 0, "{st:#}");
    // The pulled id everywhere a container names its image (the CRI's image_id rule).
    assert_eq!(st["imageRef"], image_id.as_str(), "{st:#}");
    assert_eq!(st["imageId"], image_id.as_str(), "{st:#}");
    assert_eq!(ps(&c, &["--id", &ctr])[0]["imageId"], image_id.as_str());
    assert!(c.ok(&["logs", &ctr]).contains("args: p2"));
    c.ok(&["rm", &ctr]);
    c.ok(&["stopp", &pod_id]);
    c.ok(&["rmp", &pod_id]);

    // Pulling again is a no-op answering the same id.
    assert_eq!(c.ok(&["pull", &reference]), pulled);
    assert_eq!(
        c.ok(&["rmi", &reference]).trim(),
        format!("Deleted: {reference}")
    );
    assert!(c.json(&["images", "-o", "json"])["images"]
        .as_array()
        .unwrap()
        .is_empty());
    let err = c.fails(&["rmi", &reference]);
    assert!(err.contains("no such image"), "{err}");
    let err = c.fails(&["inspecti", &reference]);
    assert!(err.contains("no such image"), "{err}");
    let missing = format!("{}/crictl/missing:1", registry.host);
    let err = c.fails(&["pull", &missing]);
    assert!(err.contains("NotFound"), "{err}");
    // And rmi by id.
    c.ok(&["pull", &reference]);
    c.ok(&["rmi", &image_id]);
    assert!(c.ok(&["images", "-q"]).trim().is_empty());
}

/// `crictl events` (GetContainerEvents) follows a container through created, started,
/// stopped and deleted, each event carrying the container's status and its pod's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_a_container_from_create_to_rm() {
    require_guests();
    let d = Daemon::start().await;
    let c = Crictl::new(&d);
    let pod_path = c.write("pod.json", &pod_json(&d, "events"));
    let pod_id = id_of(&c.ok(&["runp", &pod_path]));
    let events = Events::subscribe(&c, &pod_id, &pod_path);

    let ctr_path = c.write(
        "hello.json",
        &container_json("hello", &file_image("hello.p2"), &["evented"]),
    );
    let ctr = id_of(&c.ok(&["create", &pod_id, &ctr_path, &pod_path]));
    c.ok(&["start", &ctr]);
    wait_state(&c, &ctr, "CONTAINER_EXITED");
    c.ok(&["rm", &ctr]);
    let seen = events.of_until(&ctr, "CONTAINER_DELETED_EVENT");
    let kinds: Vec<&str> = seen
        .iter()
        .map(|e| e["containerEventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "CONTAINER_CREATED_EVENT",
            "CONTAINER_STARTED_EVENT",
            "CONTAINER_STOPPED_EVENT",
            "CONTAINER_DELETED_EVENT"
        ],
        "{seen:#?}"
    );
    // Each event carries the statuses of the pod's containers (the probe's among them).
    let own = |e: &Value| {
        e["containersStatuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == ctr.as_str())
            .cloned()
            .unwrap_or(Value::Null)
    };
    let states: Vec<Value> = seen.iter().map(|e| own(e)["state"].clone()).collect();
    // A deleted container has no status left.
    assert_eq!(
        states,
        [
            json!("CONTAINER_CREATED"),
            json!("CONTAINER_RUNNING"),
            json!("CONTAINER_EXITED"),
            Value::Null
        ],
        "{seen:#?}"
    );
    assert_eq!(own(&seen[2])["exitCode"], 0, "{seen:#?}");
    for e in &seen {
        assert_eq!(e["podSandboxStatus"]["id"], pod_id.as_str(), "{e:#}");
        assert_eq!(e["podSandboxStatus"]["state"], "SANDBOX_READY", "{e:#}");
        assert!(
            e["createdAt"]
                .as_str()
                .unwrap_or("0")
                .parse::<i64>()
                .unwrap()
                > 0,
            "{e:#}"
        );
    }
    drop(events);
    c.ok(&["rmp", "-f", &pod_id]);
    assert!(pods(&c).is_empty());
}

//! Unit tier (no root, no cluster): the install manifests in deploy/kubernetes.
//! * They (and the kind smoke test's and the lab demo's manifests) validate against the Kubernetes 1.33 schemas (PyPI `kubernetes-validate`, strict:
//!   unknown fields fail), and a misspelt field is caught, so the check can fail.
//! * Every setting they pass the agent is one of its flags' environment names, and the required
//!   ones are there.
//! * RBAC is read-only and covers exactly the kinds the API source reflects.
//! * The agent socket is mounted at the same path as on the host (weir-cni finds it there).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use clap::CommandFactory as _;
use serde_json::Value;
use weir_operator_agent::{
    config::Config,
    source::{k8s, manifest},
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// Every document of `file`, as JSON values.
fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let docs = manifest::json_documents(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    docs.into_iter().filter(|v| !v.is_null()).collect()
}

fn resources() -> Vec<String> {
    let k = &docs("kustomization.yaml")[0];
    k["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| r.as_str().expect("name").to_owned())
        .collect()
}

fn all() -> Vec<Value> {
    resources().iter().flat_map(|f| docs(f)).collect()
}

fn find<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    objs.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let Some(validator) = std::env::var_os("WEIR_KUBERNETES_VALIDATE") else {
        assert!(
            std::env::var_os("WEIR_REQUIRE_PRIVILEGED").is_none(),
            "WEIR_KUBERNETES_VALIDATE is not set: run scripts/setup.sh (scripts/test.sh does)"
        );
        println!("SKIPPED manifests_validate_against_the_kubernetes_schemas: kubernetes-validate not installed (scripts/setup.sh installs it)");
        return;
    };
    let validate = |files: &[PathBuf]| {
        let out = Command::new(&validator)
            .args(["-k", "1.33.0", "--strict"])
            .args(files)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", Path::new(&validator).display()));
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    // The install base, and the manifests the kind script and the lab demo apply.
    let mut files: Vec<String> = resources();
    files.extend(
        ["../kind/smoke.yaml", "../examples/demo-app.yaml", "../examples/demo-policy.yaml", "relay/relay.yaml"]
            .map(str::to_owned),
    );
    let objects: usize = files.iter().map(|f| docs(f).len()).sum();
    let (ok, out) = validate(&files.iter().map(|f| deploy_dir().join(f)).collect::<Vec<_>>());
    assert!(ok, "deploy/ does not validate:\n{out}");
    let checked = out.lines().filter(|l| l.contains("passed for resource")).count();
    assert_eq!(checked, objects, "every object is checked:\n{out}");

    // The check can fail: a misspelt field in the DaemonSet is caught.
    let bad = std::env::temp_dir().join(format!("weir-deploy-bad-{}.yaml", std::process::id()));
    let ds = std::fs::read_to_string(deploy_dir().join("daemonset.yaml")).expect("daemonset");
    assert!(ds.contains("hostNetwork: true"));
    std::fs::write(&bad, ds.replace("hostNetwork: true", "hostNetwrk: true")).expect("write");
    let (ok, out) = validate(std::slice::from_ref(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(!ok, "a misspelt field passed validation:\n{out}");
    assert!(out.contains("hostNetwrk"), "the error names the field:\n{out}");
}

#[test]
fn every_setting_is_an_agent_flag_and_the_required_ones_are_set() {
    let cmd = Config::command();
    let known: BTreeSet<String> =
        cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect();
    let objs = all();
    let cm: BTreeSet<String> =
        find(&objs, "ConfigMap")["data"].as_object().expect("ConfigMap data").keys().cloned().collect();
    let ds = find(&objs, "DaemonSet");
    let agent = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(agent["name"], "agent");
    let env: BTreeSet<String> = agent["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| e["name"].as_str().expect("env name").to_owned())
        .filter(|n| n != "RUST_LOG")
        .collect();
    // A variable that is no setting must exist only to be expanded into one (`$(NAME)`).
    let values: Vec<&str> = agent["env"].as_array().expect("env").iter().filter_map(|e| e["value"].as_str()).collect();
    for name in cm.iter().chain(&env) {
        let expanded = values.iter().any(|v| v.contains(&format!("$({name})")));
        assert!(known.contains(name) || expanded, "{name} is not a weir-agent setting (known: {known:?})");
    }
    // Metrics on the node's address, on Cilium's port.
    let metrics = agent["env"].as_array().expect("env").iter().find(|e| e["name"] == "WEIR_METRICS_ADDR");
    assert_eq!(metrics.and_then(|e| e["value"].as_str()), Some("$(WEIR_HOST_IP):9962"));
    assert!(agent["envFrom"][0]["configMapRef"]["name"] == find(&objs, "ConfigMap")["metadata"]["name"]);
    for required in cmd.get_arguments().filter(|a| a.is_required_set()) {
        let e = required.get_env().expect("required flags have an env name").to_string_lossy().into_owned();
        assert!(cm.contains(&e) || env.contains(&e), "required setting {e} is not given");
    }
    // The conflist is installed by the agent, into the host's net.d.
    assert!(env.contains("WEIR_CNI_CONF_DIR"));
    // The runtime's CNI cache, read only, for rebuilding a lost store.
    assert!(env.contains("WEIR_CNI_CACHE_DIR"));
    let cache = agent["volumeMounts"].as_array().expect("mounts").iter().find(|m| m["name"] == "cni-cache");
    assert_eq!(cache.map(|m| m["readOnly"].clone()), Some(serde_json::Value::Bool(true)));
}

#[test]
fn rbac_is_read_only_on_exactly_what_the_source_reflects() {
    let objs = all();
    let role = find(&objs, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs: BTreeSet<&str> =
            rule["verbs"].as_array().expect("verbs").iter().map(|v| v.as_str().expect("verb")).collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "read-only: {rule}");
        for g in rule["apiGroups"].as_array().expect("apiGroups") {
            for r in rule["resources"].as_array().expect("resources") {
                granted.insert((g.as_str().expect("group").to_owned(), r.as_str().expect("resource").to_owned()));
            }
        }
    }
    let reads: BTreeSet<(String, String)> = k8s::READS.iter().map(|(g, r)| (g.to_string(), r.to_string())).collect();
    assert_eq!(granted, reads, "RBAC grants exactly what the API source reads");
    let binding = find(&objs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let sa = find(&objs, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    let ds = find(&objs, "DaemonSet");
    assert_eq!(ds["spec"]["template"]["spec"]["serviceAccountName"], sa["metadata"]["name"]);
}

#[test]
fn the_agent_socket_is_where_weir_cni_on_the_host_looks() {
    let objs = all();
    let pod = &find(&objs, "DaemonSet")["spec"]["template"]["spec"];
    let socket_dir = Path::new(weir_operator_api::DEFAULT_SOCKET).parent().expect("socket dir");
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| Path::new(m["mountPath"].as_str().expect("mountPath")) == socket_dir)
        .unwrap_or_else(|| panic!("nothing mounted at {}", socket_dir.display()));
    let volume =
        pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == mount["name"]).expect("volume");
    assert_eq!(volume["hostPath"]["path"].as_str().map(Path::new), Some(socket_dir), "same path on the host");
    assert_eq!(pod["hostNetwork"], true);
}

/// Without kube-proxy the agent must reach the API server by its real address: the install
/// names the setting, and the kind install (no kube-proxy) sets it to the control plane.
#[test]
fn the_api_server_address_is_configured_where_kube_proxy_is_absent() {
    let objs = all();
    let data = &find(&objs, "ConfigMap")["data"];
    assert!(data.get("WEIR_K8S_SERVICE_HOST").is_some(), "the base names the setting");
    assert_eq!(data["WEIR_K8S_SERVICE_PORT"], "6443");
    let kind_dir = deploy_dir().join("../kind");
    let one = |text: &str| -> Value {
        manifest::json_documents(text).expect("yaml").into_iter().next().expect("one document")
    };
    let cluster = one(&std::fs::read_to_string(kind_dir.join("cluster.yaml")).expect("cluster.yaml"));
    assert_eq!(cluster["networking"]["kubeProxyMode"], "none", "the kind cluster has no kube-proxy");
    let k = one(&std::fs::read_to_string(kind_dir.join("kustomization.yaml")).expect("kind kustomization"));
    assert_eq!(k["resources"][0], "../kubernetes");
    let patch = one(k["patches"][0]["patch"].as_str().expect("patch"));
    assert_eq!(patch[0]["path"], "/data/WEIR_K8S_SERVICE_HOST");
    assert_eq!(patch[0]["value"], format!("{}-control-plane", cluster["name"].as_str().expect("cluster name")));
    let run = std::fs::read_to_string(kind_dir.join("run.sh")).expect("run.sh");
    assert!(run.contains("kubectl apply -k deploy/kind"), "run.sh installs through the kind overlay");
}

/// The relay overlay: its Deployment runs `weir-relay` with flags the binary has, finding the
/// agents from Nodes (the only thing its role reads) at the port, TLS name and CA the agents'
/// patch serves; the agents' patch sets only agent settings, off loopback only with TLS.
#[test]
fn the_relay_overlay_matches_the_relay_and_the_agents() {
    let k = &docs("relay/kustomization.yaml")[0];
    assert_eq!(k["resources"][0], "..", "the overlay installs the base too");
    let relay = docs("relay/relay.yaml");
    let deployment = find(&relay, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<&str> =
        container["command"].as_array().expect("command").iter().map(|c| c.as_str().expect("arg")).collect();
    assert_eq!(command[0], "/usr/local/bin/weir-relay");
    let help = Command::new(env!("CARGO_BIN_EXE_weir-relay")).arg("--help").output().expect("weir-relay --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in &command[1..] {
        let flag = arg.split('=').next().expect("flag");
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{flag} is not a weir-relay flag"
        );
    }
    let value = |flag: &str| command.iter().find_map(|a| a.strip_prefix(&format!("{flag}="))).unwrap_or_default();
    assert!(command.contains(&"--kubernetes-nodes"));
    let role = find(&relay, "ClusterRole");
    assert_eq!(role["rules"].as_array().map(Vec::len), Some(1));
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["nodes"]));
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "list", "watch"]));
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        find(&relay, "ServiceAccount")["metadata"]["name"]
    );
    // Clients of the relay need the cluster CA's certificate too.
    assert!(!value("--tls-client-ca").is_empty() && value("--listen").ends_with(":4245"));
    let service = find(&relay, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 4245);

    let patch = &docs("relay/agent-observer.yaml")[0];
    let agent = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(agent["name"], "agent");
    let known: BTreeSet<String> = Config::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    let env: std::collections::BTreeMap<&str, &str> = agent["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name"), e["value"].as_str().expect("value")))
        .collect();
    for name in env.keys() {
        assert!(known.contains(*name), "{name} is not a weir-agent setting");
    }
    assert_eq!(env["WEIR_OBSERVER_ADDR"], format!("$(WEIR_HOST_IP):{}", value("--peer-port")));
    for key in ["WEIR_OBSERVER_TLS_CERT", "WEIR_OBSERVER_TLS_KEY", "WEIR_OBSERVER_TLS_CLIENT_CA"] {
        assert!(env[key].starts_with("/etc/weir/observer-tls/"), "{key}");
    }
    assert!(!value("--peer-tls-server-name").is_empty());
}

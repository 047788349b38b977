//! `deploy/` (issue 21, point 6): the Kubernetes manifests validate against a pinned Kubernetes
//! version with `kubernetes-validate` (PyPI, strict: unknown fields are errors), and they say
//! what the host needs: a grace period covering the host's worst-case drain, the readiness probe
//! on `/healthz` served beyond loopback, the persistent volume at the state directory, one
//! credentials file per replica from the Secret under the variable the host reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentserver::auth::Credentials;
use agentserver::auth::headless::CREDENTIALS_FILE_ENV;
use serde_json::Value;

/// The Kubernetes version the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.34.0";

/// Loads every YAML document of each file (PyYAML, which `kubernetes-validate` brings),
/// validates the Kubernetes resources strictly, and answers `{file name: [documents]}`.
const LOAD_AND_VALIDATE: &str = r#"
import json, os, sys, yaml, kubernetes_validate
version, paths = sys.argv[1], sys.argv[2:]
out = {}
for path in paths:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if d.get("kind") != "Kustomization":
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except Exception as e:
                sys.exit("%s: %s/%s: %s" % (path, d.get("kind"), d.get("metadata", {}).get("name"), e))
    out[os.path.basename(path)] = docs
print(json.dumps(out))
"#;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn load() -> serde_json::Map<String, Value> {
    let dir = deploy_dir().join("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(LOAD_AND_VALIDATE)
        .arg(KUBERNETES_VERSION)
        .args(&files)
        .output()
        .expect("python3 (scripts/install-test-deps.sh installs kubernetes-validate)");
    assert!(
        out.status.success(),
        "the manifests do not validate against Kubernetes {KUBERNETES_VERSION}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Object(map) => map,
        other => panic!("{other}"),
    }
}

fn find<'a>(docs: &'a serde_json::Map<String, Value>, kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .values()
        .flat_map(|d| d.as_array().unwrap())
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// The value of `--flag` among `args`, if given.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .map(|i| args[i + 1].as_str())
}

fn seconds(args: &[String], name: &str, default: u64) -> Duration {
    flag(args, name).map_or(Duration::from_secs(default), |v| {
        Duration::from_secs_f64(v.parse().unwrap())
    })
}

#[test]
fn kubernetes_manifests_validate_and_fit_the_host() {
    let docs = load();

    // kustomization.yaml lists every other file.
    let kustomization = find(&docs, "Kustomization");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = docs
        .keys()
        .filter(|k| *k != "kustomization.yaml")
        .cloned()
        .collect();
    assert_eq!(listed, present);

    let sts = find(&docs, "StatefulSet");
    let pod = &sts["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args[0], "run");
    assert!(
        args.iter().any(|a| a == "--continue-or-register"),
        "a restarted pod must continue its sandbox"
    );
    let env = &container["env"];
    let env_value = |name: &str| named(env, name)["value"].as_str().unwrap().to_owned();

    // The grace period covers the host's worst-case drain for its own flags.
    let drain = agentserver::service::stop_timeout_secs(
        seconds(
            &args,
            "--grace-period",
            agentserver::service::DEFAULT_GRACE_SECS,
        ),
        seconds(
            &args,
            "--poll-timeout",
            agentserver::service::DEFAULT_POLL_TIMEOUT_SECS,
        ),
    );
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= drain, "grace {grace} s < drain {drain} s");
    // The preStop hook starts that drain and waits for it.
    let pre_stop = container["lifecycle"]["preStop"]["exec"]["command"].to_string();
    assert!(
        pre_stop.contains("kill -TERM 1") && pre_stop.contains("kill -0 1"),
        "{pre_stop}"
    );

    // Readiness on /healthz, on the port --metrics-listen serves, beyond loopback.
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz");
    let port = named(&container["ports"], probe["port"].as_str().unwrap())["containerPort"]
        .as_u64()
        .unwrap();
    let listen = agentserver::ops::parse_listen(flag(&args, "--metrics-listen").unwrap()).unwrap();
    assert_eq!(u64::from(listen.port()), port);
    assert!(
        !listen.ip().is_loopback(),
        "the kubelet cannot reach {listen}"
    );
    let service = find(&docs, "Service");
    assert_eq!(sts["spec"]["serviceName"], service["metadata"]["name"]);
    assert_eq!(service["spec"]["clusterIP"], "None");

    // The persistent volume holds the state directory.
    let home = env_value("AGENTSERVER_HOME");
    let claim = &sts["spec"]["volumeClaimTemplates"][0];
    let mount = named(
        &container["volumeMounts"],
        claim["metadata"]["name"].as_str().unwrap(),
    );
    assert_eq!(mount["mountPath"], home.as_str());
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");

    // One credentials file per replica, from the Secret, named by the pod.
    let pod_name = named(env, "POD_NAME");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let names: Vec<&str> = env
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let creds_at = names.iter().position(|n| *n == CREDENTIALS_FILE_ENV);
    assert!(
        creds_at > names.iter().position(|n| *n == "POD_NAME"),
        "$(POD_NAME) expands only after POD_NAME is defined: {names:?}"
    );
    let creds_path = env_value(CREDENTIALS_FILE_ENV);
    let (dir, file) = creds_path.rsplit_once('/').unwrap();
    assert_eq!(file, "$(POD_NAME).json");
    let secret_mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("the credentials directory is mounted");
    assert_eq!(secret_mount["readOnly"], true);
    let volume = named(&pod["volumes"], secret_mount["name"].as_str().unwrap());
    let secret = find(&docs, "Secret");
    assert_eq!(
        volume["secret"]["secretName"], secret["metadata"]["name"],
        "the mounted Secret is the one shipped"
    );
    let mode = volume["secret"]["defaultMode"].as_u64().unwrap();
    assert!(
        mode & 0o040 != 0 && mode & 0o007 == 0,
        "readable through fsGroup only: {mode:o}"
    );
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    let sts_name = sts["metadata"]["name"].as_str().unwrap();
    let want: BTreeSet<String> = (0..replicas)
        .map(|i| format!("{sts_name}-{i}.json"))
        .collect();
    let keys: BTreeSet<String> = secret["stringData"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, want, "one credentials file per replica");
    for (key, text) in secret["stringData"].as_object().unwrap() {
        let creds: Credentials = serde_json::from_str(text.as_str().unwrap())
            .unwrap_or_else(|e| panic!("{key} is not a credentials file: {e}"));
        assert_eq!(creds.server_url, env_value("AGENTSERVER_SERVER"));
    }

    let requests = &container["resources"]["requests"];
    assert!(requests["cpu"].is_string() && requests["memory"].is_string());

    // The image agrees: the same state directory, the same user.
    let containerfile = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    assert!(containerfile.contains(&format!("ENV AGENTSERVER_HOME={home}")));
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert!(containerfile.contains(&format!("USER {uid}")));
    assert!(containerfile.contains(r#"ENTRYPOINT ["tini", "--", "agentserver"]"#));
}

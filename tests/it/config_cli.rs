//! The command line and the config file: `--check`, `--version`, `--help`,
//! `-p`, YAML (`.yaml`, `.yml`) and JSON, and every rejection, which must
//! name the offending key, exit non-zero and start nothing.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::http::{self, chat};
use crate::support::{mux, standin, start_llmux, Process, PATIENCE};

const BIN: &str = env!("CARGO_BIN_EXE_llmux");

/// Runs `llmux ARGS` to completion (failing the test after `PATIENCE`).
fn llmux<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut child = Command::new(BIN)
        // For the example configs that take their key from the environment.
        .env("LLMUX_API_KEY", "sk-example")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn llmux");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("llmux {:?} did not exit", args.iter().map(AsRef::as_ref).collect::<Vec<_>>());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Writes `text` as `name` in `dir`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// A model block with the given port and hooks, YAML, two-space indented.
fn model(name: &str, port: u16, wake: &str, sleep: &str, alive: &str) -> String {
    format!("  {name}:\n    port: {port}\n    wake: {wake}\n    sleep: {sleep}\n    alive: {alive}\n")
}

/// `llmux --check -c FILE` must fail, naming every one of `needles`.
fn assert_rejected(path: &Path, needles: &[&str]) {
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{} was accepted: {}", path.display(), stdout(&o));
    assert!(o.status.code().is_some_and(|c| c != 0), "{:?}", o.status);
    for needle in needles {
        assert!(err.contains(needle), "stderr for {} lacks {needle:?}: {err}", path.display());
    }
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("port: 3000\nmodels:\n{}{}", model("b", 9002, "w", "s", "a"), model("a", 9001, "w", "s", "a"));
    let path = write(dir.path(), "llmux.yaml", &text);
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok"), "{}", stdout(&o));
    // --check starts nothing: the hooks would have left these.
    let marker = dir.path().join("ran");
    let text = format!("models:\n{}", model("a", 9001, "touch ran", "touch ran", "touch ran"));
    let path = write(dir.path(), "hooks.yaml", &text);
    let o = llmux(&[OsStr::new("-c"), path.as_os_str(), OsStr::new("--check")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!marker.exists());
}

#[test]
fn unknown_keys_are_rejected_with_their_name_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = model("a", 9001, "w", "s", "a");
    // Top level, line 7.
    let path = write(dir.path(), "top.yaml", &format!("models:\n{a}polcy: {{}}\n"));
    assert_rejected(&path, &["polcy", "line 7"]);
    // Inside a model, line 3.
    let path = write(
        dir.path(),
        "model.yaml",
        "models:\n  a:\n    prot: 9001\n    port: 9001\n    wake: w\n    sleep: s\n    alive: a\n",
    );
    assert_rejected(&path, &["prot", "line 3"]);
    // Inside the policy, line 8.
    let path = write(dir.path(), "policy.yaml", &format!("models:\n{a}policy:\n  request_timeout: 3\n"));
    assert_rejected(&path, &["request_timeout", "line 8"]);
    // JSON, line 2.
    let json =
        "{\"models\": {\"a\": {\"port\": 9001, \"wake\": \"w\", \"sleep\": \"s\", \"alive\": \"a\"}},\n \"polcy\": {}}";
    let path = write(dir.path(), "top.json", json);
    assert_rejected(&path, &["polcy", "line 2"]);
}

#[test]
fn duplicate_backend_ports_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "models:\n{}{}{}",
        model("a", 9001, "w", "s", "a"),
        model("b", 9002, "w", "s", "a"),
        model("c", 9001, "w", "s", "a")
    );
    let path = write(dir.path(), "dup.yaml", &text);
    assert_rejected(&path, &["models.c.port", "9001"]);
    let json = r#"{"models": {"a": {"port": 9001, "wake": "w", "sleep": "s", "alive": "a"},
                  "b": {"port": 9001, "wake": "w", "sleep": "s", "alive": "a"}}}"#;
    let path = write(dir.path(), "dup.json", json);
    assert_rejected(&path, &["models.b.port"]);
}

#[test]
fn backend_port_0_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("models:\n{}{}", model("a", 9001, "w", "s", "a"), model("b", 0, "w", "s", "a"));
    let path = write(dir.path(), "zero.yaml", &text);
    assert_rejected(&path, &["models.b.port"]);
}

#[test]
fn empty_hooks_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, (wake, sleep, alive, key)) in [
        ("''", "s", "a", "models.a.wake"),
        ("w", "\"   \"", "a", "models.a.sleep"),
        ("w", "s", "''", "models.a.alive"),
        ("", "s", "a", "models.a.wake"),
    ]
    .into_iter()
    .enumerate()
    {
        let path =
            write(dir.path(), &format!("hook{i}.yaml"), &format!("models:\n{}", model("a", 9001, wake, sleep, alive)));
        assert_rejected(&path, &[key]);
    }
    // A missing hook names its key too.
    let path = write(dir.path(), "missing.yaml", "models:\n  a:\n    port: 9001\n    sleep: s\n    alive: a\n");
    assert_rejected(&path, &["wake"]);
}

#[test]
fn a_config_without_models_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("empty.yaml", "models: {}\n"),
        ("null.yaml", "models:\n"),
        ("none.yaml", "port: 3000\n"),
        ("none.json", "{\"models\": {}}"),
    ] {
        let path = write(dir.path(), name, text);
        assert_rejected(&path, &["models"]);
    }
}

#[test]
fn other_extensions_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("models:\n{}", model("a", 9001, "w", "s", "a"));
    for name in ["llmux.toml", "llmux.txt", "llmux", "llmux.YAML.bak"] {
        let path = write(dir.path(), name, &text);
        assert_rejected(&path, &[".yaml", ".json"]);
    }
    // A missing file names the file.
    assert_rejected(&dir.path().join("absent.yaml"), &["absent.yaml"]);
}

#[test]
fn a_rejected_config_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Valid but for b's port: if llmux started, a's alive hook would run.
    let text = format!(
        "host: 127.0.0.1\nport: 0\nmodels:\n{}{}",
        model("a", 9001, "touch woke", "touch slept", "touch alive-ran"),
        model("b", 0, "w", "s", "a")
    );
    let path = write(dir.path(), "bad.yaml", &text);
    let o = llmux(&[OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.code().is_some_and(|c| c != 0), "{:?}", o.status);
    assert!(stderr(&o).contains("models.b.port"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("listening"), "{}", stdout(&o));
    for marker in ["woke", "slept", "alive-ran"] {
        assert!(!dir.path().join(marker).exists(), "a hook ran: {marker}");
    }
}

#[test]
fn version_and_help() {
    for flag in ["--version", "-V"] {
        let o = llmux(&[flag]);
        assert!(o.status.success(), "{flag}");
        assert_eq!(stdout(&o), format!("llmux {}\n", env!("CARGO_PKG_VERSION")), "{flag}");
    }
    for flag in ["--help", "-h"] {
        let o = llmux(&[flag]);
        assert!(o.status.success(), "{flag}");
        let out = stdout(&o);
        for needle in ["-c, --config", "-p, --port", "--check", "--version", "--help"] {
            assert!(out.contains(needle), "{flag} lacks {needle}: {out}");
        }
    }
    // No config: an error, pointing at --config.
    let o = llmux::<&str>(&[]);
    assert!(o.status.code().is_some_and(|c| c != 0));
    assert!(stderr(&o).contains("--config"), "{}", stderr(&o));
    let o = llmux(&["-c", "x.yaml", "--bogus"]);
    assert!(o.status.code().is_some_and(|c| c != 0));
    assert!(stderr(&o).contains("--bogus"), "{}", stderr(&o));
}

#[tokio::test]
async fn port_flag_overrides_the_config_and_port_0_prints_the_address() {
    // The config's port is taken; only the override lets llmux start.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let backend = standin("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "host: 127.0.0.1\nport: {taken_port}\nmodels:\n{}",
        model("a", backend.port(), "'touch up-a'", "'rm -f up-a'", "'test -f up-a'")
    );
    let path = write(dir.path(), "llmux.yaml", &text);

    let o = llmux(&[OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.code().is_some_and(|c| c != 0), "it should not listen on a taken port");
    assert!(!stdout(&o).contains("listening"));

    for flag in ["-p", "--port"] {
        let mut cmd = Command::new(BIN);
        cmd.arg("-c").arg(&path).args([flag, "0"]).stderr(Stdio::null());
        // Process::start reads the first stdout line, `listening on ADDR`.
        let llmux = Process::start(cmd);
        let addr: SocketAddr = llmux.addr.parse().expect("the first line names a socket address");
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        assert!(addr.port() != 0 && addr.port() != taken_port, "{addr}");
        let r = http::post(&format!("http://{addr}/v1/chat/completions"), &chat("a")).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"));
    }
    drop(taken);
}

#[tokio::test]
async fn a_json_config_runs() {
    let mux = mux().model("zeta").model("alpha").json().start();
    assert!(mux.config_path.extension().is_some_and(|e| e == "json"));
    let ids: Vec<String> = http::get(&mux.url("/v1/models")).await.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids, ["zeta", "alpha"]);
    for m in ["alpha", "zeta"] {
        let r = http::post(&mux.url("/v1/chat/completions"), &chat(m)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, m));
    }
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), mux.config_path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[tokio::test]
async fn a_yml_config_runs() {
    let backend = standin("y");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "# a comment\nhost: 127.0.0.1\nport: 0\nmax_body_bytes: 4096\nmodels:\n{}policy:\n  request_timeout_secs: 30\n",
        model("y", backend.port(), "'touch up-y'", "'rm -f up-y'", "'test -f up-y'")
    );
    let path = write(dir.path(), "llmux.yml", &text);
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let llmux = start_llmux(&path);
    let r = http::post(&format!("http://{}/v1/chat/completions", llmux.addr), &chat("y")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "y"), "{}", r.text());
    // Its max_body_bytes is in force.
    let big = format!(r#"{{"model":"y","pad":"{}"}}"#, "x".repeat(5000));
    let r = http::post(&format!("http://{}/v1/chat/completions", llmux.addr), &big).await;
    r.assert_error(413, "body_too_large");
}

/// The capacity example (three stand-ins, two resident at once) passes
/// `--check` as shipped: three models, and its hooks, which it reaches
/// through `../standin/`, exist.
#[test]
fn check_accepts_the_capacity_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("examples/capacity-standin/config.yaml");
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("ok (3 models)"), "{}", stdout(&o));
    let text = std::fs::read_to_string(&path).expect("read the example");
    assert!(text.lines().any(|l| l.starts_with("capacity: 2")), "{text}");
    for hook in ["wake", "sleep", "alive"] {
        assert!(root.join(format!("examples/standin/{hook}.sh")).is_file(), "no {hook} hook");
    }
    // The README's 80 GB vLLM example too.
    let path = root.join("examples/vllm-sleep-mode/capacity.yaml");
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.success() && stdout(&o).contains("ok (3 models)"), "{}{}", stdout(&o), stderr(&o));
}

/// `config.example.yaml` passes `--check`, and the fuzz corpus's seed is a
/// copy of it.
#[test]
fn check_accepts_the_example_config_and_the_fuzz_seed_is_its_copy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("config.example.yaml");
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seed = std::fs::read_to_string(root.join("fuzz/corpus/config/seed-example.yaml")).expect("seed");
    assert_eq!(seed, std::fs::read_to_string(&path).expect("example"), "copy config.example.yaml to the seed");
}

/// `host` may be a name: `localhost` is resolved at start and llmux
/// listens on one of its loopback addresses.
#[tokio::test]
async fn host_localhost_is_resolved() {
    let backend = standin("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "host: localhost\nport: 0\nmodels:\n{}",
        model("a", backend.port(), "'touch up-a'", "'rm -f up-a'", "'test -f up-a'")
    );
    let path = write(dir.path(), "llmux.yaml", &text);
    let llmux = start_llmux(&path);
    let addr: SocketAddr = llmux.addr.parse().expect("a socket address");
    assert!(addr.ip().is_loopback(), "{addr}");
    let r = http::post(&format!("http://{addr}/v1/chat/completions"), &chat("a")).await;
    assert_eq!((r.status.as_u16(), r.served_by()), (200, "a"), "{}", r.text());
}

/// A port already held: llmux exits non-zero with one line on stderr
/// naming the address and why.
#[test]
fn a_port_in_use_names_the_address() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!("host: 127.0.0.1\nport: {port}\nmodels:\n{}", model("a", 9001, "'true'", "'true'", "'false'"));
    let path = write(dir.path(), "llmux.yaml", &text);
    let o = llmux(&[OsStr::new("-c"), path.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{:?}", o.status);
    assert!(!stdout(&o).contains("listening"), "{}", stdout(&o));
    let expected = format!("llmux: cannot listen on 127.0.0.1:{port}: address already in use");
    assert!(stderr(&o).lines().any(|l| l == expected), "stderr: {}", stderr(&o));
    drop(held);
}

/// `--check` also checks hook scripts given as paths (one word with a
/// `/`), resolved against the model's `dir`: each that is missing or not
/// executable is named with its model and hook; inline scripts are not
/// files and pass.
#[test]
fn check_finds_missing_and_non_executable_hook_scripts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).expect("mkdir");
    for (name, mode) in [("wake.sh", 0o755), ("plain.sh", 0o644)] {
        std::fs::write(hooks.join(name), "#!/bin/sh\n").expect("write hook");
        std::fs::set_permissions(hooks.join(name), std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let good = format!(
        "models:\n{}{}    dir: hooks\n",
        model("a", 9001, "./hooks/wake.sh", "'curl -s http://127.0.0.1:$LLMUX_PORT/x && true'", "sh ./hooks/plain.sh"),
        model("b", 9002, "./wake.sh", &format!("{}/wake.sh", hooks.display()), "'true'"),
    );
    let path = write(dir.path(), "good.yaml", &good);
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = format!(
        "models:\n{}{}    dir: hooks\n{}    dir: nowhere\n",
        model("a", 9001, "./hooks/missing.sh", "./hooks/plain.sh", "./hooks"),
        model("b", 9002, "./wake.sh", "./plain.sh", "./hooks/wake.sh"),
        model("c", 9003, "w", "s", "a"),
    );
    let path = write(dir.path(), "bad.yaml", &bad);
    assert_rejected(
        &path,
        &[
            "models.a.wake: ./hooks/missing.sh: ",
            "missing.sh does not exist",
            "models.a.sleep: ./hooks/plain.sh: ",
            "plain.sh is not executable",
            "models.a.alive: ./hooks: ",
            "is a directory",
            "models.b.sleep: ./plain.sh: ",
            "models.b.alive: ./hooks/wake.sh: ",
            "models.c.dir: ",
            "nowhere is not a directory",
        ],
    );
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), path.as_os_str()]);
    assert!(!stderr(&o).contains("models.b.wake"), "b's wake is hooks/wake.sh: {}", stderr(&o));
}

/// `--check --print` prints the config as llmux resolved it: `${VAR}`
/// substituted, defaults filled in, secrets masked; as YAML that reads
/// back as the same config.
#[test]
fn check_print_shows_the_resolved_config_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "api_keys: [\"${{IT_PRINT_KEY}}\"]\nadmin_api_keys: [adm1n-key]\nport: ${{IT_PRINT_PORT}}\nmodels:\n{}    env: {{HF_TOKEN: hf_secret, THREADS: 4}}\n    alive_timeout_secs: 0.5\n",
        model("a", 9001, "'run --token hf_secret --model ${IT_PRINT_MODEL}'", "s", "a")
    );
    let path = write(dir.path(), "llmux.yaml", &text);
    let run = |print: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["--check", "-c"]).arg(&path).stdin(Stdio::null());
        if print {
            cmd.arg("--print");
        }
        cmd.env("IT_PRINT_KEY", "sk-very-secret").env("IT_PRINT_PORT", "3456").env("IT_PRINT_MODEL", "llama-8b");
        cmd.output().expect("run llmux")
    };
    let o = run(true);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for secret in ["sk-very-secret", "adm1n-key", "hf_secret"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    let tree: serde_yaml::Value = serde_yaml::from_str(&out).expect("YAML on stdout");
    assert_eq!(tree["port"], serde_yaml::Value::from(3456));
    assert_eq!(tree["api_keys"][0], serde_yaml::Value::from("***"));
    let a = &tree["models"]["a"];
    assert_eq!(a["wake"], serde_yaml::Value::from("run --token *** --model llama-8b"));
    assert_eq!(a["env"]["THREADS"], serde_yaml::Value::from("4"));
    assert_eq!(a["env"]["HF_TOKEN"], serde_yaml::Value::from("***"));
    assert_eq!(a["alive_timeout_secs"], serde_yaml::Value::from(0.5));
    // Defaults filled in.
    assert_eq!(a["wake_timeout_secs"], serde_yaml::Value::from(600));
    assert_eq!(tree["policy"]["scheduler"], serde_yaml::Value::from("cost_aware"));
    assert_eq!(tree["limits"]["max_headers"], serde_yaml::Value::from(100));
    assert_eq!(a["dir"], serde_yaml::Value::from(dir.path().canonicalize().expect("dir").display().to_string()));
    assert!(stderr(&o).contains("ok (1 models)"), "the verdict goes to stderr: {}", stderr(&o));
    // It reads back: the printed file passes --check itself.
    let again = write(dir.path(), "printed.yaml", &out);
    let o = llmux(&[OsStr::new("--check"), OsStr::new("-c"), again.as_os_str()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without --print: only the verdict.
    let o = run(false);
    assert_eq!(stdout(&o).trim(), format!("{}: ok (1 models)", path.display()));
}

/// Every example config passes `--check` (its hooks given as paths exist
/// and are executable), listens on loopback only unless it sets API keys,
/// and lets a request wait as long as a cold wake may take: no
/// `request_timeout_secs` shorter than a model's `wake_timeout_secs`.
#[test]
fn every_example_config_is_consistent_with_its_hooks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![root.join("config.example.yaml")];
    for dir in std::fs::read_dir(root.join("examples")).expect("examples").flatten() {
        for file in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            // An llmux config names its models; compose files, canned
            // answers (scale-out's models.json) and the like do not.
            let is_config = text.lines().any(|l| l.starts_with("models:") || l.starts_with("{\"models\""));
            if file.path().extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") && is_config {
                configs.push(file.path());
            }
        }
    }
    assert!(configs.len() >= 8, "{configs:?}");
    for path in configs {
        let o = llmux(&[OsStr::new("--check"), OsStr::new("--print"), OsStr::new("-c"), path.as_os_str()]);
        assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
        let c: serde_yaml::Value = serde_yaml::from_str(&stdout(&o)).expect("YAML");
        let host = c["host"].as_str().expect("host");
        let keys = c["api_keys"].as_sequence().is_some_and(|k| !k.is_empty());
        assert!(host == "127.0.0.1" || host == "::1" || host == "localhost" || keys, "{}: host {host}", path.display());
        let Some(timeout) = c["policy"]["request_timeout_secs"].as_f64() else { continue };
        for (name, m) in c["models"].as_mapping().expect("models") {
            let wake = m["wake_timeout_secs"].as_f64().expect("wake timeout");
            assert!(timeout >= wake, "{}: {name:?} may wake for {wake} s, requests wait {timeout} s", path.display());
        }
    }
}

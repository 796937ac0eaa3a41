//! The integration harness: real `llmux` processes in front of real
//! `llmux-standin` backends, every one on an ephemeral port, with hook
//! scripts that record what ran.
//!
//! Backends run for the whole test (so a request that reaches a backend
//! llmux believes asleep is still answered, and tells on llmux through its
//! `x-standin-model` header); the hooks decide what is "awake" and write
//! every step to `hooks.log`, which is what switching tests assert on.
//! Control files in the hook directory make a hook fail, hang or wait.

#![allow(dead_code)]

pub mod admin;
pub mod backend;
pub mod browser;
pub mod http;
pub mod wire;

#[path = "../../standin/locate.rs"]
mod locate;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long any wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A child process killed when dropped.
pub struct Process {
    child: Child,
    /// The address from its `listening on ADDR` line.
    pub addr: String,
}

impl Process {
    /// Starts `cmd` and waits for its `listening on ADDR` stdout line.
    pub fn start(cmd: Command) -> Process {
        Process::start_with_stdin(cmd, Stdio::null())
    }

    /// [`Process::start`] with `stdin` as the child's standard input (a
    /// socket to hand over, say).
    pub fn start_with_stdin(mut cmd: Command, stdin: Stdio) -> Process {
        cmd.stdout(Stdio::piped()).stdin(stdin);
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read first line");
        let Some(addr) = line.trim().strip_prefix("listening on ").map(str::to_owned) else {
            let _ = child.kill();
            panic!("first stdout line was {line:?}");
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in reader.lines() {});
        Process { child, addr }
    }

    /// The OS process id.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("kill");
    }

    /// Waits for the process to exit, failing the test after `PATIENCE`.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// The port of its address.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in backend serving `model` on an ephemeral port.
pub fn standin(model: &str) -> Process {
    standin_on(model, 0)
}

/// A stand-in backend serving `model` on an ephemeral port, with extra
/// arguments, e.g. `["--concurrency", "2"]`.
pub fn standin_with(model: &str, args: &[&str]) -> Process {
    let mut cmd = Command::new(locate::standin_bin());
    cmd.args(["--port", "0", "--model", model]).args(args).stderr(Stdio::null());
    Process::start(cmd)
}

/// A stand-in backend serving `model` on `port`.
pub fn standin_on(model: &str, port: u16) -> Process {
    let mut cmd = Command::new(locate::standin_bin());
    cmd.args(["--port", &port.to_string(), "--model", model]).stderr(Stdio::null());
    Process::start(cmd)
}

/// A stand-in backend serving `model` on `host:port` (port 0: any free).
pub fn standin_at(model: &str, host: &str, port: u16) -> Process {
    let mut cmd = Command::new(locate::standin_bin());
    cmd.args(["--host", host, "--port", &port.to_string(), "--model", model]).stderr(Stdio::null());
    Process::start(cmd)
}

/// The hook scripts every harness model uses. `$D` is the hook directory.
///
/// Control files: `fail-<hook>-<model>` makes that hook exit 1;
/// `slow-alive-<model>` makes `alive` sleep past its timeout;
/// `hold-<hook>-<model>` makes it wait until the file is removed;
/// `hang-<hook>-<model>` makes it sleep far past any timeout (the sleep's
/// pid goes to `hang-pid-<hook>-<model>`); `bg-<hook>-<model>` leaves a
/// background child holding the hook's stdout until the file is removed;
/// `spam-<hook>-<model>` prints 50 MB of output; `delay-<hook>-<model>`
/// makes it sleep as many seconds as the file says first;
/// `stderr-<hook>-<model>` prints 100 numbered lines to stderr, then a
/// CUDA out-of-memory line.
///
/// Each `hooks.log` line is also written to `hooks.times` after the time it
/// was taken (`date +%s.%N`), for checks that replay the log in time order.
/// Each wake and sleep writes the hook's `LLMUX_PORT` and `LLMUX_UPSTREAM`
/// to `hooks.env` (`wake a port=8001 upstream=http://127.0.0.1:8001`).
pub const HOOK: &str = r#"#!/bin/sh
# usage: hook.sh wake|sleep|alive   (run by llmux in this directory)
kind="$1"; m="$LLMUX_MODEL"
log() { t="$(date +%s.%N)"; echo "$1 $m" >> hooks.log; echo "$t $1 $m" >> hooks.times; }
if [ "$kind" = alive ]; then
  [ -f "fail-alive-$m" ] && exit 1
  if [ -f "slow-alive-$m" ]; then sleep 30; fi
  [ -f "awake-$m" ] || [ -f "up-$m" ]; exit $?
fi
log "$kind-start"
echo "$kind $m port=$LLMUX_PORT upstream=$LLMUX_UPSTREAM" >> hooks.env
echo "running $kind for $m"
while [ -f "hold-$kind-$m" ]; do sleep 0.01; done
if [ -f "delay-$kind-$m" ]; then sleep "$(cat "delay-$kind-$m")"; fi
if [ -f "hang-$kind-$m" ]; then sleep 300 & echo $! > "hang-pid-$kind-$m"; wait; fi
if [ -f "spam-$kind-$m" ]; then head -c 50000000 /dev/zero | tr '\0' 'x' | fold -w 100; fi
if [ -f "bg-$kind-$m" ]; then (while [ -f "bg-$kind-$m" ]; do sleep 0.05; done; echo bg done) & fi
if [ -f "stderr-$kind-$m" ]; then
  i=1; while [ $i -le 100 ]; do echo "loading shard $i" >&2; i=$((i+1)); done
  echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" >&2
fi
if [ -f "fail-$kind-$m" ]; then log "$kind-fail"; exit 1; fi
if [ "$kind" = wake ]; then touch "awake-$m"; else rm -f "awake-$m" "up-$m"; fi
log "$kind-end"
"#;

/// Builds a harness: models, policy lines and extra config lines.
pub struct Builder {
    models: Vec<String>,
    policy: Vec<String>,
    extra: Vec<String>,
    up_at_start: Vec<String>,
    format_json: bool,
    model_lines: Vec<(String, String)>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Models reached by `url`: (model, host its stand-in binds, the URL's
    /// host, base path).
    remote: Vec<(String, String, String, String)>,
    backend_args: Vec<(String, Vec<String>)>,
}

impl Builder {
    /// Starts `model`'s stand-in with extra arguments, e.g.
    /// `["--concurrency", "2"]`.
    pub fn backend_args(mut self, model: &str, args: &[&str]) -> Builder {
        self.backend_args.push((model.to_owned(), args.iter().map(|a| (*a).to_owned()).collect()));
        self
    }

    /// Adds a model (and a stand-in backend for it).
    pub fn model(mut self, name: &str) -> Builder {
        self.models.push(name.to_owned());
        self
    }

    /// Adds a `policy:` line, e.g. `min_active_secs: 2`.
    pub fn policy(mut self, line: &str) -> Builder {
        self.policy.push(line.to_owned());
        self
    }

    /// Puts `model`'s stand-in on `bind` (e.g. `127.0.0.2`) and gives the
    /// model `url: http://HOST:PORT{base}` instead of a `port`, where HOST
    /// is `url_host` (`bind` itself, or a name such as `localhost`).
    pub fn remote(mut self, model: &str, bind: &str, url_host: &str, base: &str) -> Builder {
        self.remote.push((model.to_owned(), bind.to_owned(), url_host.to_owned(), base.to_owned()));
        self
    }

    /// Adds a top-level config line, e.g. `max_body_bytes: 100`.
    pub fn config(mut self, line: &str) -> Builder {
        self.extra.push(line.to_owned());
        self
    }

    /// Makes `model`'s alive hook pass at start-up (it was left running).
    pub fn up_at_start(mut self, model: &str) -> Builder {
        self.up_at_start.push(model.to_owned());
        self
    }

    /// Adds a line under `model`'s block, after its hooks, e.g.
    /// `idle_sleep_secs: 1`.
    pub fn model_line(mut self, model: &str, line: &str) -> Builder {
        self.model_lines.push((model.to_owned(), line.to_owned()));
        self
    }

    /// Adds command-line arguments for llmux, e.g. `["--log-format", "json"]`.
    pub fn args(mut self, args: &[&str]) -> Builder {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Sets an environment variable for llmux (e.g. `RUST_LOG`, which the
    /// harness otherwise sets to `llmux=debug`).
    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Writes the config as JSON instead of YAML.
    pub fn json(mut self) -> Builder {
        self.format_json = true;
        self
    }

    /// Starts the backends and llmux.
    pub fn start(self) -> Mux {
        let hooks = Hooks::new();
        let dir = hooks.path();
        std::fs::write(dir.join("hook.sh"), HOOK).expect("write hook");
        for m in &self.up_at_start {
            std::fs::write(dir.join(format!("up-{m}")), "").expect("write up");
        }
        let backends: Vec<Process> = self
            .models
            .iter()
            .map(|m| match self.remote.iter().find(|r| r.0 == *m) {
                Some((_, bind, _, _)) => standin_at(m, bind, 0),
                None => match self.backend_args.iter().find(|(model, _)| model == m) {
                    Some((_, args)) => standin_with(m, &args.iter().map(String::as_str).collect::<Vec<_>>()),
                    None => standin(m),
                },
            })
            .collect();
        let config = if self.format_json { self.json_config(&backends) } else { self.yaml_config(&backends) };
        let ext = if self.format_json { "json" } else { "yaml" };
        let config_path = dir.join(format!("llmux.{ext}"));
        std::fs::write(&config_path, config).expect("write config");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let llmux = Process::start(llmux_command(&config_path, &self.env, &args));
        Mux { hooks, backends, models: self.models, llmux, config_path }
    }

    fn yaml_config(&self, backends: &[Process]) -> String {
        let models: Vec<(&str, u16)> = self.models.iter().zip(backends).map(|(m, b)| (m.as_str(), b.port())).collect();
        let urls: Vec<(String, String)> = self
            .remote
            .iter()
            .map(|(m, _, host, base)| {
                let i = self.models.iter().position(|n| n == m).expect("a remote model is a model");
                (m.clone(), format!("http://{host}:{}{base}", backends[i].port()))
            })
            .collect();
        let spec = Spec { model_lines: &self.model_lines, policy: &self.policy, extra: &self.extra, urls: &urls };
        harness_yaml(&models, &spec)
    }

    fn json_config(&self, backends: &[Process]) -> String {
        // Written by hand: serde_json's map would sort the models by name,
        // and their order in the file is their order in llmux.
        let models: Vec<String> = self
            .models
            .iter()
            .zip(backends)
            .map(|(m, b)| {
                let hook = |k: &str| serde_json::Value::from(format!("sh hook.sh {k}"));
                let model = serde_json::json!({"port": b.port(), "wake": hook("wake"), "sleep": hook("sleep"), "alive": hook("alive")});
                format!("{}: {model}", serde_json::Value::from(m.as_str()))
            })
            .collect();
        assert!(
            self.policy.is_empty() && self.extra.is_empty() && self.model_lines.is_empty(),
            "JSON harness takes no extra lines"
        );
        format!("{{\"host\": \"127.0.0.1\", \"port\": 0, \"models\": {{{}}}}}", models.join(", "))
    }
}

/// The lines a harness config holds besides its models.
#[derive(Default)]
pub struct Spec<'a> {
    /// Lines under a model's block, after its hooks: (model, line).
    pub model_lines: &'a [(String, String)],
    /// `policy:` lines.
    pub policy: &'a [String],
    /// Top-level lines.
    pub extra: &'a [String],
    /// Models given a `url` instead of their `port`: (model, url).
    pub urls: &'a [(String, String)],
}

/// The harness's YAML config for `models` (name, backend port): every
/// model with the `hook.sh` hooks, listening on 127.0.0.1 port 0, short
/// hook timeouts unless `spec.policy` sets them.
pub fn harness_yaml(models: &[(&str, u16)], spec: &Spec) -> String {
    let mut c = String::from("host: 127.0.0.1\nport: 0\nmodels:\n");
    for (m, port) in models {
        match spec.urls.iter().find(|(model, _)| model == m) {
            Some((_, url)) => writeln!(c, "  {m}:\n    url: {url}"),
            None => writeln!(c, "  {m}:\n    port: {port}"),
        }
        .expect("write to a string");
        for hook in ["wake", "sleep", "alive"] {
            let _ = writeln!(c, "    {hook}: sh hook.sh {hook}");
        }
        for (_, line) in spec.model_lines.iter().filter(|(model, _)| model == m) {
            let _ = writeln!(c, "    {line}");
        }
    }
    c.push_str("policy:\n");
    for line in spec.policy {
        let _ = writeln!(c, "  {line}");
    }
    for (key, secs) in [("wake_timeout_secs", 10), ("sleep_timeout_secs", 10), ("alive_timeout_secs", 5)] {
        if !spec.policy.iter().any(|l| l.starts_with(key)) {
            let _ = writeln!(c, "  {key}: {secs}");
        }
    }
    // The protocol's tests pin the order of switches down with FIFO; the
    // cost-aware scheduler's own tests say `scheduler: cost_aware`.
    if !spec.policy.iter().any(|l| l.starts_with("scheduler")) {
        c.push_str("  scheduler: fifo\n");
    }
    for line in spec.extra {
        let _ = writeln!(c, "{line}");
    }
    c
}

/// Starts the real `llmux` binary on `config`.
pub fn start_llmux(config: &Path) -> Process {
    start_llmux_with_env(config, &[])
}

/// Starts the real `llmux` binary on `config` with extra command-line
/// arguments, e.g. `["--log-format", "json"]`.
pub fn start_llmux_with_args(config: &Path, args: &[&str]) -> Process {
    Process::start(llmux_command(config, &[], args))
}

/// Starts the real `llmux` binary on `config` with extra environment
/// variables (inherited by its hooks).
pub fn start_llmux_with_env(config: &Path, env: &[(String, String)]) -> Process {
    Process::start(llmux_command(config, env, &[]))
}

/// Starts the real `llmux` binary on `config` with extra environment
/// variables and command-line arguments.
pub fn start_llmux_with(config: &Path, env: &[(String, String)], args: &[&str]) -> Process {
    Process::start(llmux_command(config, env, args))
}

/// The command `start_llmux*` run: `llmux -c CONFIG ARGS`, debug logs to
/// `llmux.log` next to the config.
pub fn llmux_command(config: &Path, env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_llmux"));
    cmd.arg("-c").arg(config).args(args).env("RUST_LOG", "llmux=debug");
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    // The log goes next to the config (`Mux::log`), or to the terminal
    // with LLMUX_TEST_LOG set.
    if std::env::var_os("LLMUX_TEST_LOG").is_none() {
        let log = config.with_file_name("llmux.log");
        match std::fs::File::create(&log) {
            Ok(file) => cmd.stderr(file),
            Err(_) => cmd.stderr(Stdio::null()),
        };
    }
    cmd
}

/// llmux in front of stand-ins, with its hook directory.
pub struct Mux {
    /// The hook directory: log and control files.
    pub hooks: Hooks,
    /// One stand-in per model, in model order.
    pub backends: Vec<Process>,
    /// The model names.
    pub models: Vec<String>,
    /// The llmux process.
    pub llmux: Process,
    /// Where its config is.
    pub config_path: PathBuf,
}

/// Starts describing a harness.
pub fn mux() -> Builder {
    Builder {
        models: Vec::new(),
        policy: Vec::new(),
        extra: Vec::new(),
        up_at_start: Vec::new(),
        format_json: false,
        model_lines: Vec::new(),
        args: Vec::new(),
        env: Vec::new(),
        remote: Vec::new(),
        backend_args: Vec::new(),
    }
}

impl Mux {
    /// Sends a chat request for `model` from a task of its own.
    pub fn spawn_chat(&self, model: &str) -> tokio::task::JoinHandle<http::Reply> {
        let (url, body) = (self.url("/v1/chat/completions"), http::chat(model));
        tokio::spawn(async move { http::post(&url, &body).await })
    }

    /// Starts a streaming chat request for `model` of `chunks` chunks
    /// `ms` apart and waits for its 200 response head.
    pub async fn slow_stream(&self, model: &str, chunks: u32, ms: u32) -> hyper::Response<hyper::body::Incoming> {
        let (chunks, ms) = (chunks.to_string(), ms.to_string());
        let headers = [("x-standin-chunks", chunks.as_str()), ("x-standin-chunk-ms", ms.as_str())];
        let url = self.url("/v1/chat/completions");
        let response = http::send(hyper::Method::POST, &url, &headers, http::chat_stream(model)).await;
        assert_eq!(response.status(), 200);
        response
    }

    /// `http://ADDR`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.llmux.addr)
    }

    /// The stand-in of `model`.
    pub fn backend(&self, model: &str) -> &Process {
        let i = self.models.iter().position(|m| m == model).expect("model");
        &self.backends[i]
    }

    /// `/health`'s state word for `model`.
    pub async fn state(&self, model: &str) -> String {
        let health = http::get(&self.url("/health")).await.json();
        let models = health["models"].as_array().cloned().unwrap_or_default();
        let entry = models.iter().find(|m| m["id"] == model).expect("model in /health");
        entry["state"].as_str().expect("state").to_owned()
    }

    /// What llmux has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config_path.with_file_name("llmux.log")).unwrap_or_default()
    }

    /// Waits until `/health` reports `state` for `model`.
    pub async fn wait_state(&self, model: &str, state: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.state(model).await == state {
                return;
            }
            assert!(Instant::now() < deadline, "{model} never became {state}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The hook directory.
pub struct Hooks {
    dir: TempDir,
}

impl Hooks {
    /// A fresh hook directory with an empty `hooks.log`.
    pub fn new() -> Hooks {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hooks.log"), "").expect("write log");
        Hooks { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every line of `hooks.log`, e.g. `wake-start a`.
    pub fn events(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("hooks.log")).unwrap_or_default();
        text.lines().map(str::to_owned).collect()
    }

    /// Every line of `hooks.times` as (seconds since the epoch, line as in
    /// `hooks.log`), in time order (lines taken at the same time keep
    /// their order in the file).
    pub fn timed_events(&self) -> Vec<(f64, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("hooks.times")).unwrap_or_default();
        let mut events: Vec<(f64, String)> = text
            .lines()
            .map(|l| {
                let (t, event) = l.split_once(' ').unwrap_or_else(|| panic!("bad hooks.times line {l:?}"));
                (t.parse().unwrap_or_else(|_| panic!("bad time in {l:?}")), event.to_owned())
            })
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        events
    }

    /// Waits until `hooks.log` has the line `event`.
    pub async fn wait_for(&self, event: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.events().iter().any(|e| e == event) {
            assert!(Instant::now() < deadline, "no `{event}` in {:?}", self.events());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Creates control file `name` (e.g. `fail-wake-b`).
    pub fn set(&self, name: &str) {
        std::fs::write(self.dir.path().join(name), "").expect("write control file");
    }

    /// Writes control file `name` with `text` (e.g. `delay-wake-b`, `5`).
    pub fn set_to(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write control file");
    }

    /// Removes control file `name`.
    pub fn clear(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(name));
    }

    /// Asserts that no two models were ever awake at once, replaying the
    /// log: a wake may start only when every other model has finished
    /// sleeping (or failed to wake).
    pub fn assert_never_two_awake(&self) {
        let events = self.events();
        let mut awake: Vec<&str> = Vec::new();
        for e in &events {
            let mut words = e.split_whitespace();
            let (what, model) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            match what {
                "wake-start" => {
                    let others: Vec<_> = awake.iter().filter(|m| **m != model).collect();
                    assert!(others.is_empty(), "wake of {model} while {others:?} awake: {events:?}");
                    awake.push(model);
                }
                "sleep-end" | "wake-fail" => awake.retain(|m| *m != model),
                _ => {}
            }
        }
    }

    /// Asserts that the sizes of the models holding memory never added up
    /// to more than `capacity`, replaying `hooks.times` in time order: a
    /// model holds memory from its `wake-start` until its `sleep-end` (a
    /// failed wake still holds it until the clean-up sleep ended), as
    /// llmux's budget counts it. Models adopted at start-up are not in the
    /// log: this is for runs that start with nothing up. Returns the
    /// largest sum seen, so a test can also check the budget was used.
    pub fn assert_within_capacity(&self, sizes: &[(&str, f64)], capacity: f64) -> f64 {
        let events = self.timed_events();
        assert_eq!(
            events.len(),
            self.events().len(),
            "hooks.times and hooks.log disagree: {events:?} vs {:?}",
            self.events()
        );
        let size = |m: &str| sizes.iter().find(|(n, _)| *n == m).unwrap_or_else(|| panic!("no size for {m}")).1;
        let mut loaded: Vec<&str> = Vec::new();
        let mut most: f64 = 0.0;
        for (i, (t, e)) in events.iter().enumerate() {
            let mut words = e.split_whitespace();
            let (what, model) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            match what {
                "wake-start" if !loaded.contains(&model) => loaded.push(model),
                "sleep-end" => loaded.retain(|m| *m != model),
                _ => {}
            }
            let used: f64 = loaded.iter().map(|m| size(m)).sum();
            most = most.max(used);
            assert!(
                used <= capacity + 1e-9,
                "at {t} ({e}) {loaded:?} hold {used} > capacity {capacity}; log so far: {:?}",
                &events[..=i]
            );
        }
        most
    }
}

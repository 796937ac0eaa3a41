//! The configuration file: parsed (YAML or JSON, chosen by extension),
//! validated, and turned into a [`Config`] that the rest of llmux reads.
//!
//! Parsing happens in two steps. Serde reads the file into `Raw*` structs
//! that reject unknown keys (so a typo is an error naming the key and line,
//! never a silently ignored setting); [`validate`] then checks what serde
//! cannot (duplicate ports, empty hooks, no models) and fills in defaults.
//! Models keep the order they have in the file: `/v1/models` lists them in
//! that order and adoption at start-up prefers the first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Models in file order; a model's index here is its id everywhere.
    pub models: Vec<ModelConfig>,
    /// Switching policy.
    pub policy: Policy,
    /// Address to listen on.
    pub host: IpAddr,
    /// Port to listen on; 0 picks a free one (printed at start).
    pub port: u16,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// How long shutdown waits for in-flight requests and a running hook.
    pub shutdown_grace: Duration,
    /// Idle timeout of pooled upstream connections.
    pub upstream_idle_timeout: Duration,
    /// Runtime worker threads (default: the number of cores).
    pub workers: usize,
    /// Bounds on what clients and backends may cost.
    pub limits: Limits,
    /// Keys clients must present as `Authorization: Bearer <key>`; empty:
    /// no authentication.
    pub api_keys: Vec<String>,
    /// Keys for the control API (`/llmux/*`); empty: loopback clients only.
    pub admin_api_keys: Vec<String>,
    /// `/metrics` answers without a key even when `api_keys` is set.
    pub metrics_public: bool,
    /// One info line per request (target `llmux::access`); see
    /// [`crate::access`].
    pub access_log: bool,
    /// Directory hooks run in: the config file's directory.
    pub base_dir: PathBuf,
    /// The budget the sizes of loaded models add up to at most (`None`:
    /// one model at a time).
    pub capacity: Option<f64>,
    /// `/v1/models` lists each alias as a model of its own.
    pub list_aliases: bool,
}

/// One model: its backend port and its three hooks.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The name clients send as `model`.
    pub name: String,
    /// Backend port on 127.0.0.1.
    pub port: u16,
    /// Hook that makes the backend ready to serve.
    pub wake: Hook,
    /// Hook that frees the GPU.
    pub sleep: Hook,
    /// Hook that exits 0 when the backend is up.
    pub alive: Hook,
    /// Sleep the model once it has been idle this long (`None`: never).
    pub idle_sleep: Option<Duration>,
    /// Run `alive` this often while the model is active (`None`: never).
    pub alive_interval: Option<Duration>,
    /// What it takes of `capacity` (default 1).
    pub size: f64,
    /// Never evicted to make room for another model.
    pub pinned: bool,
    /// How much its waiting requests count for the scheduler (default 1).
    pub weight: f64,
    /// The wait bound the scheduler keeps for it (`max_wait_secs`).
    pub max_wait: Duration,
    /// Other names clients may send for it (same queue, same metrics).
    pub aliases: Vec<String>,
    /// The name the backend is sent in place of the client's `model`.
    pub upstream_model: Option<UpstreamModel>,
    /// At most this many of its requests reach the backend at once; the
    /// rest wait in llmux's queue (`None`: no limit).
    pub max_in_flight: Option<usize>,
}

/// `models.<name>.upstream_model`: the name, and the same as a JSON string
/// body (escaped, without its quotes) ready to be spliced into a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamModel {
    /// The name as configured.
    pub name: String,
    /// `name` JSON-escaped, without the surrounding quotes.
    pub json: String,
}

impl UpstreamModel {
    fn new(name: String) -> UpstreamModel {
        let quoted = serde_json::to_string(&name).unwrap_or_else(|_| String::from("\"\""));
        let json = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_owned();
        UpstreamModel { name, json }
    }
}

/// A hook: a script run with `sh -c`, bounded by a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The script, run as `sh -c SCRIPT`.
    pub script: String,
    /// Past this, its process group gets SIGTERM.
    pub timeout: Duration,
    /// After the SIGTERM, what is left of the group gets SIGKILL after this
    /// long (`policy.hook_kill_grace_secs`, copied into every hook so the
    /// hook runner needs nothing else).
    pub kill_grace: Duration,
}

/// Which of a model's hooks (the discriminant indexes per-hook metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// Makes the backend ready.
    Wake = 0,
    /// Frees the GPU.
    Sleep = 1,
    /// Exits 0 when the backend is up.
    Alive = 2,
}

impl HookKind {
    /// The hook's name in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Wake => "wake",
            HookKind::Sleep => "sleep",
            HookKind::Alive => "alive",
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens when a sleep hook fails while the model still answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSleepFailure {
    /// The switch fails; the old model stays active.
    Abort,
    /// The switch goes on and wakes the new model anyway.
    Continue,
}

/// The switching policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// How long a request may wait for its model; `None` waits forever.
    pub request_timeout: Option<Duration>,
    /// Wait for the active model's in-flight requests before sleeping it.
    pub drain_before_switch: bool,
    /// How long a drain may take; `None` waits for every request.
    pub drain_timeout: Option<Duration>,
    /// A model stays active at least this long once published.
    pub min_active: Duration,
    /// What a failed sleep hook does to a switch.
    pub on_sleep_failure: OnSleepFailure,
    /// The model woken at start, after adoption.
    pub preload: Option<String>,
    /// How long a hook's process group gets between SIGTERM and SIGKILL
    /// when it is stopped at its timeout or at the end of the shutdown grace.
    pub hook_kill_grace: Duration,
    /// Which policy picks the next model (`policy.scheduler`).
    pub scheduler: Scheduler,
}

/// `policy.scheduler`: which policy picks the next model to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Serve what is here, a wait bound, value per switch cost (the
    /// default; see `docs/scheduling.md`).
    CostAware,
    /// Queued models in the order their first request arrived.
    Fifo,
}

/// A configuration that could not be loaded, with a message naming the key.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

const DEFAULT_PORT: u16 = 3000;
const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_WAKE_TIMEOUT_SECS: u64 = 600;
const DEFAULT_SLEEP_TIMEOUT_SECS: u64 = 120;
const DEFAULT_ALIVE_TIMEOUT_SECS: u64 = 10;
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
const DEFAULT_HOOK_KILL_GRACE_SECS: f64 = 5.0;
/// The scheduler's default wait bound: two minutes, longer than most wakes
/// (so a bound never forces a switch a wake could not meet) and short
/// enough that nothing starves out of the box.
pub const DEFAULT_MAX_WAIT_SECS: u64 = 120;
const DEFAULT_UPSTREAM_IDLE_SECS: u64 = 4;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    models: Option<RawModels>,
    #[serde(default)]
    policy: RawPolicy,
    host: Option<IpAddr>,
    port: Option<u16>,
    max_body_bytes: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    upstream_idle_timeout_secs: Option<u64>,
    workers: Option<usize>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    admin_api_keys: Vec<String>,
    #[serde(default)]
    metrics_public: bool,
    access_log: Option<bool>,
    capacity: Option<f64>,
    list_aliases: Option<bool>,
}

/// Bounds on clients, backends and the queue; each has a safe default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request head must arrive within this (slowloris); on HTTP/1.1 the
    /// timer also runs while a keep-alive connection waits for its next
    /// request, so it is the idle timeout as well.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (431 past it).
    pub max_header_bytes: usize,
    /// Most header fields in a request (431 past it).
    pub max_headers: usize,
    /// A request body must arrive within this (408 past it).
    pub body_read_timeout: Duration,
    /// Most client connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Connecting to a backend may take this long (502 past it).
    pub upstream_connect_timeout: Duration,
    /// A backend must send its response head within this (504 past it).
    pub upstream_first_byte_timeout: Option<Duration>,
    /// HTTP/2: concurrent streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: largest header list in bytes.
    pub h2_max_header_list_bytes: u32,
    /// HTTP/2: streams reset by the client before llmux accepted them
    /// (the "rapid reset" flood bound).
    pub h2_max_pending_reset_streams: usize,
    /// Requests queued for models that are not active (429 past it).
    pub max_queued_requests: usize,
    /// Body bytes held by queued requests (429 past it).
    pub max_queued_body_bytes: u64,
    /// Request-body bytes held in memory by all requests together: being
    /// read, queued or forwarded (503 past it). At least `max_body_bytes`.
    pub max_body_bytes_in_memory: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    header_read_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    body_read_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    upstream_connect_timeout_secs: Option<u64>,
    upstream_first_byte_timeout_secs: Option<u64>,
    h2_max_concurrent_streams: Option<u32>,
    h2_max_header_list_bytes: Option<u32>,
    h2_max_pending_reset_streams: Option<usize>,
    max_queued_requests: Option<usize>,
    max_queued_body_bytes: Option<u64>,
    max_body_bytes_in_memory: Option<u64>,
}

/// The most connections `limits.max_connections` may allow.
const MAX_CONNECTIONS: usize = 1_000_000;

fn validate_limits(raw: &RawLimits, max_body_bytes: u64) -> Result<Limits, ConfigError> {
    let positive = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(err(format!("limits.{key}: must be at least 1"))),
        v => Ok(v.unwrap_or(default)),
    };
    let usize_of = |v: Option<usize>| v.map(|n| n as u64);
    let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(Limits {
        header_read_timeout: secs(positive("header_read_timeout_secs", raw.header_read_timeout_secs, 30)?),
        max_header_bytes: as_usize(positive("max_header_bytes", usize_of(raw.max_header_bytes), 64 * 1024)?),
        max_headers: as_usize(positive("max_headers", usize_of(raw.max_headers), 100)?),
        body_read_timeout: secs(positive("body_read_timeout_secs", raw.body_read_timeout_secs, 120)?),
        max_connections: match as_usize(positive("max_connections", usize_of(raw.max_connections), 10_000)?) {
            n if n > MAX_CONNECTIONS => {
                return Err(err(format!("limits.max_connections: at most {MAX_CONNECTIONS}")));
            }
            n => n,
        },
        upstream_connect_timeout: secs(positive(
            "upstream_connect_timeout_secs",
            raw.upstream_connect_timeout_secs,
            5,
        )?),
        upstream_first_byte_timeout: match raw.upstream_first_byte_timeout_secs {
            Some(0) => return Err(err("limits.upstream_first_byte_timeout_secs: must be at least 1")),
            v => v.map(secs),
        },
        h2_max_concurrent_streams: positive(
            "h2_max_concurrent_streams",
            raw.h2_max_concurrent_streams.map(u64::from),
            256,
        )?
        .try_into()
        .unwrap_or(u32::MAX),
        h2_max_header_list_bytes: positive(
            "h2_max_header_list_bytes",
            raw.h2_max_header_list_bytes.map(u64::from),
            64 * 1024,
        )?
        .try_into()
        .unwrap_or(u32::MAX),
        h2_max_pending_reset_streams: as_usize(positive(
            "h2_max_pending_reset_streams",
            usize_of(raw.h2_max_pending_reset_streams),
            20,
        )?),
        max_queued_requests: as_usize(positive("max_queued_requests", usize_of(raw.max_queued_requests), 1024)?),
        max_queued_body_bytes: positive("max_queued_body_bytes", raw.max_queued_body_bytes, 1 << 30)?,
        max_body_bytes_in_memory: 0,
    })
    .and_then(|limits| with_body_bytes_in_memory(limits, raw.max_body_bytes_in_memory, max_body_bytes))
}

/// Sets `max_body_bytes_in_memory`: by default twice the queue's bound
/// (the queue may hold `max_queued_body_bytes`; as much again is left for
/// bodies being read and forwarded to the active model), and never below
/// `max_body_bytes` (one largest body always fits).
fn with_body_bytes_in_memory(mut limits: Limits, raw: Option<u64>, max_body_bytes: u64) -> Result<Limits, ConfigError> {
    limits.max_body_bytes_in_memory = match raw {
        Some(n) if n < max_body_bytes => {
            return Err(err(format!(
                "limits.max_body_bytes_in_memory: must be at least max_body_bytes ({max_body_bytes}), or no body of that size could be read"
            )));
        }
        Some(n) => n,
        None => limits.max_queued_body_bytes.saturating_mul(2).max(max_body_bytes),
    };
    Ok(limits)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    port: u16,
    wake: String,
    sleep: String,
    alive: String,
    wake_timeout_secs: Option<u64>,
    sleep_timeout_secs: Option<u64>,
    alive_timeout_secs: Option<u64>,
    idle_sleep_secs: Option<u64>,
    alive_interval_secs: Option<u64>,
    size: Option<f64>,
    #[serde(default)]
    pinned: bool,
    weight: Option<f64>,
    max_wait_secs: Option<u64>,
    #[serde(default)]
    aliases: Vec<String>,
    upstream_model: Option<String>,
    max_in_flight: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    request_timeout_secs: Option<u64>,
    drain_before_switch: Option<bool>,
    drain_timeout_secs: Option<u64>,
    min_active_secs: Option<u64>,
    on_sleep_failure: Option<OnSleepFailure>,
    wake_timeout_secs: Option<u64>,
    sleep_timeout_secs: Option<u64>,
    alive_timeout_secs: Option<u64>,
    idle_sleep_secs: Option<u64>,
    alive_interval_secs: Option<u64>,
    preload: Option<String>,
    /// Seconds, fractions allowed.
    hook_kill_grace_secs: Option<f64>,
    scheduler: Option<Scheduler>,
    max_wait_secs: Option<u64>,
}

/// `models:` as an ordered list of (name, model), rejecting duplicate names.
struct RawModels(Vec<(String, RawModel)>);

impl<'de> Deserialize<'de> for RawModels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OrderedModels;
        impl<'de> Visitor<'de> for OrderedModels {
            type Value = RawModels;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from model name to model")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawModels, A::Error> {
                let mut models: Vec<(String, RawModel)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if models.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate model `{name}`")));
                    }
                    let model = map.next_value()?;
                    models.push((name, model));
                }
                Ok(RawModels(models))
            }
        }
        d.deserialize_map(OrderedModels)
    }
}

impl Config {
    /// Reads and validates the file at `path`; YAML for `.yaml`/`.yml`,
    /// JSON for `.json`, anything else is an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("{}: cannot read: {e}", path.display())))?;
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base_dir = base_dir.canonicalize().unwrap_or(base_dir);
        let format = Format::from_path(path)?;
        Config::parse(&text, format, base_dir).map_err(|e| err(format!("{}: {e}", path.display())))
    }

    /// Parses and validates `text`; hooks will run in `base_dir`.
    pub fn parse(text: &str, format: Format, base_dir: PathBuf) -> Result<Config, ConfigError> {
        let raw: RawConfig = match format {
            Format::Yaml => serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?,
            Format::Json => serde_json::from_str(text).map_err(|e| err(e.to_string()))?,
        };
        validate(raw, base_dir)
    }

    /// The index of the model called `name`, if configured.
    pub fn model_index(&self, name: &str) -> Option<usize> {
        self.models.iter().position(|m| m.name == name)
    }

    /// True if any key (client or admin) is configured: the client's
    /// `Authorization` header is then stripped before forwarding.
    pub fn has_keys(&self) -> bool {
        !self.api_keys.is_empty() || !self.admin_api_keys.is_empty()
    }

    /// The settings that differ in `new` and apply only after a restart:
    /// the listen address, the runtime and the connection-level limits.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.limits, &new.limits);
        [
            ("host", self.host != new.host),
            ("port", self.port != new.port),
            ("workers", self.workers != new.workers),
            ("limits.header_read_timeout_secs", a.header_read_timeout != b.header_read_timeout),
            ("limits.max_header_bytes", a.max_header_bytes != b.max_header_bytes),
            ("limits.max_headers", a.max_headers != b.max_headers),
            ("limits.max_connections", a.max_connections != b.max_connections),
            ("limits.h2_max_concurrent_streams", a.h2_max_concurrent_streams != b.h2_max_concurrent_streams),
            ("limits.h2_max_header_list_bytes", a.h2_max_header_list_bytes != b.h2_max_header_list_bytes),
            ("limits.h2_max_pending_reset_streams", a.h2_max_pending_reset_streams != b.h2_max_pending_reset_streams),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

/// A config file's format, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.yaml` or `.yml`.
    Yaml,
    /// `.json`.
    Json,
}

impl Format {
    /// The format for `path`'s extension.
    pub fn from_path(path: &Path) -> Result<Format, ConfigError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Ok(Format::Yaml),
            Some("json") => Ok(Format::Json),
            _ => Err(err(format!(
                "{}: unknown config format: the file name must end in .yaml, .yml or .json",
                path.display()
            ))),
        }
    }
}

fn validate(raw: RawConfig, base_dir: PathBuf) -> Result<Config, ConfigError> {
    let policy = validate_policy(&raw.policy)?;
    let raw_models = raw.models.map(|m| m.0).unwrap_or_default();
    if raw_models.is_empty() {
        return Err(err("models: at least one model must be configured"));
    }
    let mut ports = HashSet::new();
    let mut models = Vec::with_capacity(raw_models.len());
    for (name, m) in raw_models {
        models.push(validate_model(name, m, &raw.policy, policy.hook_kill_grace, &mut ports, &models)?);
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(err("max_body_bytes: must be at least 1"));
    }
    let idle = raw.upstream_idle_timeout_secs.unwrap_or(DEFAULT_UPSTREAM_IDLE_SECS);
    let workers = match raw.workers {
        Some(n) if !(1..=1024).contains(&n) => return Err(err("workers: must be between 1 and 1024")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let limits = validate_limits(&raw.limits, max_body_bytes)?;
    for (key, keys) in [("api_keys", &raw.api_keys), ("admin_api_keys", &raw.admin_api_keys)] {
        if let Some(i) = keys.iter().position(|k| k.trim().is_empty() || k.chars().any(char::is_whitespace)) {
            return Err(err(format!("{key}[{i}]: a key must be non-empty and contain no whitespace")));
        }
    }
    if let Some(name) = policy.preload.as_deref().filter(|p| !models.iter().any(|m| m.name == *p)) {
        return Err(err(format!("policy.preload: `{name}` is not a configured model")));
    }
    let capacity = validate_capacity(raw.capacity, &models)?;
    check_names(&models)?;
    Ok(Config {
        capacity,
        list_aliases: raw.list_aliases.unwrap_or(true),
        models,
        policy,
        limits,
        api_keys: raw.api_keys,
        admin_api_keys: raw.admin_api_keys,
        metrics_public: raw.metrics_public,
        access_log: raw.access_log.unwrap_or(true),
        host: raw.host.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        port: raw.port.unwrap_or(DEFAULT_PORT),
        max_body_bytes,
        shutdown_grace: secs(raw.shutdown_grace_secs.unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS)),
        upstream_idle_timeout: secs(idle),
        workers,
        base_dir,
    })
}

fn validate_policy(p: &RawPolicy) -> Result<Policy, ConfigError> {
    for (key, value) in [
        ("wake_timeout_secs", p.wake_timeout_secs),
        ("sleep_timeout_secs", p.sleep_timeout_secs),
        ("alive_timeout_secs", p.alive_timeout_secs),
    ] {
        if value == Some(0) {
            return Err(err(format!("policy.{key}: must be at least 1")));
        }
    }
    Ok(Policy {
        request_timeout: p.request_timeout_secs.map(secs),
        drain_before_switch: p.drain_before_switch.unwrap_or(true),
        drain_timeout: p.drain_timeout_secs.map(secs),
        min_active: secs(p.min_active_secs.unwrap_or(0)),
        on_sleep_failure: p.on_sleep_failure.unwrap_or(OnSleepFailure::Abort),
        preload: p.preload.clone(),
        hook_kill_grace: kill_grace(p.hook_kill_grace_secs)?,
        scheduler: p.scheduler.unwrap_or(Scheduler::CostAware),
    })
}

/// `policy.hook_kill_grace_secs`: a positive number of seconds, fractions
/// allowed, capped like every other duration.
fn kill_grace(secs: Option<f64>) -> Result<Duration, ConfigError> {
    let secs = secs.unwrap_or(DEFAULT_HOOK_KILL_GRACE_SECS);
    // NaN is checked first: `f64::min` would turn it into the cap.
    let valid = !secs.is_nan() && secs > 0.0;
    match Duration::try_from_secs_f64(secs.min(MAX_SECS as f64)) {
        Ok(d) if valid && !d.is_zero() => Ok(d),
        _ => Err(err("policy.hook_kill_grace_secs: must be a number of seconds greater than 0")),
    }
}

fn validate_model(
    name: String,
    m: RawModel,
    policy: &RawPolicy,
    kill_grace: Duration,
    ports: &mut HashSet<u16>,
    earlier: &[ModelConfig],
) -> Result<ModelConfig, ConfigError> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(err(format!("models.{name:?}: a model name must be non-empty text")));
    }
    if m.port == 0 {
        return Err(err(format!("models.{name}.port: must not be 0")));
    }
    if !ports.insert(m.port) {
        let other = earlier.iter().find(|o| o.port == m.port).map_or("", |o| o.name.as_str());
        return Err(err(format!("models.{name}.port: port {} is already used by model `{other}`", m.port)));
    }
    let hook = |kind: &str, script: String, own: Option<u64>, default: Option<u64>, fallback| {
        if script.trim().is_empty() {
            return Err(err(format!("models.{name}.{kind}: the hook must not be empty")));
        }
        let timeout = own.or(default).unwrap_or(fallback);
        if timeout == 0 {
            return Err(err(format!("models.{name}.{kind}_timeout_secs: must be at least 1")));
        }
        Ok(Hook { script, timeout: secs(timeout), kill_grace })
    };
    // A model's own setting wins over the policy's; 0 turns it off.
    let every = |own: Option<u64>, default: Option<u64>| own.or(default).filter(|s| *s > 0).map(secs);
    Ok(ModelConfig {
        idle_sleep: every(m.idle_sleep_secs, policy.idle_sleep_secs),
        alive_interval: every(m.alive_interval_secs, policy.alive_interval_secs),
        wake: hook("wake", m.wake, m.wake_timeout_secs, policy.wake_timeout_secs, DEFAULT_WAKE_TIMEOUT_SECS)?,
        sleep: hook("sleep", m.sleep, m.sleep_timeout_secs, policy.sleep_timeout_secs, DEFAULT_SLEEP_TIMEOUT_SECS)?,
        alive: hook("alive", m.alive, m.alive_timeout_secs, policy.alive_timeout_secs, DEFAULT_ALIVE_TIMEOUT_SECS)?,
        size: model_size(&name, m.size)?,
        pinned: m.pinned,
        weight: model_weight(&name, m.weight)?,
        max_wait: max_wait(&name, m.max_wait_secs.or(policy.max_wait_secs))?,
        upstream_model: upstream_model(&name, m.upstream_model)?,
        max_in_flight: match m.max_in_flight {
            Some(0) => return Err(err(format!("models.{name}.max_in_flight: must be at least 1"))),
            n => n,
        },
        aliases: m.aliases,
        port: m.port,
        name,
    })
}

/// `models.<name>.upstream_model`: non-empty text.
fn upstream_model(name: &str, upstream: Option<String>) -> Result<Option<UpstreamModel>, ConfigError> {
    match upstream {
        Some(u) if u.trim().is_empty() || u.chars().any(char::is_control) => {
            Err(err(format!("models.{name}.upstream_model: must be non-empty text")))
        }
        u => Ok(u.map(UpstreamModel::new)),
    }
}

/// Every name a client may send, model or alias, names one model: a name
/// used twice is an error naming both uses.
fn check_names(models: &[ModelConfig]) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, (&str, bool)> = HashMap::new();
    for m in models {
        seen.insert(&m.name, (&m.name, false));
    }
    for m in models {
        for (i, alias) in m.aliases.iter().enumerate() {
            if alias.trim().is_empty() || alias.chars().any(char::is_control) {
                return Err(err(format!("models.{}.aliases[{i}]: an alias must be non-empty text", m.name)));
            }
            if let Some((owner, is_alias)) = seen.insert(alias, (&m.name, true)) {
                let first = if is_alias { format!("an alias of model `{owner}`") } else { format!("model `{owner}`") };
                return Err(err(format!(
                    "models.{}.aliases[{i}]: `{alias}` is already the name of {first}; a name may be used once",
                    m.name
                )));
            }
        }
    }
    Ok(())
}

/// `models.<name>.weight`: a finite number above 0; 1 if absent.
fn model_weight(name: &str, weight: Option<f64>) -> Result<f64, ConfigError> {
    match weight {
        None => Ok(1.0),
        Some(w) if w.is_finite() && w > 0.0 => Ok(w),
        Some(w) => Err(err(format!("models.{name}.weight: must be a finite number above 0, not {w}"))),
    }
}

/// The wait bound: the model's `max_wait_secs`, else the policy's, else
/// [`DEFAULT_MAX_WAIT_SECS`]; at least 1.
fn max_wait(name: &str, secs_given: Option<u64>) -> Result<Duration, ConfigError> {
    match secs_given {
        Some(0) => Err(err(format!("models.{name}.max_wait_secs (or policy.max_wait_secs): must be at least 1"))),
        given => Ok(secs(given.unwrap_or(DEFAULT_MAX_WAIT_SECS))),
    }
}

/// `models.<name>.size`: a finite number, not negative; 1 if absent.
fn model_size(name: &str, size: Option<f64>) -> Result<f64, ConfigError> {
    match size {
        None => Ok(1.0),
        Some(s) if s.is_finite() && s >= 0.0 => Ok(s),
        Some(s) => Err(err(format!("models.{name}.size: must be a finite number of at least 0, not {s}"))),
    }
}

/// `capacity`: finite and above 0; no model larger; the pinned models fit
/// together.
fn validate_capacity(capacity: Option<f64>, models: &[ModelConfig]) -> Result<Option<f64>, ConfigError> {
    let Some(capacity) = capacity else {
        // One model at a time: a pinned one would keep every other from
        // ever waking.
        return match models.iter().find(|m| m.pinned) {
            Some(m) => Err(err(format!(
                "models.{}.pinned: needs `capacity` (without one, one model runs at a time and a pinned model \
                 would keep every other from waking)",
                m.name
            ))),
            None => Ok(None),
        };
    };
    if !capacity.is_finite() || capacity <= 0.0 {
        return Err(err(format!("capacity: must be a finite number above 0, not {capacity}")));
    }
    if let Some(m) = models.iter().find(|m| m.size > capacity) {
        return Err(err(format!("models.{}.size: {} is larger than the capacity ({capacity})", m.name, m.size)));
    }
    let pinned: f64 = models.iter().filter(|m| m.pinned).map(|m| m.size).sum();
    if pinned > capacity + 1e-9 {
        let names: Vec<&str> = models.iter().filter(|m| m.pinned).map(|m| m.name.as_str()).collect();
        return Err(err(format!(
            "capacity: the pinned models ({}) take {pinned}, more than the capacity ({capacity})",
            names.join(", ")
        )));
    }
    Ok(Some(capacity))
}

/// The longest duration any setting takes: ten years, which is forever for
/// a timeout, and keeps `Instant::now() + d` from overflowing.
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s.min(MAX_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Format::Yaml, PathBuf::from("."))
    }

    const TWO: &str = "models:\n  b:\n    port: 8002\n    wake: w\n    sleep: s\n    alive: a\n  a:\n    port: 8001\n    wake: w\n    sleep: s\n    alive: a\n";

    #[test]
    fn keeps_model_order_and_defaults() {
        let c = yaml(TWO).expect("valid");
        let names: Vec<_> = c.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(c.port, 3000);
        assert!(c.policy.drain_before_switch);
        assert_eq!(c.policy.request_timeout, None);
        assert_eq!(c.models[0].wake.timeout, Duration::from_secs(600));
        assert_eq!(c.models[0].sleep.timeout, Duration::from_secs(120));
        assert_eq!(c.models[0].alive.timeout, Duration::from_secs(10));
        assert_eq!(c.max_body_bytes, 64 << 20);
        assert_eq!(c.limits.max_queued_requests, 1024);
        assert_eq!(c.limits.max_queued_body_bytes, 1 << 30);
        assert_eq!(c.limits.max_body_bytes_in_memory, 2 << 30);
        assert_eq!(c.limits.upstream_first_byte_timeout, None);
        assert_eq!(c.policy.hook_kill_grace, Duration::from_secs(5));
        assert_eq!(c.models[0].sleep.kill_grace, Duration::from_secs(5));
    }

    #[test]
    fn hook_kill_grace_takes_fractions_and_must_be_positive() {
        let c = yaml(&format!("{TWO}policy: {{hook_kill_grace_secs: 0.25}}\n")).expect("valid");
        assert_eq!(c.policy.hook_kill_grace, Duration::from_millis(250));
        assert!(c.models.iter().all(|m| m.wake.kill_grace == Duration::from_millis(250)));
        let c = yaml(&format!("{TWO}policy: {{hook_kill_grace_secs: 18446744073709551615}}\n")).expect("capped");
        assert_eq!(c.models[1].alive.kill_grace, Duration::from_secs(MAX_SECS));
        for bad in ["0", "0.0", "-1", ".nan", "-.inf", "'5'"] {
            let e = yaml(&format!("{TWO}policy: {{hook_kill_grace_secs: {bad}}}\n")).expect_err(bad);
            assert!(e.to_string().contains("hook_kill_grace_secs"), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_unknown_key_with_its_name_and_line() {
        let e = yaml(&format!("{TWO}polcy: {{}}\n")).expect_err("unknown key");
        let msg = e.to_string();
        assert!(msg.contains("polcy") && msg.contains("line"), "{msg}");
    }

    #[test]
    fn rejects_what_serde_cannot() {
        let cases = [
            ("models: {}\n", "at least one model"),
            ("port: 1\n", "at least one model"),
            (
                "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n  b: {port: 1, wake: w, sleep: s, alive: a}\n",
                "models.b.port",
            ),
            ("models:\n  a: {port: 0, wake: w, sleep: s, alive: a}\n", "models.a.port"),
            ("models:\n  a: {port: 1, wake: ' ', sleep: s, alive: a}\n", "models.a.wake"),
            (
                "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\nlimits: {max_connections: 0}\n",
                "limits.max_connections",
            ),
            ("models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\nlimits: {max_conections: 5}\n", "max_conections"),
            (
                "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n  a: {port: 2, wake: w, sleep: s, alive: a}\n",
                "duplicate model",
            ),
        ];
        for (text, needle) in cases {
            let msg = yaml(text).expect_err(text).to_string();
            assert!(msg.contains(needle), "{text:?} gave {msg:?}");
        }
    }

    #[test]
    fn max_body_bytes_in_memory_is_at_least_max_body_bytes() {
        let e = yaml(&format!("{TWO}max_body_bytes: 1000\nlimits: {{max_body_bytes_in_memory: 999}}\n"))
            .expect_err("too small");
        assert!(e.to_string().contains("limits.max_body_bytes_in_memory"), "{e}");
        let c =
            yaml(&format!("{TWO}max_body_bytes: 1000\nlimits: {{max_body_bytes_in_memory: 1000}}\n")).expect("valid");
        assert_eq!(c.limits.max_body_bytes_in_memory, 1000);
        // The default follows the queue's bound, and never refuses one largest body.
        let c = yaml(&format!("{TWO}limits: {{max_queued_body_bytes: 100}}\n")).expect("valid");
        assert_eq!(c.limits.max_body_bytes_in_memory, 64 << 20);
        let c = yaml(&format!("{TWO}limits: {{max_queued_body_bytes: 1073741824}}\n")).expect("valid");
        assert_eq!(c.limits.max_body_bytes_in_memory, 2 << 30);
    }

    #[test]
    fn huge_values_are_capped_or_rejected() {
        let text = format!("{TWO}policy: {{wake_timeout_secs: 18446744073709551615}}\nlimits: {{header_read_timeout_secs: 18446744073709551615}}\n");
        let c = yaml(&text).expect("valid");
        let ten_years = Duration::from_secs(MAX_SECS);
        assert_eq!(c.models[0].wake.timeout, ten_years);
        assert!(std::time::Instant::now().checked_add(c.limits.header_read_timeout).is_some());
        let e = yaml(&format!("{TWO}limits: {{max_connections: 18446744073709551615}}\n")).expect_err("too many");
        assert!(e.to_string().contains("limits.max_connections"), "{e}");
    }

    #[test]
    fn parses_json_in_order() {
        let text = r#"{"models": {"z": {"port": 9, "wake": "w", "sleep": "s", "alive": "a"},
                      "y": {"port": 8, "wake": "w", "sleep": "s", "alive": "a"}},
                      "policy": {"request_timeout_secs": 5, "on_sleep_failure": "continue"}}"#;
        let c = Config::parse(text, Format::Json, PathBuf::from(".")).expect("valid");
        assert_eq!(c.models[0].name, "z");
        assert_eq!(c.policy.request_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.policy.on_sleep_failure, OnSleepFailure::Continue);
    }

    #[test]
    fn idle_and_alive_intervals_resolve_per_model() {
        let text = "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n  b: {port: 2, wake: w, sleep: s, alive: a, idle_sleep_secs: 0, alive_interval_secs: 7}\npolicy: {idle_sleep_secs: 30, preload: b}\n";
        let c = yaml(text).expect("valid");
        assert_eq!(c.models[0].idle_sleep, Some(Duration::from_secs(30)));
        assert_eq!(c.models[1].idle_sleep, None);
        assert_eq!(c.models[0].alive_interval, None);
        assert_eq!(c.models[1].alive_interval, Some(Duration::from_secs(7)));
        assert_eq!(c.policy.preload.as_deref(), Some("b"));
        let e = yaml(&format!("{TWO}policy: {{preload: zz}}\n")).expect_err("unknown preload");
        assert!(e.to_string().contains("policy.preload"), "{e}");
    }

    #[test]
    fn restart_needed_names_the_listen_address_and_connection_limits() {
        let a = yaml(TWO).expect("valid");
        let b = yaml(&format!("{TWO}port: 9\nmax_body_bytes: 5\nlimits: {{max_connections: 3}}\n")).expect("valid");
        assert_eq!(a.restart_needed(&b), ["port", "limits.max_connections"]);
        assert!(a.restart_needed(&a).is_empty());
    }

    /// Three models, `a` and `b` with the given extra keys (flow style,
    /// e.g. `size: 2`), and top-level `extra`.
    fn sized(a: &str, b: &str, extra: &str) -> Result<Config, ConfigError> {
        let sep = |keys: &str| if keys.is_empty() { String::new() } else { format!(", {keys}") };
        yaml(&format!(
            "models:\n  a: {{port: 1, wake: w, sleep: s, alive: a{}}}\n  b: {{port: 2, wake: w, sleep: s, alive: a{}}}\n  c: {{port: 3, wake: w, sleep: s, alive: a}}\n{extra}",
            sep(a),
            sep(b)
        ))
    }

    #[test]
    fn capacity_is_off_and_models_take_one_unpinned_by_default() {
        let c = sized("", "", "").expect("valid");
        assert_eq!(c.capacity, None);
        assert!(c.models.iter().all(|m| m.size == 1.0 && !m.pinned));
        let c = sized("size: 64, pinned: true", "size: 8.5", "capacity: 80\n").expect("valid");
        assert_eq!(c.capacity, Some(80.0));
        assert_eq!((c.models[0].size, c.models[0].pinned), (64.0, true));
        assert_eq!((c.models[1].size, c.models[1].pinned), (8.5, false));
        assert_eq!((c.models[2].size, c.models[2].pinned), (1.0, false));
        // Integers and fractions both; a size of 0 is allowed (it never
        // needs room), and so is a model exactly as large as the budget.
        let c = sized("size: 0", "size: 2", "capacity: 2\n").expect("valid");
        assert_eq!((c.capacity, c.models[0].size), (Some(2.0), 0.0));
        let c = sized("size: 0.25", "size: 0.5", "capacity: 1.75\n").expect("valid");
        assert_eq!((c.capacity, c.models[0].size), (Some(1.75), 0.25));
        // The same from JSON.
        let text = r#"{"capacity": 3, "models": {"z": {"port": 9, "wake": "w", "sleep": "s", "alive": "a", "size": 2, "pinned": true}}}"#;
        let c = Config::parse(text, Format::Json, PathBuf::from(".")).expect("valid");
        assert_eq!((c.capacity, c.models[0].size, c.models[0].pinned), (Some(3.0), 2.0, true));
    }

    #[test]
    fn capacity_must_be_a_finite_number_above_zero() {
        for bad in ["0", "0.0", "-1", "-0.5", ".nan", ".inf", "-.inf", "'2'", "two", "[2]"] {
            let e = sized("", "", &format!("capacity: {bad}\n")).expect_err(bad);
            assert!(e.to_string().contains("capacity"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_size_must_be_finite_not_negative_and_fit_the_capacity() {
        for bad in ["-1", "-0.001", ".nan", ".inf", "-.inf", "'1'", "big"] {
            let e = sized(&format!("size: {bad}"), "", "capacity: 4\n").expect_err(bad);
            assert!(e.to_string().contains("models.a.size"), "{bad}: {e}");
            // Checked without a capacity too: a bad number is never kept.
            let e = sized("", &format!("size: {bad}"), "").expect_err(bad);
            assert!(e.to_string().contains("models.b.size"), "{bad} without capacity: {e}");
        }
        let e = sized("", "size: 4.5", "capacity: 4\n").expect_err("larger than the capacity");
        let msg = e.to_string();
        assert!(msg.contains("models.b.size") && msg.contains("larger than the capacity"), "{msg}");
    }

    #[test]
    fn the_pinned_models_must_fit_together() {
        let e = sized("size: 3, pinned: true", "size: 2, pinned: true", "capacity: 4\n").expect_err("5 > 4");
        let msg = e.to_string();
        assert!(msg.contains("capacity") && msg.contains("pinned") && msg.contains("a, b"), "{msg}");
        // Exactly full is fine, fractions with slack included.
        sized("size: 2, pinned: true", "size: 2, pinned: true", "capacity: 4\n").expect("4 = 4");
        sized("size: 0.1, pinned: true", "size: 1.1, pinned: true", "capacity: 1.2\n").expect("0.1 + 1.1 = 1.2");
        let e = sized("pinned: yes-please", "", "capacity: 4\n").expect_err("not a boolean");
        assert!(e.to_string().contains("pinned"), "{e}");
    }

    /// Without `capacity` one model runs at a time, so a pinned model (never
    /// evicted) keeps every other model from ever waking: each request for
    /// one gets 503 "does not fit in the capacity (1) beside the pinned
    /// models" (seen end to end): so it is a config error naming the key.
    #[test]
    fn pinned_without_capacity_is_rejected() {
        let e = sized("pinned: true", "", "").expect_err("pinned needs a capacity");
        assert!(e.to_string().contains("models.a.pinned"), "{e}");
    }

    #[test]
    fn a_name_used_twice_as_a_model_or_an_alias_is_an_error_naming_both() {
        let c = sized("aliases: [x, y]", "aliases: ['org/z']", "").expect("valid");
        assert_eq!(c.models[0].aliases, ["x", "y"]);
        assert!(c.list_aliases);
        for (a, b, needles) in [
            ("aliases: [x]", "aliases: [x]", &["models.b.aliases[0]", "`x`", "alias of model `a`"][..]),
            ("aliases: [b]", "", &["models.a.aliases[0]", "`b`", "model `b`"]),
            ("", "aliases: [c]", &["models.b.aliases[0]", "`c`", "model `c`"]),
            ("aliases: [x, x]", "", &["models.a.aliases[1]", "alias of model `a`"]),
            ("aliases: [a]", "", &["models.a.aliases[0]", "model `a`"]),
            ("aliases: ['']", "", &["models.a.aliases[0]", "non-empty"]),
        ] {
            let msg = sized(a, b, "").expect_err(a).to_string();
            assert!(needles.iter().all(|n| msg.contains(n)), "{a} / {b}: {msg}");
        }
        let c = sized("", "", "list_aliases: false\n").expect("valid");
        assert!(!c.list_aliases);
    }

    #[test]
    fn upstream_model_is_kept_escaped_and_max_in_flight_is_at_least_one() {
        let c = sized("upstream_model: 'org/m \"q\"'", "max_in_flight: 2", "").expect("valid");
        let up = c.models[0].upstream_model.clone().expect("upstream_model");
        assert_eq!((up.name.as_str(), up.json.as_str()), ("org/m \"q\"", "org/m \\\"q\\\""));
        assert_eq!((c.models[0].max_in_flight, c.models[1].max_in_flight), (None, Some(2)));
        let e = sized("", "max_in_flight: 0", "").expect_err("0");
        assert!(e.to_string().contains("models.b.max_in_flight"), "{e}");
        let e = sized("upstream_model: ' '", "", "").expect_err("blank");
        assert!(e.to_string().contains("models.a.upstream_model"), "{e}");
    }

    #[test]
    fn format_follows_extension() {
        assert_eq!(Format::from_path(Path::new("a.yml")).ok(), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("a.json")).ok(), Some(Format::Json));
        assert!(Format::from_path(Path::new("a.toml")).is_err());
    }
}

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
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::backend::Backend;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Models in file order; a model's index here is its id everywhere.
    pub models: Vec<ModelConfig>,
    /// Switching policy.
    pub policy: Policy,
    /// Address to listen on: an IP address or a name resolved at start
    /// (`localhost`).
    pub host: String,
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
    /// The environment variables `${VAR}` read while loading, with their
    /// values (so `--check --print` can mask secret ones).
    pub env_used: Vec<crate::substitute::Used>,
    /// `/v1/models` lists each alias as a model of its own.
    pub list_aliases: bool,
}

/// One model: its backend and its three hooks.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The name clients send as `model`.
    pub name: String,
    /// Where its backend listens (`port` on 127.0.0.1, or `url`).
    pub backend: Backend,
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
    /// `stream_wait_feedback`: how often a streaming request that waits
    /// for this model gets an SSE comment (`None`: off; the request waits
    /// silently as any other).
    pub stream_wait_feedback: Option<Duration>,
    /// Variables added to its hooks' environment (`env`), in file order.
    pub env: Vec<(String, String)>,
    /// The directory its hooks run in (`dir`, relative to the config
    /// file's; default: the config file's directory).
    pub dir: PathBuf,
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
    /// At shutdown, after draining, run the sleep hook of every model
    /// still awake (`policy.sleep_on_shutdown`).
    pub sleep_on_shutdown: bool,
    /// What a model without its own setting takes: the policy's values
    /// with the defaults filled in.
    pub model_defaults: ModelDefaults,
}

/// The policy's per-model settings (`policy.wake_timeout_secs`, ...), each
/// a model's unless it sets its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDefaults {
    /// `policy.wake_timeout_secs`.
    pub wake_timeout: Duration,
    /// `policy.sleep_timeout_secs`.
    pub sleep_timeout: Duration,
    /// `policy.alive_timeout_secs`.
    pub alive_timeout: Duration,
    /// `policy.idle_sleep_secs` (`None`: off).
    pub idle_sleep: Option<Duration>,
    /// `policy.alive_interval_secs` (`None`: off).
    pub alive_interval: Option<Duration>,
    /// `policy.max_wait_secs`.
    pub max_wait: Duration,
    /// `policy.stream_wait_feedback`.
    pub stream_wait_feedback: bool,
    /// `policy.stream_wait_feedback_secs`: the comments' interval, for
    /// every model that has feedback on.
    pub stream_wait_feedback_every: Duration,
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
const DEFAULT_STREAM_WAIT_FEEDBACK_SECS: f64 = 3.0;
/// The scheduler's default wait bound: two minutes, longer than most wakes
/// (so a bound never forces a switch a wake could not meet) and short
/// enough that nothing starves out of the box.
pub const DEFAULT_MAX_WAIT_SECS: u64 = 120;
const DEFAULT_UPSTREAM_IDLE_SECS: u64 = 4;

/// A number of seconds as the file gives it (fractions allowed); checked
/// and turned into a `Duration` by [`duration`].
type Secs = Option<f64>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    models: Option<RawModels>,
    #[serde(default)]
    policy: RawPolicy,
    host: Option<String>,
    port: Option<u16>,
    max_body_bytes: Option<u64>,
    shutdown_grace_secs: Secs,
    upstream_idle_timeout_secs: Secs,
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
    header_read_timeout_secs: Secs,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    body_read_timeout_secs: Secs,
    max_connections: Option<usize>,
    upstream_connect_timeout_secs: Secs,
    upstream_first_byte_timeout_secs: Secs,
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
    let timeout = |key: &str, value: Secs, default: u64| {
        Ok::<_, ConfigError>(positive_duration(&format!("limits.{key}"), value)?.unwrap_or(secs(default)))
    };
    let usize_of = |v: Option<usize>| v.map(|n| n as u64);
    let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(Limits {
        header_read_timeout: timeout("header_read_timeout_secs", raw.header_read_timeout_secs, 30)?,
        max_header_bytes: as_usize(positive("max_header_bytes", usize_of(raw.max_header_bytes), 64 * 1024)?),
        max_headers: as_usize(positive("max_headers", usize_of(raw.max_headers), 100)?),
        body_read_timeout: timeout("body_read_timeout_secs", raw.body_read_timeout_secs, 120)?,
        max_connections: match as_usize(positive("max_connections", usize_of(raw.max_connections), 10_000)?) {
            n if n > MAX_CONNECTIONS => {
                return Err(err(format!("limits.max_connections: at most {MAX_CONNECTIONS}")));
            }
            n => n,
        },
        upstream_connect_timeout: timeout("upstream_connect_timeout_secs", raw.upstream_connect_timeout_secs, 5)?,
        upstream_first_byte_timeout: positive_duration(
            "limits.upstream_first_byte_timeout_secs",
            raw.upstream_first_byte_timeout_secs,
        )?,
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
    port: Option<u16>,
    url: Option<String>,
    wake: String,
    sleep: String,
    alive: String,
    wake_timeout_secs: Secs,
    sleep_timeout_secs: Secs,
    alive_timeout_secs: Secs,
    idle_sleep_secs: Secs,
    alive_interval_secs: Secs,
    size: Option<f64>,
    #[serde(default)]
    pinned: bool,
    weight: Option<f64>,
    max_wait_secs: Secs,
    stream_wait_feedback: Option<bool>,
    #[serde(default)]
    env: RawEnv,
    dir: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    upstream_model: Option<String>,
    max_in_flight: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    request_timeout_secs: Secs,
    drain_before_switch: Option<bool>,
    drain_timeout_secs: Secs,
    min_active_secs: Secs,
    on_sleep_failure: Option<OnSleepFailure>,
    wake_timeout_secs: Secs,
    sleep_timeout_secs: Secs,
    alive_timeout_secs: Secs,
    idle_sleep_secs: Secs,
    alive_interval_secs: Secs,
    preload: Option<String>,
    hook_kill_grace_secs: Secs,
    scheduler: Option<Scheduler>,
    max_wait_secs: Secs,
    stream_wait_feedback: Option<bool>,
    /// Seconds, fractions allowed.
    stream_wait_feedback_secs: Option<f64>,
    sleep_on_shutdown: Option<bool>,
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

/// `models.<name>.env`: an ordered map of variable to value; a value may
/// be written as a number or a boolean (`THREADS: 4`) and is kept as text.
#[derive(Default)]
struct RawEnv(Vec<(String, String)>);

impl<'de> Deserialize<'de> for RawEnv {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvMap;
        impl<'de> Visitor<'de> for EnvMap {
            type Value = RawEnv;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from variable name to value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawEnv, E> {
                Ok(RawEnv::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEnv, A::Error> {
                let mut vars = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    vars.push((name, map.next_value::<EnvValue>()?.0));
                }
                Ok(RawEnv(vars))
            }
        }
        d.deserialize_map(EnvMap)
    }
}

/// One `env` value: text, a number or a boolean, as text.
struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl Visitor<'_> for Scalar {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<EnvValue, E> {
                Ok(EnvValue(String::new()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(Scalar)
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

    /// Parses and validates `text`, with `${VAR}` read from the process's
    /// environment; hooks will run in `base_dir`.
    pub fn parse(text: &str, format: Format, base_dir: PathBuf) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, format, base_dir, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with `${VAR}` read through `lookup`.
    pub fn parse_with_env(
        text: &str,
        format: Format,
        base_dir: PathBuf,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: serde_yaml::Value = match format {
            Format::Yaml => serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?,
            Format::Json => serde_json::from_str(text).map_err(|e| err(e.to_string()))?,
        };
        let substituted = crate::substitute::substitute(&mut tree, lookup, &takes).map_err(err)?;
        // Nothing substituted: the text is read as it always was (its
        // errors name the key and the line).
        let raw: RawConfig = if substituted.changed.is_empty() {
            match format {
                Format::Yaml => serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?,
                Format::Json => serde_json::from_str(text).map_err(|e| err(e.to_string()))?,
            }
        } else {
            crate::substitute::as_text_where_taken(&mut tree, &takes);
            RawConfig::deserialize(&tree).map_err(|_| located(&tree, text, format))?
        };
        let mut config = validate(raw, base_dir)?;
        config.env_used = substituted.used;
        Ok(config)
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
        let changed = [
            self.host != new.host,
            self.port != new.port,
            self.workers != new.workers,
            a.header_read_timeout != b.header_read_timeout,
            a.max_header_bytes != b.max_header_bytes,
            a.max_headers != b.max_headers,
            a.max_connections != b.max_connections,
            a.h2_max_concurrent_streams != b.h2_max_concurrent_streams,
            a.h2_max_header_list_bytes != b.h2_max_header_list_bytes,
            a.h2_max_pending_reset_streams != b.h2_max_pending_reset_streams,
        ];
        RESTART_KEYS.into_iter().zip(changed).filter_map(|(key, changed)| changed.then_some(key)).collect()
    }
}

/// What each key's value is read as: a `${VAR}` at a text key stays a
/// string even when it reads as a number (an API key of digits).
fn takes(path: &crate::substitute::KeyPath) -> crate::substitute::Takes {
    use crate::substitute::Takes;
    let keys: Vec<Option<&str>> = path.keys().collect();
    match keys.as_slice() {
        [Some("api_keys" | "admin_api_keys"), None] => Takes::Text,
        [Some("host")] | [Some("policy"), Some("preload" | "scheduler" | "on_sleep_failure")] => Takes::OptionalText,
        [Some("models"), Some(_), Some("env"), Some(_)] => Takes::Text,
        [Some("models"), Some(_), Some("wake" | "sleep" | "alive")] => Takes::Text,
        [Some("models"), Some(_), Some(key)] if !key.ends_with("_secs") && !NUMERIC_MODEL_KEYS.contains(key) => {
            Takes::OptionalText
        }
        _ => Takes::Value,
    }
}

/// A model's keys that take a number or a boolean (besides `*_secs`).
const NUMERIC_MODEL_KEYS: [&str; 4] = ["port", "size", "pinned", "weight"];

/// The error of deserialising the substituted tree, with the key and line
/// it is about when they can be found (the text deserialiser tracks both,
/// the tree's neither): the same error read from the file's text has them;
/// else (the text fails elsewhere first, at a `${VAR}` not substituted
/// there, or the error is about a substituted value) the tree written out
/// again and read back names the key.
fn located(tree: &serde_yaml::Value, text: &str, format: Format) -> ConfigError {
    let tree_error = match serde_yaml::from_value::<RawConfig>(tree.clone()) {
        Err(e) => e.to_string(),
        Ok(_) => return err("the config could not be read"),
    };
    let text_error = match format {
        Format::Yaml => serde_yaml::from_str::<RawConfig>(text).err().map(|e| e.to_string()),
        Format::Json => serde_json::from_str::<RawConfig>(text).err().map(|e| e.to_string()),
    };
    match text_error {
        Some(e) if e.contains(&tree_error) => err(e),
        _ => {
            let rewritten = serde_yaml::to_string(tree).unwrap_or_default();
            let keyed = match serde_yaml::from_str::<RawConfig>(&rewritten) {
                Err(e) => match e.location() {
                    Some(at) => e.to_string().replace(&format!(" at line {} column {}", at.line(), at.column()), ""),
                    None => e.to_string(),
                },
                Ok(_) => tree_error,
            };
            err(format!("{keyed} (after substituting environment variables)"))
        }
    }
}

/// The settings that apply only after a restart.
pub const RESTART_KEYS: [&str; 10] = [
    "host",
    "port",
    "workers",
    "limits.header_read_timeout_secs",
    "limits.max_header_bytes",
    "limits.max_headers",
    "limits.max_connections",
    "limits.h2_max_concurrent_streams",
    "limits.h2_max_header_list_bytes",
    "limits.h2_max_pending_reset_streams",
];

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
    let mut endpoints = HashSet::new();
    let mut models = Vec::with_capacity(raw_models.len());
    for (name, m) in raw_models {
        let model = validate_model(name, m, &policy, &base_dir, &mut endpoints, &models)?;
        models.push(model);
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(err("max_body_bytes: must be at least 1"));
    }
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
    let shutdown_grace = duration("shutdown_grace_secs", raw.shutdown_grace_secs)?;
    let upstream_idle_timeout = duration("upstream_idle_timeout_secs", raw.upstream_idle_timeout_secs)?;
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
        host: validate_host(raw.host)?,
        port: raw.port.unwrap_or(DEFAULT_PORT),
        max_body_bytes,
        shutdown_grace: shutdown_grace.unwrap_or(secs(DEFAULT_SHUTDOWN_GRACE_SECS)),
        upstream_idle_timeout: upstream_idle_timeout.unwrap_or(secs(DEFAULT_UPSTREAM_IDLE_SECS)),
        workers,
        base_dir,
        env_used: Vec::new(),
    })
}

/// `host`: an IP address (`0.0.0.0`, `::1`, `[::1]`) or a host name
/// (`localhost`), resolved when llmux starts.
fn validate_host(host: Option<String>) -> Result<String, ConfigError> {
    let Some(host) = host else { return Ok("0.0.0.0".to_owned()) };
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&host);
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bare.to_owned());
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if bare.is_empty() || bare.len() > 253 || !bare.chars().all(name_char) {
        return Err(err(format!("host: `{host}` is neither an IP address nor a host name")));
    }
    Ok(bare.to_owned())
}

fn validate_policy(p: &RawPolicy) -> Result<Policy, ConfigError> {
    let timeout = |key: &str, value: Secs, default: u64| {
        Ok::<_, ConfigError>(positive_duration(&format!("policy.{key}"), value)?.unwrap_or(secs(default)))
    };
    let model_defaults = ModelDefaults {
        wake_timeout: timeout("wake_timeout_secs", p.wake_timeout_secs, DEFAULT_WAKE_TIMEOUT_SECS)?,
        sleep_timeout: timeout("sleep_timeout_secs", p.sleep_timeout_secs, DEFAULT_SLEEP_TIMEOUT_SECS)?,
        alive_timeout: timeout("alive_timeout_secs", p.alive_timeout_secs, DEFAULT_ALIVE_TIMEOUT_SECS)?,
        idle_sleep: every("policy.idle_sleep_secs", p.idle_sleep_secs)?.flatten(),
        alive_interval: every("policy.alive_interval_secs", p.alive_interval_secs)?.flatten(),
        max_wait: timeout("max_wait_secs", p.max_wait_secs, DEFAULT_MAX_WAIT_SECS)?,
        stream_wait_feedback: p.stream_wait_feedback.unwrap_or(false),
        stream_wait_feedback_every: feedback_interval(p.stream_wait_feedback_secs)?,
    };
    Ok(Policy {
        request_timeout: duration("policy.request_timeout_secs", p.request_timeout_secs)?,
        drain_before_switch: p.drain_before_switch.unwrap_or(true),
        drain_timeout: duration("policy.drain_timeout_secs", p.drain_timeout_secs)?,
        min_active: duration("policy.min_active_secs", p.min_active_secs)?.unwrap_or_default(),
        on_sleep_failure: p.on_sleep_failure.unwrap_or(OnSleepFailure::Abort),
        preload: p.preload.clone(),
        hook_kill_grace: positive_duration("policy.hook_kill_grace_secs", p.hook_kill_grace_secs)?
            .unwrap_or(Duration::from_secs_f64(DEFAULT_HOOK_KILL_GRACE_SECS)),
        scheduler: p.scheduler.unwrap_or(Scheduler::CostAware),
        sleep_on_shutdown: p.sleep_on_shutdown.unwrap_or(false),
        model_defaults,
    })
}

fn validate_model(
    name: String,
    m: RawModel,
    policy: &Policy,
    base_dir: &Path,
    endpoints: &mut HashSet<(String, u16)>,
    earlier: &[ModelConfig],
) -> Result<ModelConfig, ConfigError> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(err(format!("models.{name:?}: a model name must be non-empty text")));
    }
    let backend = model_backend(&name, m.port, m.url.as_deref(), endpoints, earlier)?;
    let key = |k: &str| format!("models.{name}.{k}");
    let d = &policy.model_defaults;
    let hook = |kind: &str, script: String, own: Secs, default: Duration| {
        if script.trim().is_empty() {
            return Err(err(format!("models.{name}.{kind}: the hook must not be empty")));
        }
        let timeout = positive_duration(&key(&format!("{kind}_timeout_secs")), own)?.unwrap_or(default);
        Ok(Hook { script, timeout, kill_grace: policy.hook_kill_grace })
    };
    // A model's own setting wins over the policy's; 0 turns it off.
    let idle_sleep = every(&key("idle_sleep_secs"), m.idle_sleep_secs)?.unwrap_or(d.idle_sleep);
    let alive_interval = every(&key("alive_interval_secs"), m.alive_interval_secs)?.unwrap_or(d.alive_interval);
    Ok(ModelConfig {
        idle_sleep,
        alive_interval,
        wake: hook("wake", m.wake, m.wake_timeout_secs, d.wake_timeout)?,
        sleep: hook("sleep", m.sleep, m.sleep_timeout_secs, d.sleep_timeout)?,
        alive: hook("alive", m.alive, m.alive_timeout_secs, d.alive_timeout)?,
        size: model_size(&name, m.size)?,
        pinned: m.pinned,
        weight: model_weight(&name, m.weight)?,
        max_wait: positive_duration(&key("max_wait_secs"), m.max_wait_secs)?.unwrap_or(d.max_wait),
        stream_wait_feedback: m
            .stream_wait_feedback
            .unwrap_or(d.stream_wait_feedback)
            .then_some(d.stream_wait_feedback_every),
        env: model_env(&name, m.env)?,
        dir: model_dir(&name, m.dir, base_dir)?,
        upstream_model: upstream_model(&name, m.upstream_model)?,
        max_in_flight: match m.max_in_flight {
            Some(0) => return Err(err(format!("models.{name}.max_in_flight: must be at least 1"))),
            n => n,
        },
        aliases: m.aliases,
        backend,
        name,
    })
}

/// `policy.stream_wait_feedback_secs`: at least 0.1 s (fractions allowed),
/// at most an hour; 3 s if absent (below the 5 to 60 s after which
/// proxies and clients commonly give up on a silent stream).
fn feedback_interval(secs: Option<f64>) -> Result<Duration, ConfigError> {
    let secs = secs.unwrap_or(DEFAULT_STREAM_WAIT_FEEDBACK_SECS);
    match (0.1..=3600.0).contains(&secs) {
        true => Ok(Duration::from_secs_f64(secs)),
        false => Err(err("policy.stream_wait_feedback_secs: must be a number of seconds from 0.1 to 3600")),
    }
}

/// `models.<name>.env`: names a shell can use, values without NUL bytes;
/// `LLMUX_MODEL`, `LLMUX_PORT` and `LLMUX_UPSTREAM` are llmux's to set.
fn model_env(name: &str, env: RawEnv) -> Result<Vec<(String, String)>, ConfigError> {
    for (var, value) in &env.0 {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if var.is_empty() || var.starts_with(|c: char| c.is_ascii_digit()) || !var.chars().all(word) {
            return Err(err(format!(
                "models.{name}.env: `{var}` is not a variable name (letters, digits and _, not starting with a digit)"
            )));
        }
        if var == "LLMUX_MODEL" || var == "LLMUX_PORT" || var == "LLMUX_UPSTREAM" {
            return Err(err(format!("models.{name}.env.{var}: set by llmux for every hook")));
        }
        if value.contains('\0') {
            return Err(err(format!("models.{name}.env.{var}: a value cannot hold a NUL byte")));
        }
    }
    Ok(env.0)
}

/// `models.<name>.dir`: relative to the config file's directory; that
/// directory if absent.
fn model_dir(name: &str, dir: Option<String>, base_dir: &Path) -> Result<PathBuf, ConfigError> {
    match dir {
        None => Ok(base_dir.to_path_buf()),
        Some(d) if d.trim().is_empty() || d.contains('\0') => {
            Err(err(format!("models.{name}.dir: must be a directory path")))
        }
        Some(d) => Ok(base_dir.join(d)),
    }
}

/// `models.<name>.port` or `.url`, exactly one; no two models on the same
/// host and port.
fn model_backend(
    name: &str,
    port: Option<u16>,
    url: Option<&str>,
    endpoints: &mut HashSet<(String, u16)>,
    earlier: &[ModelConfig],
) -> Result<Backend, ConfigError> {
    let (key, backend) = match (port, url) {
        (Some(_), Some(_)) => return Err(err(format!("models.{name}: give `port` or `url`, not both"))),
        (None, None) => {
            return Err(err(format!(
                "models.{name}: needs `port` (a backend on 127.0.0.1) or `url` (http://HOST:PORT)"
            )))
        }
        (Some(0), None) => return Err(err(format!("models.{name}.port: must not be 0"))),
        (Some(port), None) => ("port", Backend::local(port)),
        (None, Some(url)) => ("url", Backend::from_url(url).map_err(|e| err(format!("models.{name}.url: {e}")))?),
    };
    if !endpoints.insert(backend.endpoint()) {
        let other = earlier.iter().find(|o| o.backend.endpoint() == backend.endpoint()).map_or("", |o| o.name.as_str());
        let (host, port) = backend.endpoint();
        return Err(err(format!("models.{name}.{key}: port {port} on {host} is already used by model `{other}`")));
    }
    Ok(backend)
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

/// `key`'s number of seconds (fractions allowed) as a `Duration`: finite,
/// at least 0, at most ten years.
fn duration(key: &str, given: Secs) -> Result<Option<Duration>, ConfigError> {
    let Some(s) = given else { return Ok(None) };
    if !s.is_finite() || s < 0.0 {
        return Err(err(format!("{key}: must be a number of seconds of at least 0, not {s}")));
    }
    if s > MAX_SECS as f64 {
        return Err(err(format!("{key}: {s} seconds is more than ten years (at most {MAX_SECS})")));
    }
    Ok(Some(Duration::from_secs_f64(s)))
}

/// [`duration`], which must also be above 0 (a timeout).
fn positive_duration(key: &str, given: Secs) -> Result<Option<Duration>, ConfigError> {
    match duration(key, given)? {
        Some(d) if d.is_zero() => Err(err(format!("{key}: must be a number of seconds greater than 0"))),
        d => Ok(d),
    }
}

/// An interval where 0 turns the feature off: `None` if not given,
/// `Some(None)` for off.
fn every(key: &str, given: Secs) -> Result<Option<Option<Duration>>, ConfigError> {
    Ok(duration(key, given)?.map(|d| (!d.is_zero()).then_some(d)))
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
        let c = yaml(&format!("{TWO}policy: {{hook_kill_grace_secs: 315360000}}\n")).expect("ten years");
        assert_eq!(c.models[1].alive.kill_grace, Duration::from_secs(MAX_SECS));
        for bad in ["0", "0.0", "-1", ".nan", "-.inf", "'5'", "18446744073709551615"] {
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
                "duplicate entry with key \"a\"",
            ),
        ];
        for (text, needle) in cases {
            let msg = yaml(text).expect_err(text).to_string();
            assert!(msg.contains(needle), "{text:?} gave {msg:?}");
        }
    }

    #[test]
    fn a_model_has_a_port_or_a_url() {
        let c = yaml("models:\n  a: {url: 'http://gpu-1:8000/llm', wake: w, sleep: s, alive: a}\n  b: {port: 8000, wake: w, sleep: s, alive: a}\n  c: {url: 'http://gpu-2:8000', wake: w, sleep: s, alive: a}\n")
            .expect("valid");
        assert_eq!(c.models[0].backend, Backend::from_url("http://gpu-1:8000/llm").expect("url"));
        assert_eq!(c.models[1].backend, Backend::local(8000));
        let cases = [
            (
                "a: {port: 1, url: 'http://h:1', wake: w, sleep: s, alive: a}",
                "models.a: give `port` or `url`, not both",
            ),
            ("a: {wake: w, sleep: s, alive: a}", "models.a: needs `port`"),
            (
                "a: {url: 'https://h:1', wake: w, sleep: s, alive: a}",
                "models.a.url: `https://h:1`: https is not supported",
            ),
            ("a: {url: 'http://h:0', wake: w, sleep: s, alive: a}", "models.a.url"),
            ("a: {url: 5, wake: w, sleep: s, alive: a}", "url"),
        ];
        for (model, needle) in cases {
            let msg = yaml(&format!("models:\n  {model}\n")).expect_err(model).to_string();
            assert!(msg.contains(needle), "{model}: {msg}");
        }
    }

    #[test]
    fn no_two_models_share_a_host_and_port() {
        let twice = |a: &str, b: &str| {
            yaml(&format!(
                "models:\n  a: {{{a}, wake: w, sleep: s, alive: a}}\n  b: {{{b}, wake: w, sleep: s, alive: a}}\n"
            ))
        };
        let e = twice("port: 8001", "url: 'http://127.0.0.1:8001/v'").expect_err("the same endpoint");
        assert!(e.to_string().contains("models.b.url: port 8001 on 127.0.0.1 is already used by model `a`"), "{e}");
        let e = twice("url: 'http://GPU:80'", "url: 'http://gpu/other'").expect_err("the same endpoint");
        assert!(e.to_string().contains("models.b.url: port 80 on gpu"), "{e}");
        // The same port on other hosts is fine.
        twice("port: 8001", "url: 'http://127.0.0.2:8001'").expect("another address");
        twice("url: 'http://gpu-1:8001'", "url: 'http://gpu-2:8001'").expect("another host");
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
    fn huge_values_are_rejected_naming_the_key() {
        let c = yaml(&format!("{TWO}policy: {{wake_timeout_secs: 315360000}}\n")).expect("ten years is the most");
        assert_eq!(c.models[0].wake.timeout, Duration::from_secs(MAX_SECS));
        assert!(std::time::Instant::now().checked_add(c.models[0].wake.timeout).is_some());
        for (text, key) in [
            ("policy: {wake_timeout_secs: 18446744073709551615}\n", "policy.wake_timeout_secs"),
            ("limits: {header_read_timeout_secs: 315360001}\n", "limits.header_read_timeout_secs"),
            ("limits: {max_connections: 18446744073709551615}\n", "limits.max_connections"),
        ] {
            let e = yaml(&format!("{TWO}{text}")).expect_err(text);
            assert!(e.to_string().starts_with(key), "{text}: {e}");
        }
    }

    /// Every key given in seconds, with the path that names it.
    const SECS_KEYS: [(&str, &str); 20] = [
        ("policy", "request_timeout_secs"),
        ("policy", "drain_timeout_secs"),
        ("policy", "min_active_secs"),
        ("policy", "wake_timeout_secs"),
        ("policy", "sleep_timeout_secs"),
        ("policy", "alive_timeout_secs"),
        ("policy", "idle_sleep_secs"),
        ("policy", "alive_interval_secs"),
        ("policy", "hook_kill_grace_secs"),
        ("policy", "max_wait_secs"),
        ("models.a", "wake_timeout_secs"),
        ("models.a", "sleep_timeout_secs"),
        ("models.a", "alive_timeout_secs"),
        ("models.a", "idle_sleep_secs"),
        ("models.a", "alive_interval_secs"),
        ("models.a", "max_wait_secs"),
        ("limits", "header_read_timeout_secs"),
        ("limits", "body_read_timeout_secs"),
        ("limits", "upstream_connect_timeout_secs"),
        ("limits", "upstream_first_byte_timeout_secs"),
    ];

    /// One model `a` with `key: value` set at `section` (`policy`,
    /// `models.a`, `limits` or the top level, `""`).
    fn with_secs(section: &str, key: &str, value: &str) -> Result<Config, ConfigError> {
        let model = "port: 1, wake: w, sleep: s, alive: a";
        let text = match section {
            "models.a" => format!("models:\n  a: {{{model}, {key}: {value}}}\n"),
            "" => format!("models:\n  a: {{{model}}}\n{key}: {value}\n"),
            _ => format!("models:\n  a: {{{model}}}\n{section}: {{{key}: {value}}}\n"),
        };
        yaml(&text)
    }

    #[test]
    fn every_duration_takes_fractions() {
        let half = Duration::from_millis(500);
        let all: Vec<(&str, &str)> = SECS_KEYS
            .iter()
            .copied()
            .chain([("", "shutdown_grace_secs"), ("", "upstream_idle_timeout_secs")])
            .collect();
        for (section, key) in all {
            let c = with_secs(section, key, "0.5").unwrap_or_else(|e| panic!("{section}.{key}: {e}"));
            let (m, p, l) = (&c.models[0], &c.policy, &c.limits);
            let got = match key {
                "request_timeout_secs" => p.request_timeout,
                "drain_timeout_secs" => p.drain_timeout,
                "min_active_secs" => Some(p.min_active),
                "wake_timeout_secs" => Some(m.wake.timeout),
                "sleep_timeout_secs" => Some(m.sleep.timeout),
                "alive_timeout_secs" => Some(m.alive.timeout),
                "idle_sleep_secs" => m.idle_sleep,
                "alive_interval_secs" => m.alive_interval,
                "hook_kill_grace_secs" => Some(m.alive.kill_grace),
                "max_wait_secs" => Some(m.max_wait),
                "header_read_timeout_secs" => Some(l.header_read_timeout),
                "body_read_timeout_secs" => Some(l.body_read_timeout),
                "upstream_connect_timeout_secs" => Some(l.upstream_connect_timeout),
                "upstream_first_byte_timeout_secs" => l.upstream_first_byte_timeout,
                "shutdown_grace_secs" => Some(c.shutdown_grace),
                "upstream_idle_timeout_secs" => Some(c.upstream_idle_timeout),
                other => panic!("{other}"),
            };
            assert_eq!(got, Some(half), "{section}.{key}");
        }
        let c = with_secs("policy", "alive_timeout_secs", "1.25").expect("valid");
        assert_eq!(c.models[0].alive.timeout, Duration::from_millis(1250));
        assert_eq!(c.policy.model_defaults.alive_timeout, Duration::from_millis(1250));
    }

    #[test]
    fn bad_durations_are_errors_naming_the_key() {
        let all: Vec<(&str, &str)> = SECS_KEYS
            .iter()
            .copied()
            .chain([("", "shutdown_grace_secs"), ("", "upstream_idle_timeout_secs")])
            .collect();
        for (section, key) in all {
            let path = if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") };
            for bad in ["-1", "-0.5", ".nan", ".inf", "-.inf", "1e300", "315360000.5", "'5'", "[1]"] {
                let e = with_secs(section, key, bad).expect_err(&format!("{path}: {bad}")).to_string();
                assert!(e.contains(&path) || e.contains(key), "{path} = {bad}: {e}");
            }
        }
    }

    #[test]
    fn timeouts_must_be_above_zero_and_intervals_take_zero_for_off() {
        for (section, key) in
            SECS_KEYS.iter().filter(|(_, k)| k.contains("timeout") || k.contains("grace") || k.contains("max_wait"))
        {
            let zero = with_secs(section, key, "0");
            let allowed = ["request_timeout_secs", "drain_timeout_secs"].contains(key);
            assert_eq!(zero.is_ok(), allowed, "{section}.{key}: {:?}", zero.err());
            if !allowed {
                let e = with_secs(section, key, "0.0000000001").expect_err("rounds to 0").to_string();
                assert!(e.contains(key) && e.contains("greater than 0"), "{e}");
            }
        }
        let c = yaml("models:\n  a: {port: 1, wake: w, sleep: s, alive: a, idle_sleep_secs: 0}\n  b: {port: 2, wake: w, sleep: s, alive: a}\npolicy: {idle_sleep_secs: 2.5, min_active_secs: 0}\n").expect("valid");
        assert_eq!((c.models[0].idle_sleep, c.models[1].idle_sleep), (None, Some(Duration::from_millis(2500))));
        assert_eq!(c.policy.min_active, Duration::ZERO);
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        Config::parse_with_env(text, Format::Yaml, PathBuf::from("/base"), &lookup)
    }

    #[test]
    fn environment_variables_are_substituted_before_validation() {
        let text = "host: ${HOST}\nport: ${PORT}\napi_keys: ['${KEY}', '${NUM}']\nmodels:\n  a:\n    port: ${A_PORT:-8001}\n    wake: ./wake.sh --x ${KEY}\n    sleep: echo $$LLMUX_MODEL $${HOME}\n    alive: ${ALIVE}\n    alive_timeout_secs: ${T}\n    env: {N: '${NUM}'}\npolicy:\n  scheduler: ${SCHED}\n  drain_before_switch: ${DRAIN}\n";
        let vars = [
            ("HOST", "127.0.0.1"),
            ("PORT", "3123"),
            ("KEY", "sk-x"),
            ("NUM", "0042"),
            ("ALIVE", "true"),
            ("T", "0.5"),
            ("SCHED", "fifo"),
            ("DRAIN", "false"),
        ];
        let c = with_env(text, &vars).expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 3123));
        assert_eq!(c.api_keys, ["sk-x", "0042"]);
        let a = &c.models[0];
        assert_eq!(
            (a.backend.port(), a.wake.script.as_str(), a.sleep.script.as_str()),
            (8001, "./wake.sh --x sk-x", "echo $LLMUX_MODEL ${HOME}")
        );
        // A hook that is one word that reads as a boolean stays the text.
        assert_eq!(a.alive.script, "true");
        assert_eq!(a.alive.timeout, Duration::from_millis(500));
        assert_eq!(a.env, [("N".to_owned(), "0042".to_owned())]);
        assert_eq!((c.policy.scheduler, c.policy.drain_before_switch), (Scheduler::Fifo, false));
        let used: Vec<&str> = c.env_used.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(used, ["HOST", "PORT", "KEY", "NUM", "ALIVE", "T", "SCHED", "DRAIN"]);
        // Read as its text would be: unquoted numbers and booleans where
        // text is taken, numbers as model names, an empty env value.
        let text = "api_keys: [12345, '${KEY}']\nmodels:\n  7:\n    port: 1\n    wake: true\n    sleep: 1.5\n    alive: a\n    env: {E: }\n";
        let c = with_env(text, &vars).expect("valid");
        assert_eq!(c.api_keys, ["12345", "sk-x"]);
        let m = &c.models[0];
        assert_eq!((m.name.as_str(), m.wake.script.as_str(), m.sleep.script.as_str()), ("7", "true", "1.5"));
        assert_eq!(m.env, [("E".to_owned(), String::new())]);
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_the_key() {
        let text = "api_keys: ['${LLMUX_API_KEY}']\nmodels:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n";
        let e = with_env(text, &[]).expect_err("unset").to_string();
        assert!(e.starts_with("api_keys[0]: environment variable LLMUX_API_KEY is not set"), "{e}");
        // JSON too.
        let json = r#"{"models": {"a": {"port": 1, "wake": "${W}", "sleep": "s", "alive": "a"}}}"#;
        let e = Config::parse_with_env(json, Format::Json, PathBuf::from("."), &|_| None).expect_err("unset");
        assert!(e.to_string().starts_with("models.a.wake: environment variable W is not set"), "{e}");
        let c =
            Config::parse_with_env(json, Format::Json, PathBuf::from("."), &|_| Some("wake-it".into())).expect("set");
        assert_eq!(c.models[0].wake.script, "wake-it");
    }

    #[test]
    fn a_substituted_value_of_the_wrong_type_names_its_key() {
        let text = "port: ${PORT}\nmodels:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n";
        let e = with_env(text, &[("PORT", "abc")]).expect_err("not a port").to_string();
        assert!(e.starts_with("port: ") && e.contains("abc"), "{e}");
        let text = "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\npolicy: {scheduler: '${S}'}\n";
        let e = with_env(text, &[("S", "lifo")]).expect_err("no such scheduler").to_string();
        assert!(e.starts_with("policy.scheduler: ") && e.contains("lifo"), "{e}");
        // An error elsewhere still names its key (and its line when the
        // text fails on it too).
        let text = "port: ${PORT}\nmodels:\n  a: {port: 1, wake: w, sleep: s, alive: a, prot: 2}\n";
        let e = with_env(text, &[("PORT", "3000")]).expect_err("typo").to_string();
        assert!(e.starts_with("models.a: unknown field `prot`"), "{e}");
        let text = "host: ${H}\nmodels:\n  a: {port: 1, wake: w, sleep: s, alive: a, prot: 2}\n";
        let e = with_env(text, &[("H", "localhost")]).expect_err("typo").to_string();
        assert!(e.starts_with("models.a: unknown field `prot`") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn env_and_dir_of_a_model() {
        let text = "models:\n  a:\n    port: 1\n    wake: w\n    sleep: s\n    alive: a\n    dir: hooks/a\n    env: {THREADS: 4, FLAGS: '--jinja -c 4096', ON: true}\n  b: {port: 2, wake: w, sleep: s, alive: a, dir: /opt/b}\n  c: {port: 3, wake: w, sleep: s, alive: a}\n";
        let c = with_env(text, &[]).expect("valid");
        let env: Vec<(&str, &str)> = c.models[0].env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("THREADS", "4"), ("FLAGS", "--jinja -c 4096"), ("ON", "true")]);
        assert_eq!(c.models[0].dir, Path::new("/base/hooks/a"));
        assert_eq!(c.models[1].dir, Path::new("/opt/b"));
        assert_eq!(c.models[2].dir, Path::new("/base"));
        for (bad, needle) in [
            ("env: {LLMUX_PORT: 1}", "models.a.env.LLMUX_PORT"),
            ("env: {'A B': 1}", "models.a.env"),
            ("env: {'1A': 1}", "models.a.env"),
            ("env: {A: [1]}", "env"),
            ("env: [A]", "env"),
            ("dir: ''", "models.a.dir"),
        ] {
            let text = format!("models:\n  a: {{port: 1, wake: w, sleep: s, alive: a, {bad}}}\n");
            let e = with_env(&text, &[]).expect_err(bad).to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn host_is_an_address_or_a_name() {
        for (given, kept) in [
            ("localhost", "localhost"),
            ("127.0.0.1", "127.0.0.1"),
            ("'::1'", "::1"),
            ("'[::1]'", "::1"),
            ("llm.internal", "llm.internal"),
        ] {
            let c = yaml(&format!("{TWO}host: {given}\n")).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(c.host, kept);
        }
        assert_eq!(yaml(TWO).expect("valid").host, "0.0.0.0");
        for bad in ["''", "'a b'", "'http://x'", "'x:80'"] {
            let e = yaml(&format!("{TWO}host: {bad}\n")).expect_err(bad);
            assert!(e.to_string().starts_with("host:"), "{bad}: {e}");
        }
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
    fn stream_wait_feedback_is_off_by_default_and_a_model_overrides_the_policy() {
        let off = yaml(TWO).expect("valid");
        assert!(off.models.iter().all(|m| m.stream_wait_feedback.is_none()));
        let on = "models:\n  a: {port: 1, wake: w, sleep: s, alive: a}\n  b: {port: 2, wake: w, sleep: s, alive: a, stream_wait_feedback: false}\npolicy: {stream_wait_feedback: true}\n";
        let c = yaml(on).expect("valid");
        assert_eq!(c.models[0].stream_wait_feedback, Some(Duration::from_secs(3)));
        assert_eq!(c.models[1].stream_wait_feedback, None);
        let own = "models:\n  a: {port: 1, wake: w, sleep: s, alive: a, stream_wait_feedback: true}\npolicy: {stream_wait_feedback_secs: 0.5}\n";
        assert_eq!(yaml(own).expect("valid").models[0].stream_wait_feedback, Some(Duration::from_millis(500)));
        for bad in ["0", "0.01", "-1", "4000", ".nan"] {
            let text = format!("models:\n  a: {{port: 1, wake: w, sleep: s, alive: a}}\npolicy: {{stream_wait_feedback: true, stream_wait_feedback_secs: {bad}}}\n");
            let e = yaml(&text).expect_err(bad).to_string();
            assert!(e.contains("policy.stream_wait_feedback_secs"), "{bad}: {e}");
        }
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

//! The config as llmux resolved it: `${VAR}` substituted, defaults filled
//! in, each model's settings as it will use them, written back as a tree
//! of the file's own keys. `llmux --check --print` prints it (secrets
//! masked), and a reload compares two of them to name the keys that
//! changed.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::config::{Config, Limits, ModelConfig, OnSleepFailure, Policy, Scheduler};

/// What a masked secret is printed as.
pub const MASK: &str = "***";

/// The resolved config as YAML, with every secret shown as [`MASK`]: API
/// keys, `env` values of variables whose names look secret, and wherever
/// they appear, the values of such variables read through `${VAR}`.
pub fn to_yaml_masked(config: &Config) -> String {
    let mut tree = tree(config);
    mask(&mut tree, &secrets(config));
    serde_yaml::to_string(&tree).unwrap_or_default()
}

/// True if a variable called `name` likely holds a secret.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASS", "CREDENTIAL", "AUTH"].iter().any(|w| upper.contains(w))
}

/// The keys whose values differ between two configs, in `new`'s order
/// (then those only `old` has), as dotted paths (`policy.min_active_secs`,
/// `models.a.wake`); a list or an `env` map counts as one key.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    diff(&tree(old), &tree(new), "", &mut changed);
    changed
}

fn diff(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    let join = |key: &Value| {
        let key = key.as_str().map_or_else(|| format!("{key:?}"), str::to_owned);
        if path.is_empty() {
            key
        } else {
            format!("{path}.{key}")
        }
    };
    match (old, new) {
        (Value::Mapping(a), Value::Mapping(b)) if !path.ends_with(".env") => {
            for (key, value) in b {
                diff(a.get(key).unwrap_or(&Value::Null), value, &join(key), out);
            }
            for (key, _) in a.iter().filter(|(k, _)| !b.contains_key(*k)) {
                out.push(join(key));
            }
        }
        (a, b) if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

/// Every secret value in `config`: its API keys, and the values of the
/// secret-looking variables it read or gives its hooks.
fn secrets(config: &Config) -> Vec<String> {
    let keys = config.api_keys.iter().chain(&config.admin_api_keys).cloned();
    let used = config.env_used.iter().filter(|u| looks_secret(&u.name)).map(|u| u.value.clone());
    let given =
        config.models.iter().flat_map(|m| m.env.iter()).filter(|(k, _)| looks_secret(k)).map(|(_, v)| v.clone());
    let mut all: Vec<String> = keys.chain(used).chain(given).filter(|s| !s.is_empty()).collect();
    // Longest first, so a secret that contains another is masked whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    all.dedup();
    all
}

/// Masks the API key lists, secret `env` values and every occurrence of a
/// secret in any string.
fn mask(tree: &mut Value, secrets: &[String]) {
    for key in ["api_keys", "admin_api_keys"] {
        if let Some(Value::Sequence(items)) = tree.get_mut(key) {
            items.iter_mut().for_each(|k| *k = Value::from(MASK));
        }
    }
    if let Some(Value::Mapping(models)) = tree.get_mut("models") {
        for (_, model) in models.iter_mut() {
            if let Some(Value::Mapping(env)) = model.get_mut("env") {
                for (name, value) in env.iter_mut() {
                    if name.as_str().is_some_and(looks_secret) {
                        *value = Value::from(MASK);
                    }
                }
            }
        }
    }
    mask_strings(tree, secrets);
}

fn mask_strings(value: &mut Value, secrets: &[String]) {
    match value {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), MASK);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|v| mask_strings(v, secrets)),
        Value::Mapping(map) => map.iter_mut().for_each(|(_, v)| mask_strings(v, secrets)),
        Value::Tagged(tagged) => mask_strings(&mut tagged.value, secrets),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The resolved config as a tree of the file's keys, unmasked.
pub fn tree(c: &Config) -> Value {
    let keys = |ks: &[String]| Value::Sequence(ks.iter().map(|k| Value::from(k.as_str())).collect());
    map([
        ("host", Value::from(c.host.as_str())),
        ("port", Value::from(c.port)),
        ("workers", Value::from(c.workers as u64)),
        ("max_body_bytes", Value::from(c.max_body_bytes)),
        ("shutdown_grace_secs", secs(c.shutdown_grace)),
        ("upstream_idle_timeout_secs", secs(c.upstream_idle_timeout)),
        ("access_log", Value::from(c.access_log)),
        ("list_aliases", Value::from(c.list_aliases)),
        ("metrics_public", Value::from(c.metrics_public)),
        ("capacity", c.capacity.map_or(Value::Null, Value::from)),
        ("api_keys", keys(&c.api_keys)),
        ("admin_api_keys", keys(&c.admin_api_keys)),
        ("policy", policy(&c.policy)),
        ("limits", limits(&c.limits)),
        ("models", Value::Mapping(c.models.iter().map(|m| (Value::from(m.name.as_str()), model(m))).collect())),
    ])
}

fn policy(p: &Policy) -> Value {
    let d = &p.model_defaults;
    let on_sleep_failure = match p.on_sleep_failure {
        OnSleepFailure::Abort => "abort",
        OnSleepFailure::Continue => "continue",
    };
    let scheduler = match p.scheduler {
        Scheduler::CostAware => "cost_aware",
        Scheduler::Fifo => "fifo",
    };
    map([
        ("request_timeout_secs", opt_secs(p.request_timeout)),
        ("drain_before_switch", Value::from(p.drain_before_switch)),
        ("drain_timeout_secs", opt_secs(p.drain_timeout)),
        ("min_active_secs", secs(p.min_active)),
        ("on_sleep_failure", Value::from(on_sleep_failure)),
        ("wake_timeout_secs", secs(d.wake_timeout)),
        ("sleep_timeout_secs", secs(d.sleep_timeout)),
        ("alive_timeout_secs", secs(d.alive_timeout)),
        ("idle_sleep_secs", off_or_secs(d.idle_sleep)),
        ("alive_interval_secs", off_or_secs(d.alive_interval)),
        ("hook_kill_grace_secs", secs(p.hook_kill_grace)),
        ("preload", p.preload.as_deref().map_or(Value::Null, Value::from)),
        ("scheduler", Value::from(scheduler)),
        ("max_wait_secs", secs(d.max_wait)),
        ("sleep_on_shutdown", Value::from(p.sleep_on_shutdown)),
        ("stream_wait_feedback", Value::from(d.stream_wait_feedback)),
        ("stream_wait_feedback_secs", secs(d.stream_wait_feedback_every)),
    ])
}

fn limits(l: &Limits) -> Value {
    let n = |v: usize| Value::from(v as u64);
    map([
        ("header_read_timeout_secs", secs(l.header_read_timeout)),
        ("max_header_bytes", n(l.max_header_bytes)),
        ("max_headers", n(l.max_headers)),
        ("body_read_timeout_secs", secs(l.body_read_timeout)),
        ("max_connections", n(l.max_connections)),
        ("upstream_connect_timeout_secs", secs(l.upstream_connect_timeout)),
        ("upstream_first_byte_timeout_secs", opt_secs(l.upstream_first_byte_timeout)),
        ("h2_max_concurrent_streams", Value::from(l.h2_max_concurrent_streams)),
        ("h2_max_header_list_bytes", Value::from(l.h2_max_header_list_bytes)),
        ("h2_max_pending_reset_streams", n(l.h2_max_pending_reset_streams)),
        ("max_queued_requests", n(l.max_queued_requests)),
        ("max_queued_body_bytes", Value::from(l.max_queued_body_bytes)),
        ("max_body_bytes_in_memory", Value::from(l.max_body_bytes_in_memory)),
    ])
}

fn model(m: &ModelConfig) -> Value {
    let env = m.env.iter().map(|(k, v)| (Value::from(k.as_str()), Value::from(v.as_str()))).collect();
    map([
        backend(&m.backend),
        ("dir", Value::from(m.dir.display().to_string())),
        ("env", Value::Mapping(env)),
        ("wake", Value::from(m.wake.script.as_str())),
        ("sleep", Value::from(m.sleep.script.as_str())),
        ("alive", Value::from(m.alive.script.as_str())),
        ("wake_timeout_secs", secs(m.wake.timeout)),
        ("sleep_timeout_secs", secs(m.sleep.timeout)),
        ("alive_timeout_secs", secs(m.alive.timeout)),
        ("idle_sleep_secs", off_or_secs(m.idle_sleep)),
        ("alive_interval_secs", off_or_secs(m.alive_interval)),
        ("size", Value::from(m.size)),
        ("pinned", Value::from(m.pinned)),
        ("weight", Value::from(m.weight)),
        ("max_wait_secs", secs(m.max_wait)),
        ("stream_wait_feedback", Value::from(m.stream_wait_feedback.is_some())),
        ("aliases", Value::Sequence(m.aliases.iter().map(|a| Value::from(a.as_str())).collect())),
        ("upstream_model", m.upstream_model.as_ref().map_or(Value::Null, |u| Value::from(u.name.as_str()))),
        ("max_in_flight", m.max_in_flight.map_or(Value::Null, |n| Value::from(n as u64))),
    ])
}

/// `port` for a backend on 127.0.0.1 given by its port, else `url`.
fn backend(b: &crate::backend::Backend) -> (&'static str, Value) {
    if *b == crate::backend::Backend::local(b.port()) {
        ("port", Value::from(b.port()))
    } else {
        ("url", Value::from(b.url()))
    }
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect::<Mapping>())
}

/// Seconds: whole ones as an integer, else a fraction.
fn secs(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        Value::from(d.as_secs())
    } else {
        Value::from(d.as_secs_f64())
    }
}

fn opt_secs(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, secs)
}

/// An interval where 0 is off.
fn off_or_secs(d: Option<Duration>) -> Value {
    d.map_or(Value::from(0), secs)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Format;

    fn parse(text: &str, vars: &[(&str, &str)]) -> Config {
        let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        Config::parse_with_env(text, Format::Yaml, PathBuf::from("/etc/llmux"), &lookup).expect("valid")
    }

    const FULL: &str = "host: localhost\nport: 0\ncapacity: 2\nworkers: 3\nmodels:\n  b:\n    port: 2\n    wake: ./w.sh\n    sleep: s\n    alive: a\n    dir: hooks\n    env: {THREADS: 4, FLAGS: --jinja}\n    alive_timeout_secs: 0.5\n    idle_sleep_secs: 0\n    pinned: true\n    aliases: [bee, 'org/b']\n    upstream_model: b-q4\n    max_in_flight: 4\n  a: {port: 1, wake: w, sleep: s, alive: a, size: 0.5, weight: 2}\nlist_aliases: false\npolicy: {idle_sleep_secs: 30, scheduler: fifo, sleep_on_shutdown: true, request_timeout_secs: 2.5, stream_wait_feedback: true, stream_wait_feedback_secs: 0.5}\nlimits: {max_connections: 7, upstream_first_byte_timeout_secs: 9}\n";

    /// What `--check --print` writes reads back as the same config.
    #[test]
    fn the_printed_config_reads_back_as_the_same_config() {
        let config = parse(FULL, &[]);
        let printed = to_yaml_masked(&config);
        let again = parse(&printed, &[]);
        assert_eq!(again.models, config.models, "{printed}");
        assert_eq!((again.policy, again.limits), (config.policy.clone(), config.limits.clone()), "{printed}");
        assert_eq!((again.host, again.capacity, again.workers), (config.host.clone(), config.capacity, 3));
        assert!(!again.list_aliases);
        let resolved = tree(&config);
        let names: Vec<&str> =
            resolved["models"].as_mapping().expect("models").keys().filter_map(Value::as_str).collect();
        assert_eq!(names, ["b", "a"], "file order");
        assert!(printed.contains("dir: /etc/llmux/hooks") && printed.contains("alive_timeout_secs: 0.5"), "{printed}");
    }

    #[test]
    fn secrets_are_masked_wherever_they_appear() {
        let text = "api_keys: ['${LLMUX_API_KEY}', plain-key]\nadmin_api_keys: [adm1n]\nmodels:\n  a:\n    port: 1\n    wake: \"curl -H 'Authorization: Bearer ${HF_TOKEN}' http://x/${MODEL_NAME} --key plain-key\"\n    sleep: s\n    alive: a\n    env: {HF_TOKEN: '${HF_TOKEN}', DB_PASSWORD: hunter22, THREADS: 8}\n";
        let config =
            parse(text, &[("LLMUX_API_KEY", "sk-live-123"), ("HF_TOKEN", "hf_abcdef"), ("MODEL_NAME", "llama")]);
        let printed = to_yaml_masked(&config);
        for secret in ["sk-live-123", "plain-key", "adm1n", "hf_abcdef", "hunter22"] {
            assert!(!printed.contains(secret), "{secret} shown:\n{printed}");
        }
        let tree: Value = serde_yaml::from_str(&printed).expect("yaml");
        assert_eq!(tree["api_keys"], serde_yaml::from_str::<Value>("['***', '***']").expect("yaml"));
        assert_eq!(
            tree["models"]["a"]["wake"],
            Value::from("curl -H 'Authorization: Bearer ***' http://x/llama --key ***")
        );
        assert_eq!(tree["models"]["a"]["env"]["THREADS"], Value::from("8"));
        assert_eq!(tree["models"]["a"]["env"]["DB_PASSWORD"], Value::from(MASK));
    }

    #[test]
    fn changed_keys_names_each_key_that_differs() {
        let a = parse(FULL, &[]);
        let b = parse(
            &FULL
                .replace("scheduler: fifo", "scheduler: cost_aware")
                .replace("request_timeout_secs: 2.5", "min_active_secs: 3")
                .replace("THREADS: 4", "THREADS: 5")
                .replace("max_connections: 7", "max_connections: 8"),
            &[],
        );
        let expected = [
            "policy.request_timeout_secs",
            "policy.min_active_secs",
            "policy.scheduler",
            "limits.max_connections",
            "models.b.env",
        ];
        assert_eq!(changed_keys(&a, &b), expected);
        assert!(changed_keys(&a, &a).is_empty());
    }
}

//! `${VAR}` in a config file: environment variables substituted into every
//! string value of the parsed tree, before it is deserialised.
//!
//! - `${NAME}` is the variable's value; an unset variable is an error
//!   naming the key (`api_keys[0]: environment variable LLMUX_API_KEY is
//!   not set`).
//! - `${NAME:-default}` is the value, or `default` when the variable is
//!   unset or empty.
//! - `$$` is a literal `$`. A `$` followed by anything else is left as it
//!   is, so a hook's own `$LLMUX_PORT` reaches its shell untouched (write
//!   `$${LLMUX_PORT}` for the braced form).
//!
//! Only values are substituted, never keys (a model's name is its key).
//! A substituted value that reads as a number or a boolean becomes one,
//! unless its key takes text (the caller says which): `port: ${PORT}`
//! works, and an API key of digits stays a string.

use std::fmt;

use serde_yaml::Value;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A key path such as `models.a.wake` or `api_keys[0]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Step>);

impl KeyPath {
    /// The keys of the path, `None` for an index: for matching.
    pub fn keys(&self) -> impl Iterator<Item = Option<&str>> {
        self.0.iter().map(|s| match s {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        })
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(k) if i == 0 => f.write_str(k)?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A variable substituted: its name and value (for masking secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Used {
    /// The variable's name.
    pub name: String,
    /// The value put in its place.
    pub value: String,
}

/// What a substitution did: the paths it changed and the variables used.
#[derive(Debug, Default)]
pub struct Substituted {
    /// Every value changed, with its new text.
    pub changed: Vec<(KeyPath, String)>,
    /// Every variable read, in order of use (repeats included once).
    pub used: Vec<Used>,
}

/// What the value at a key path is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// Anything (a number, a boolean, a mapping...).
    Value,
    /// Text, required.
    Text,
    /// Text, or nothing (`null`).
    OptionalText,
}

/// Substitutes in every string value of `tree`. `lookup` reads a variable;
/// `takes` says what the value at a path is read as.
pub fn substitute(
    tree: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    takes: &dyn Fn(&KeyPath) -> Takes,
) -> Result<Substituted, String> {
    let mut walk = Walk { lookup, takes, path: KeyPath::default(), done: Substituted::default() };
    walk.value(tree)?;
    Ok(walk.done)
}

/// Reads `tree` as its YAML text would be read: every mapping key and every
/// number or boolean where text is taken as its text (`alive: true` is
/// the command `true`), and an empty required text as `""`.
pub fn as_text_where_taken(tree: &mut Value, takes: &dyn Fn(&KeyPath) -> Takes) {
    as_text_at(tree, takes, &mut KeyPath::default());
}

fn as_text_at(value: &mut Value, takes: &dyn Fn(&KeyPath) -> Takes, path: &mut KeyPath) {
    match value {
        Value::Mapping(map) => {
            let old = std::mem::take(map);
            for (key, mut item) in old {
                let key = match key {
                    Value::String(s) => s,
                    other => scalar_text(&other).unwrap_or_else(|| serde_yaml::to_string(&other).unwrap_or_default()),
                };
                path.0.push(Step::Key(key.clone()));
                as_text_at(&mut item, takes, path);
                path.0.pop();
                map.insert(Value::String(key), item);
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.0.push(Step::Index(i));
                as_text_at(item, takes, path);
                path.0.pop();
            }
        }
        Value::Tagged(tagged) => as_text_at(&mut tagged.value, takes, path),
        Value::Null if takes(path) == Takes::Text => *value = Value::String(String::new()),
        Value::Bool(_) | Value::Number(_) if takes(path) != Takes::Value => {
            *value = Value::String(scalar_text(value).unwrap_or_default());
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

/// A number's or a boolean's text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some("null".to_owned()),
        _ => None,
    }
}

struct Walk<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    takes: &'a dyn Fn(&KeyPath) -> Takes,
    path: KeyPath,
    done: Substituted,
}

impl Walk<'_> {
    fn value(&mut self, value: &mut Value) -> Result<(), String> {
        match value {
            Value::String(s) => {
                let Some(expanded) = self.expand(s)? else { return Ok(()) };
                self.done.changed.push((self.path.clone(), expanded.clone()));
                *value = match typed(&expanded) {
                    Some(v) if (self.takes)(&self.path) == Takes::Value => v,
                    _ => Value::String(expanded),
                };
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    self.nested(Step::Index(i), item)?;
                }
            }
            Value::Mapping(map) => {
                for (key, item) in map.iter_mut() {
                    let key = match key {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap_or_default().trim_end().to_owned(),
                    };
                    self.nested(Step::Key(key), item)?;
                }
            }
            Value::Tagged(tagged) => self.value(&mut tagged.value)?,
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
        Ok(())
    }

    fn nested(&mut self, step: Step, value: &mut Value) -> Result<(), String> {
        self.path.0.push(step);
        let result = self.value(value);
        self.path.0.pop();
        result
    }

    /// `text` with its references replaced, or `None` if it has none.
    fn expand(&mut self, text: &str) -> Result<Option<String>, String> {
        if !text.contains('$') {
            return Ok(None);
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut changed = false;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                changed = true;
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('{') {
                let (value, tail) = self.reference(inner)?;
                out.push_str(&value);
                changed = true;
                rest = tail;
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        Ok(changed.then_some(out))
    }

    /// Reads `NAME}` or `NAME:-default}` at the start of `inner`; returns
    /// the value and what follows the `}`.
    fn reference<'t>(&mut self, inner: &'t str) -> Result<(String, &'t str), String> {
        let path = &self.path;
        let bad = || {
            let shown: String = inner.chars().take(40).collect();
            format!(
                "{path}: `${{{shown}` is not a variable reference: write ${{NAME}} or ${{NAME:-default}}, or $$ for a literal $"
            )
        };
        let name_len = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
        let name = &inner[..name_len];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(bad());
        }
        let after = &inner[name_len..];
        let (default, tail) = if let Some(tail) = after.strip_prefix('}') {
            (None, tail)
        } else if let Some(body) = after.strip_prefix(":-") {
            let end = body.find('}').ok_or_else(bad)?;
            (Some(&body[..end]), &body[end + 1..])
        } else {
            return Err(bad());
        };
        let found = (self.lookup)(name);
        let value = match (found, default) {
            (Some(v), Some(d)) if v.is_empty() => d.to_owned(),
            (Some(v), _) => {
                self.record(name, &v);
                v
            }
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                return Err(format!(
                    "{path}: environment variable {name} is not set (write $${{{name}}} to leave it to a hook's shell)"
                ))
            }
        };
        Ok((value, tail))
    }

    fn record(&mut self, name: &str, value: &str) {
        if !self.done.used.iter().any(|u| u.name == name) {
            self.done.used.push(Used { name: name.to_owned(), value: value.to_owned() });
        }
    }
}

/// `text` as a YAML number or boolean, if it reads as one.
fn typed(text: &str) -> Option<Value> {
    match serde_yaml::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            "PORT" => Some("8080".into()),
            "DIGITS" => Some("0123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(yaml: &str, takes: &dyn Fn(&KeyPath) -> Takes) -> Result<(Value, Substituted), String> {
        let mut tree: Value = serde_yaml::from_str(yaml).expect("yaml");
        let done = substitute(&mut tree, &env, takes)?;
        Ok((tree, done))
    }

    fn text_keys(path: &KeyPath) -> Takes {
        if path.keys().next() == Some(Some("api_keys")) {
            Takes::Text
        } else {
            Takes::Value
        }
    }

    fn all_text(_: &KeyPath) -> Takes {
        Takes::Text
    }

    #[test]
    fn substitutes_every_string_value_and_types_numbers() {
        let yaml =
            "port: ${PORT}\napi_keys: ['${KEY}', '${DIGITS}']\nmodels:\n  a: {wake: 'run --key=${KEY} --p ${PORT}'}\n";
        let (tree, done) = run(yaml, &text_keys).expect("valid");
        assert_eq!(tree["port"], Value::from(8080));
        assert_eq!(tree["api_keys"][0], Value::from("sk-123"));
        // Text keys stay text, leading zero and all.
        assert_eq!(tree["api_keys"][1], Value::from("0123"));
        assert_eq!(tree["models"]["a"]["wake"], Value::from("run --key=sk-123 --p 8080"));
        let paths: Vec<String> = done.changed.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(paths, ["port", "api_keys[0]", "api_keys[1]", "models.a.wake"]);
        let names: Vec<&str> = done.used.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["PORT", "KEY", "DIGITS"]);
    }

    #[test]
    fn dollar_dollar_is_a_dollar_and_a_lone_dollar_stays() {
        let yaml = "a: 'curl http://127.0.0.1:$LLMUX_PORT/x'\nb: 'echo $${LLMUX_MODEL} costs $$5'\nc: 'a $ b $'\n";
        let (tree, done) = run(yaml, &all_text).expect("valid");
        assert_eq!(tree["a"], Value::from("curl http://127.0.0.1:$LLMUX_PORT/x"));
        assert_eq!(tree["b"], Value::from("echo ${LLMUX_MODEL} costs $5"));
        assert_eq!(tree["c"], Value::from("a $ b $"));
        assert_eq!(done.changed.len(), 1, "only b changed");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let yaml = "a: '${NOPE:-x y}'\nb: '${EMPTY:-d}'\nc: '${PORT:-1}'\nd: '${NOPE:-}'\n";
        let (tree, _) = run(yaml, &all_text).expect("valid");
        assert_eq!(
            [&tree["a"], &tree["b"], &tree["c"], &tree["d"]],
            [&Value::from("x y"), &"d".into(), &"8080".into(), &"".into()]
        );
    }

    #[test]
    fn an_unset_variable_names_the_key_path() {
        let e = run("api_keys: [ok, '${LLMUX_API_KEY}']\n", &all_text).expect_err("unset");
        assert!(e.starts_with("api_keys[1]: environment variable LLMUX_API_KEY is not set"), "{e}");
        let e = run("models:\n  a:\n    wake: 'x ${UNSET_ONE}'\n", &all_text).expect_err("unset");
        assert!(e.starts_with("models.a.wake: environment variable UNSET_ONE is not set"), "{e}");
    }

    #[test]
    fn malformed_references_are_errors() {
        for bad in ["'${}'", "'${1A}'", "'${A'", "'${A:=b}'", "'${A:-b'", "'${ A}'"] {
            let e = run(&format!("k: {bad}\n"), &all_text).expect_err(bad);
            assert!(e.starts_with("k: `${") && e.contains("not a variable reference"), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_are_not_substituted_and_tagged_values_are() {
        let (tree, _) = run("'${PORT}': !t '${KEY}'\n", &all_text).expect("valid");
        let map = tree.as_mapping().expect("map");
        let (k, v) = map.iter().next().expect("one");
        assert_eq!(k, &Value::from("${PORT}"));
        let Value::Tagged(t) = v else { panic!("{v:?}") };
        assert_eq!(t.value, Value::from("sk-123"));
    }

    #[test]
    fn text_keys_read_numbers_and_booleans_as_text() {
        let mut tree: Value =
            serde_yaml::from_str("api_keys: [12345, true]\n1: x\nport: 80\nwake:\nhost:\n").expect("yaml");
        let takes = |p: &KeyPath| match p.keys().next().flatten() {
            Some("api_keys" | "wake") => Takes::Text,
            Some("host") => Takes::OptionalText,
            _ => Takes::Value,
        };
        as_text_where_taken(&mut tree, &takes);
        assert_eq!(tree["api_keys"], serde_yaml::from_str::<Value>("['12345', 'true']").expect("yaml"));
        assert_eq!((&tree["port"], &tree["wake"], &tree["host"]), (&Value::from(80), &Value::from(""), &Value::Null));
        assert_eq!(tree["1"], Value::from("x"));
    }
}

//! `llmux --check`: what can be checked of a valid config without running
//! it. Each model's `dir` is a directory, and each hook given as a path
//! (its whole script one word with a `/`, such as `./wake.sh` or
//! `/opt/x/wake.sh`, resolved against the model's `dir`) exists and is
//! executable. An inline script (`curl -s ... && ...`) is not checked.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, HookKind, ModelConfig};

/// Everything wrong with `config`'s files, one message per problem, each
/// naming the model and hook (`models.a.wake: ...`).
pub fn problems(config: &Config) -> Vec<String> {
    config.models.iter().flat_map(model_problems).collect()
}

fn model_problems(m: &ModelConfig) -> Vec<String> {
    if !m.dir.is_dir() {
        return vec![format!("models.{}.dir: {} is not a directory", m.name, m.dir.display())];
    }
    [(HookKind::Wake, &m.wake), (HookKind::Sleep, &m.sleep), (HookKind::Alive, &m.alive)]
        .into_iter()
        .filter_map(|(kind, hook)| {
            let path = hook_path(&hook.script)?;
            let problem = file_problem(&m.dir.join(path))?;
            Some(format!("models.{}.{kind}: {path}: {problem}", m.name))
        })
        .collect()
}

/// The path a hook names, if its whole script is one: one word with a `/`
/// and nothing the shell would expand or split.
pub fn hook_path(script: &str) -> Option<&str> {
    let word = script.trim();
    let shell = |c: char| c.is_whitespace() || "$;|&<>()`'\"*?[]{}~=#!\\".contains(c);
    (word.contains('/') && !word.contains(shell)).then_some(word)
}

/// What is wrong with the hook file at `path`, if anything.
fn file_problem(path: &Path) -> Option<String> {
    let shown = || PathBuf::from(path).display().to_string();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!("{} does not exist", shown())),
        Err(e) => Some(format!("{}: {e}", shown())),
        Ok(meta) if meta.is_dir() => Some(format!("{} is a directory", shown())),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Some(format!("{} is not executable (chmod +x it, or run it with `sh`)", shown()))
        }
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_is_a_path_when_it_is_one_word_with_a_slash() {
        for path in ["./wake.sh", "/opt/x/wake.sh", "hooks/wake", "  ./w.sh\n", "../standin/alive.sh"] {
            assert_eq!(hook_path(path), Some(path.trim()), "{path:?}");
        }
        for inline in [
            "wake.sh",
            "true",
            "curl -s http://127.0.0.1:$LLMUX_PORT/health",
            "./wake.sh --fast",
            "sh ./wake.sh",
            "A=1 ./wake.sh",
            "./w.sh && ./x.sh",
            "~/wake.sh",
            "$HOME/wake.sh",
            "./wake.sh;",
            "'./wake.sh'",
        ] {
            assert_eq!(hook_path(inline), None, "{inline:?}");
        }
    }
}

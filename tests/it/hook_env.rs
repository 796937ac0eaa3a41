//! A model's `env` and `dir`: its hooks run in its directory (by default
//! the config file's) with its variables added.

use crate::support::http::{self, chat};
use crate::support::{standin, start_llmux};

/// A wake hook that records where it ran and what it saw.
const RECORD: &str = r#"pwd > "$OUT/$LLMUX_MODEL.pwd"; echo "$GREETING|$THREADS|$LLMUX_MODEL|$LLMUX_PORT" > "$OUT/$LLMUX_MODEL.env"; touch "$OUT/up-$LLMUX_MODEL""#;

#[tokio::test]
async fn hooks_run_in_the_models_dir_with_its_env() {
    let (a, b) = (standin("a"), standin("b"));
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().canonicalize().expect("canonical");
    std::fs::create_dir(dir.join("models-a")).expect("mkdir");
    let out = dir.display();
    let hook = |m: &str| {
        let record = RECORD.replace("$OUT", &out.to_string());
        format!(
            "      wake: '{}'\n      sleep: 'rm -f {out}/up-{m}'\n      alive: 'test -f {out}/up-{m}'\n",
            record.replace('\'', "''")
        )
    };
    let config = format!(
        "host: 127.0.0.1\nport: 0\nmodels:\n  a:\n      port: {}\n      dir: models-a\n      env: {{GREETING: 'hello there', THREADS: 4}}\n{}  b:\n      port: {}\n{}",
        a.port(),
        hook("a"),
        b.port(),
        hook("b")
    );
    let path = dir.join("llmux.yaml");
    std::fs::write(&path, config).expect("write config");
    let llmux = start_llmux(&path);
    for m in ["a", "b"] {
        let r = http::post(&format!("http://{}/v1/chat/completions", llmux.addr), &chat(m)).await;
        assert_eq!((r.status.as_u16(), r.served_by()), (200, m), "{}", r.text());
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect(name).trim().to_owned();
    assert_eq!(read("a.pwd"), dir.join("models-a").display().to_string());
    assert_eq!(read("a.env"), format!("hello there|4|a|{}", a.port()));
    // b has neither: the config file's directory, and only llmux's variables.
    assert_eq!(read("b.pwd"), dir.display().to_string());
    assert_eq!(read("b.env"), format!("||b|{}", b.port()));
}

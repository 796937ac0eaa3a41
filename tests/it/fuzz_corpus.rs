//! Replays the fuzz corpus (fuzz/corpus/<target>/) and the large cases
//! generated at test time through the fuzz targets' checks, on stable and
//! without libFuzzer: the checks are fuzz/src/checks.rs, compiled here.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use checks::Target;

/// A fuzz target's check.
type Check = fn(&[u8]);

/// Runs `check` on every corpus file of `target` and every generated case;
/// fails naming each input that broke a property.
fn replay(target: Target, dir: &str, check: Check) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{} holds only {} seeds", corpus.display(), files.len());
    let mut inputs: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|p| (p.display().to_string(), std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))))
        .collect();
    inputs
        .extend(checks::generated_cases(target).into_iter().map(|(name, bytes)| (format!("generated {name}"), bytes)));
    let failed: Vec<String> = inputs
        .iter()
        .filter(|(_, bytes)| catch_unwind(AssertUnwindSafe(|| check(bytes))).is_err())
        .map(|(name, _)| name.clone())
        .collect();
    assert!(failed.is_empty(), "{} of {} inputs broke a property (see above): {failed:#?}", failed.len(), inputs.len());
}

#[test]
fn extract_model_corpus() {
    replay(Target::ExtractModel, "extract_model", checks::check_extract);
}

#[test]
fn config_corpus() {
    replay(Target::Config, "config", checks::check_config);
}

#[test]
fn request_corpus() {
    replay(Target::Request, "request", checks::check_request);
}

#[test]
fn rewrite_model_corpus() {
    replay(Target::RewriteModel, "rewrite_model", checks::check_rewrite);
}

#[test]
fn multipart_corpus() {
    replay(Target::Multipart, "multipart", checks::check_multipart);
}

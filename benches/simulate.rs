//! `llmux simulate` on a million requests: the issue's target is under ten
//! seconds on this project's 2-core machine, per policy.
//!
//! A plain timing (not criterion: one run takes seconds): the poisson
//! scenario at 1000 requests per second for 1000 s over three models with
//! 10 s switches, once per policy, each run timed from the generated
//! workload to its summary.
//!
//! ```text
//! cargo bench --bench simulate
//! ```

use std::path::PathBuf;
use std::time::Instant;

use llmux::config::{Config, Format};
use llmux::simulate::{policy_by_name, report, scenario, world, POLICIES};

const CONFIG: &str = "models:
  a: {port: 9001, wake: 'true', sleep: 'true', alive: 'true'}
  b: {port: 9002, wake: 'true', sleep: 'true', alive: 'true'}
  c: {port: 9003, wake: 'true', sleep: 'true', alive: 'true'}
";

fn main() {
    let config = Config::parse(CONFIG, Format::Yaml, PathBuf::from(".")).expect("the bench's config");
    let names: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let params: Vec<(String, String)> =
        [("rate", "1000"), ("duration_secs", "1000"), ("switch_secs", "10"), ("concurrency", "2000")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    let started = Instant::now();
    let workload = scenario::generate("poisson", &params, 1, &names).expect("the scenario");
    println!("simulate: {} requests generated in {:.2?}", workload.requests.len(), started.elapsed());
    for name in POLICIES {
        let policy = policy_by_name(name).expect("a policy");
        let started = Instant::now();
        let outcome = world::run(&config, &workload.backends, &workload.requests, policy);
        let summary = report::summarize(name, &outcome, &workload.requests, &names, &workload.unknown, 30.0);
        let took = started.elapsed();
        let served = outcome.tracks.iter().filter(|t| t.fate == world::Fate::Done).count();
        println!(
            "simulate/{name}: {} requests, {served} served, {} switches in {:.2?} ({:.0} requests/s)",
            workload.requests.len(),
            outcome.switches,
            took,
            workload.requests.len() as f64 / took.as_secs_f64()
        );
        std::hint::black_box(summary);
    }
}

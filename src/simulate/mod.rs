//! `llmux simulate`: the proxy's own switching code on a simulated world.
//!
//! The same [`Machine`](crate::machine::Machine) and
//! [`SwitchPolicy`] the proxy runs are driven with
//! virtual time by a discrete-event loop ([`world`]) whose backends take
//! the time a trace ([`trace`]) or a seeded scenario ([`scenario`]) says:
//! no sockets, no hooks, no sleeping, no clock. [`report`] sums each run
//! up. The module sits beside the machine and does no async work: it is
//! a pure function from (config, workload, policy) to a report, so the
//! same input prints the same bytes.
//!
//! - [`trace`]: the JSON-lines trace format and its errors.
//! - [`scenario`]: synthetic workloads and the PRNG they use.
//! - [`world`]: the event loop and the simulated backends.
//! - [`report`]: tables, JSON lines and the side-by-side comparison.

pub mod report;
pub mod scenario;
pub mod trace;
pub mod world;

use std::time::Duration;

use crate::cli::SimulateOptions;
use crate::config::Config;
use crate::machine::policy::{Fifo, SwitchPolicy};

use report::Summary;
use trace::Workload;

/// The policies `--policy` names.
pub const POLICIES: [&str; 2] = ["fifo", "cost_aware"];

/// The policy called `name`, if there is one.
pub fn policy_by_name(name: &str) -> Option<Box<dyn SwitchPolicy>> {
    match name {
        "fifo" => Some(Box::new(Fifo)),
        "cost_aware" => Some(Box::new(crate::machine::cost_aware::CostAware::default())),
        _ => None,
    }
}

/// What a simulation printed: its output and its warnings (for stderr).
#[derive(Debug, Clone, PartialEq)]
pub struct Printed {
    /// For stdout.
    pub output: String,
    /// For stderr, one per line.
    pub warnings: Vec<String>,
}

/// Runs `llmux simulate` as `options` say.
pub fn run(options: &SimulateOptions) -> Result<Printed, String> {
    let config = Config::load(&options.config).map_err(|e| e.to_string())?;
    let names: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let workload = match (&options.trace, &options.scenario) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            trace::parse(&text, &names).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, Some(name)) => scenario::generate(name, &options.params, options.seed, &names)?,
        _ => return Err("give exactly one of --trace FILE and --scenario NAME".to_owned()),
    };
    let policies = if options.policies.is_empty() { vec!["fifo".to_owned()] } else { options.policies.clone() };
    let mut warnings = workload.warnings.clone();
    for (name, n) in &workload.unknown {
        warnings.push(format!("{n} requests for `{name}`, which the config does not have: not simulated"));
    }
    let output = simulate(&config, &workload, &policies, options)?;
    Ok(Printed { output, warnings })
}

/// Runs `workload` under each of `policies` and prints the result.
pub fn simulate(
    config: &Config,
    workload: &Workload,
    policies: &[String],
    options: &SimulateOptions,
) -> Result<String, String> {
    let names: Vec<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let slo = options.slo.unwrap_or_else(|| 3.0 * mean_wake(workload).as_secs_f64());
    let mut summaries: Vec<Summary> = Vec::with_capacity(policies.len());
    for name in policies {
        let policy =
            policy_by_name(name).ok_or_else(|| format!("unknown policy `{name}` (one of {})", POLICIES.join(", ")))?;
        let outcome = world::run(config, &workload.backends, &workload.requests, policy);
        summaries.push(report::summarize(name, &outcome, &workload.requests, &names, &workload.unknown, slo));
    }
    Ok(print(&summaries, options))
}

fn print(summaries: &[Summary], options: &SimulateOptions) -> String {
    if options.json {
        summaries.iter().map(|s| report::json_line(s) + "\n").collect()
    } else if options.compare {
        report::compare(summaries)
    } else {
        summaries.iter().map(report::table).collect::<Vec<_>>().join("\n")
    }
}

/// The mean of the backends' wake times.
fn mean_wake(workload: &Workload) -> Duration {
    let n = u32::try_from(workload.backends.len()).unwrap_or(u32::MAX).max(1);
    workload.backends.iter().map(|b| b.wake).sum::<Duration>() / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Format;

    fn config() -> Config {
        let mut text = "models:\n".to_owned();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            text += &format!("  {name}:\n    port: {}\n    wake: w\n    sleep: s\n    alive: x\n", 9000 + i);
        }
        Config::parse(&text, Format::Yaml, ".".into()).expect("config")
    }

    fn printed(scenario: &str, seed: u64, json: bool) -> String {
        let options = SimulateOptions { seed, json, ..SimulateOptions::default() };
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let params = [("rate".to_owned(), "0.5".to_owned()), ("duration_secs".to_owned(), "300".to_owned())];
        let workload = scenario::generate(scenario, &params, seed, &names).expect("scenario");
        let policies = ["fifo".to_owned(), "cost_aware".to_owned()];
        simulate(&config(), &workload, &policies, &options).expect("simulates")
    }

    #[test]
    fn the_same_seed_prints_the_same_bytes() {
        for name in scenario::NAMES {
            assert_eq!(printed(name, 42, false), printed(name, 42, false), "{name}");
            assert_eq!(printed(name, 42, true), printed(name, 42, true), "{name}");
        }
        assert_ne!(printed("poisson", 1, true), printed("poisson", 2, true));
    }

    #[test]
    fn policies_are_found_by_name() {
        assert!(policy_by_name("fifo").is_some());
        assert!(policy_by_name("cost_aware").is_some());
        assert!(policy_by_name("lifo").is_none());
    }
}

//! The command line: `llmux -c FILE [-p PORT] [--check]`.

use std::ffi::OsString;
use std::path::PathBuf;

/// What the command line asked for.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Serve with this config.
    Run(Options),
    /// Validate the config and exit.
    Check(Options),
    /// Print the version.
    Version,
    /// Print the help.
    Help,
    /// Print `llmux simulate --help`.
    SimulateHelp,
    /// `llmux simulate`: replay a workload on simulated backends.
    Simulate(SimulateOptions),
}

/// `llmux simulate`'s options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimulateOptions {
    /// The config file (its models and policy).
    pub config: PathBuf,
    /// `--trace FILE`: a JSON-lines trace.
    pub trace: Option<PathBuf>,
    /// `--scenario NAME`: a synthetic workload.
    pub scenario: Option<String>,
    /// `--param k=v`, in order.
    pub params: Vec<(String, String)>,
    /// `--policy NAME`, in order (none: fifo).
    pub policies: Vec<String>,
    /// `--compare`: the policies side by side.
    pub compare: bool,
    /// `--slo SECS`: goodput's bound (default: 3 x the mean wake time).
    pub slo: Option<f64>,
    /// `--seed N` for scenarios.
    pub seed: u64,
    /// `--json`: one JSON object per policy per line.
    pub json: bool,
}

/// Options shared by `Run` and `Check`.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// The config file.
    pub config: PathBuf,
    /// Overrides the config's listen port.
    pub port: Option<u16>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// `--subreaper`: make llmux a child subreaper, so orphans of hooks
    /// (backends started with `&`) are reparented to it and reaped.
    pub subreaper: bool,
    /// `--print` (with `--check`): print the resolved config.
    pub print: bool,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format `{other}` (text or json)")),
        }
    }
}

/// The `--help` text.
pub const HELP: &str = "\
llmux: one OpenAI-compatible endpoint in front of several LLM backends
sharing a GPU; switches between them on demand by the request's `model`.

USAGE:
    llmux -c <FILE> [-p <PORT>] [--log-format text|json] [--subreaper]
    llmux -c <FILE> --check [--print]
    llmux simulate -c <FILE> (--trace <FILE> | --scenario <NAME>) [...]
                             (see llmux simulate --help)

OPTIONS:
    -c, --config <FILE>  Config file (.yaml, .yml or .json)
    -p, --port <PORT>    Listen port, overriding the config (0: any free port)
        --log-format <F> Log lines as `text` (default) or `json`
        --subreaper      Adopt and reap the orphans of hooks (backends started
                         with `&`), as PID 1 does; llmux reaps them anyway
                         when it runs as PID 1
        --check          Validate the config (and that hook scripts given as
                         paths exist and are executable) and exit
        --print          With --check: print the config as llmux resolved it
                         (${VAR} substituted, defaults filled in; secrets
                         shown as ***) as YAML on stdout
    -V, --version        Print the version
    -h, --help           Print this help

ENVIRONMENT:
    RUST_LOG             Log filter (default: info), e.g. RUST_LOG=llmux=debug
                         (debug adds one line per request)
    LISTEN_FDS           systemd socket activation (with LISTEN_PID): serve the
                         socket at fd 3 instead of binding host:port
    NOTIFY_SOCKET        systemd Type=notify: READY=1 once start-up adoption is
                         done, STOPPING=1 at shutdown

SIGNALS:
    SIGHUP               Reread the config file (as POST /llmux/reload)
    SIGTERM, SIGINT      Shut down gracefully
";

/// The `llmux simulate --help` text.
pub const SIMULATE_HELP: &str = "\
llmux simulate: replay a workload through llmux's own switching code on
simulated backends, in virtual time (no sockets, no hooks, no sleeping).

USAGE:
    llmux simulate -c <FILE> (--trace <FILE> | --scenario <NAME> [--param k=v]...)
                   [--policy <NAME>]... [--compare] [--slo <SECS>] [--seed <N>] [--json]

OPTIONS:
    -c, --config <FILE>  Config file: its models, policy and timeouts
        --trace <FILE>   JSON lines: an optional header {\"models\": {\"a\":
                         {\"wake_secs\": 30, \"sleep_secs\": 2, \"concurrency\": 8}}},
                         then {\"t\": 12.5, \"model\": \"a\", \"service_secs\": 2.0}
                         (optional \"timeout_secs\")
        --scenario <N>   poisson, skewed, bursty, agents or llama_swap_612
        --param k=v      Scenario parameter: models, switch_secs, sleep_secs,
                         concurrency, duration_secs, rate, service_secs,
                         timeout_secs, hot, burst, burst_every, think_secs, period
        --policy <NAME>  fifo or cost_aware; repeat to run several (default fifo)
        --compare        Print the policies side by side
        --slo <SECS>     Goodput counts requests finished within this
                         (default: 3 x the mean wake time)
        --seed <N>       Scenario seed (default 1)
        --json           One JSON object per policy per line
";

/// Parses `simulate`'s arguments.
fn parse_simulate(mut args: pico_args::Arguments) -> Result<Command, String> {
    if args.contains(["-h", "--help"]) {
        return Ok(Command::SimulateHelp);
    }
    let path = |s: &std::ffi::OsStr| Ok::<_, String>(PathBuf::from(s));
    let config = args.opt_value_from_os_str(["-c", "--config"], path).map_err(|e| e.to_string())?;
    let trace = args.opt_value_from_os_str("--trace", path).map_err(|e| format!("--trace: {e}"))?;
    let scenario: Option<String> = args.opt_value_from_str("--scenario").map_err(|e| format!("--scenario: {e}"))?;
    let params: Vec<String> = args.values_from_str("--param").map_err(|e| format!("--param: {e}"))?;
    let policies: Vec<String> = args.values_from_str("--policy").map_err(|e| format!("--policy: {e}"))?;
    let slo: Option<f64> = args.opt_value_from_str("--slo").map_err(|e| format!("--slo: {e}"))?;
    let seed: Option<u64> = args.opt_value_from_str("--seed").map_err(|e| format!("--seed: {e}"))?;
    let (compare, json) = (args.contains("--compare"), args.contains("--json"));
    let rest = args.finish();
    if let Some(arg) = rest.first() {
        return Err(format!("simulate: unexpected argument: {}", arg.to_string_lossy()));
    }
    if trace.is_some() == scenario.is_some() {
        return Err("simulate: give exactly one of --trace FILE and --scenario NAME".to_owned());
    }
    if slo.is_some_and(|s| !s.is_finite() || s < 0.0) {
        return Err("--slo: must be a number of seconds of at least 0".to_owned());
    }
    let params = params
        .into_iter()
        .map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or(format!("--param {p}: not k=v")))
        .collect::<Result<_, _>>()?;
    let config = config.ok_or("simulate: missing --config <FILE> (see llmux simulate --help)")?;
    let seed = seed.unwrap_or(1);
    Ok(Command::Simulate(SimulateOptions { config, trace, scenario, params, policies, compare, slo, seed, json }))
}

/// Parses `args` (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Command, String> {
    if args.first().is_some_and(|a| a == "simulate") {
        let args = pico_args::Arguments::from_vec(args[1..].to_vec());
        return parse_simulate(args);
    }
    let mut args = pico_args::Arguments::from_vec(args);
    if args.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    if args.contains(["-V", "--version"]) {
        return Ok(Command::Version);
    }
    let check = args.contains("--check");
    let print = args.contains("--print");
    let subreaper = args.contains("--subreaper");
    let config: Option<PathBuf> = args
        .opt_value_from_os_str(["-c", "--config"], |s| Ok::<_, String>(PathBuf::from(s)))
        .map_err(|e| e.to_string())?;
    let port: Option<u16> = args.opt_value_from_str(["-p", "--port"]).map_err(|e| format!("--port: {e}"))?;
    let log_format: Option<LogFormat> =
        args.opt_value_from_str("--log-format").map_err(|e| format!("--log-format: {e}"))?;
    let rest = args.finish();
    if !rest.is_empty() {
        return Err(format!("unexpected argument: {}", rest[0].to_string_lossy()));
    }
    if print && !check {
        return Err("--print needs --check".to_owned());
    }
    let config = config.ok_or("missing --config <FILE> (see --help)")?;
    let options = Options { config, port, log_format: log_format.unwrap_or_default(), subreaper, print };
    Ok(if check { Command::Check(options) } else { Command::Run(options) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn parses_the_forms() {
        let run = Options {
            config: "c.yaml".into(),
            port: Some(0),
            log_format: LogFormat::Json,
            subreaper: true,
            print: false,
        };
        let args = ["-c", "c.yaml", "-p", "0", "--log-format", "json", "--subreaper"];
        assert_eq!(parse_str(&args), Ok(Command::Run(run)));
        let check = Options {
            config: "c.json".into(),
            port: None,
            log_format: LogFormat::Text,
            subreaper: false,
            print: false,
        };
        assert_eq!(parse_str(&["--check", "--config", "c.json"]), Ok(Command::Check(check)));
        let Ok(Command::Check(printed)) = parse_str(&["--check", "--print", "-c", "c.yaml"]) else { panic!("--print") };
        assert!(printed.print);
        assert!(parse_str(&["--print", "-c", "c.yaml"]).is_err(), "--print without --check");
        assert_eq!(parse_str(&["--version"]), Ok(Command::Version));
        assert_eq!(parse_str(&["-h"]), Ok(Command::Help));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse_str(&[]).is_err());
        assert!(parse_str(&["-c", "x.yaml", "--port", "70000"]).is_err());
        assert!(parse_str(&["-c", "x.yaml", "--bogus"]).is_err());
        assert!(parse_str(&["-c", "x.yaml", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn parses_simulate() {
        let args = [
            "simulate",
            "-c",
            "c.yaml",
            "--scenario",
            "poisson",
            "--param",
            "rate=2",
            "--policy",
            "fifo",
            "--policy",
            "cost_aware",
            "--compare",
            "--slo",
            "30",
            "--seed",
            "7",
            "--json",
        ];
        let Ok(Command::Simulate(o)) = parse_str(&args) else { panic!("{:?}", parse_str(&args)) };
        assert_eq!(o.config, PathBuf::from("c.yaml"));
        assert_eq!(o.scenario.as_deref(), Some("poisson"));
        assert_eq!(o.params, vec![("rate".to_owned(), "2".to_owned())]);
        assert_eq!(o.policies, vec!["fifo".to_owned(), "cost_aware".to_owned()]);
        assert!(o.compare && o.json);
        assert_eq!((o.slo, o.seed), (Some(30.0), 7));
        assert!(parse_str(&["simulate", "-c", "c.yaml"]).is_err(), "needs a workload");
        assert!(parse_str(&["simulate", "-c", "c", "--trace", "t", "--scenario", "s"]).is_err());
        assert!(parse_str(&["simulate", "-c", "c", "--trace", "t", "--param", "x"]).is_err());
        assert!(parse_str(&["simulate", "-c", "c", "--trace", "t", "--bogus"]).is_err());
    }
}

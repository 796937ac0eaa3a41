//! The command line: `llmux -c FILE [-p PORT] [--check]`.

use std::ffi::OsString;
use std::path::PathBuf;

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Serve with this config.
    Run(Options),
    /// Validate the config and exit.
    Check(Options),
    /// Print the version.
    Version,
    /// Print the help.
    Help,
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
    llmux -c <FILE> [-p <PORT>] [--log-format text|json] [--subreaper] [--check]

OPTIONS:
    -c, --config <FILE>  Config file (.yaml, .yml or .json)
    -p, --port <PORT>    Listen port, overriding the config (0: any free port)
        --log-format <F> Log lines as `text` (default) or `json`
        --subreaper      Adopt and reap the orphans of hooks (backends started
                         with `&`), as PID 1 does; llmux reaps them anyway
                         when it runs as PID 1
        --check          Validate the config and exit
    -V, --version        Print the version
    -h, --help           Print this help

ENVIRONMENT:
    RUST_LOG             Log filter (default: info), e.g. RUST_LOG=llmux=debug
                         (debug adds one line per request)

SIGNALS:
    SIGHUP               Reread the config file (as POST /llmux/reload)
    SIGTERM, SIGINT      Shut down gracefully
";

/// Parses `args` (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Command, String> {
    let mut args = pico_args::Arguments::from_vec(args);
    if args.contains(["-h", "--help"]) {
        return Ok(Command::Help);
    }
    if args.contains(["-V", "--version"]) {
        return Ok(Command::Version);
    }
    let check = args.contains("--check");
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
    let config = config.ok_or("missing --config <FILE> (see --help)")?;
    let options = Options { config, port, log_format: log_format.unwrap_or_default(), subreaper };
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
        let run = Options { config: "c.yaml".into(), port: Some(0), log_format: LogFormat::Json, subreaper: true };
        let args = ["-c", "c.yaml", "-p", "0", "--log-format", "json", "--subreaper"];
        assert_eq!(parse_str(&args), Ok(Command::Run(run)));
        let check = Options { config: "c.json".into(), port: None, log_format: LogFormat::Text, subreaper: false };
        assert_eq!(parse_str(&["--check", "--config", "c.json"]), Ok(Command::Check(check)));
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
}

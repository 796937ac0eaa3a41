//! The command line: `--help` text (which also documents every endpoint and
//! fault header) and option parsing.

pub const USAGE: &str = "\
llmux-standin: a stand-in OpenAI-compatible backend for llmux's tests and benches

USAGE:
    llmux-standin --port P --model NAME [--host ADDR] [--load-ms N] [--concurrency K]

OPTIONS:
    --port P       TCP port to listen on (0 picks a free port)
    --model NAME   the one model this backend serves
    --host ADDR    address to bind [default: 127.0.0.1]
    --load-ms N    answer 503 (\"loading\") for N ms after start [default: 0]
    --concurrency K
                   serve at most K requests at once (not /health, not
                   /standin/*); each holds its slot for its whole service
                   time (delay and streaming included), more wait for one
                   [default: unlimited]
    -h, --help     print this help and exit

The first line on stdout is `listening on ADDR:PORT` (the bound address).
SIGTERM and SIGINT stop the server with exit code 0.

ENDPOINTS:
    GET  /health               200 {\"status\":\"ok\"} (503 while loading)
    GET  /v1/models
    POST /v1/chat/completions  (\"stream\": true for SSE)
    POST /v1/completions
    POST /v1/embeddings
    POST /v1/audio/transcriptions, /v1/audio/translations
                               a multipart/form-data upload: answers
                               {\"model\",\"fields\":[{\"name\",\"filename\",\"size\",\"value\"}],
                               \"body_len\",\"body_fnv64\"} (404 if its model field is
                               not this backend's model)
    GET  /standin/stats        {\"requests\",\"cancelled\",\"in_flight\",\"max_held\",\"connections\"}
                               (max_held: the most requests held at once,
                               those waiting for a --concurrency slot included)
    GET  /standin/requests     the last 256 requests

FAULT HEADERS (per request, not on /standin/*):
    x-standin-delay-ms: N          wait N ms before the response head
                                   (a top-level \"standin_service_ms\": N in
                                   the JSON body does the same; the header
                                   wins if both are given)
    x-standin-chunks: N            SSE chunk count [default: 5]
    x-standin-chunk-ms: M          wait M ms between SSE chunks [default: 0]
    x-standin-hang: headers|stream never answer / hang after the first chunk
    x-standin-reset: headers|stream RST at once / RST after two chunks
    x-standin-malformed: 1         answer with invalid HTTP and close
    x-standin-status: CODE         answer CODE with an OpenAI error body
    x-standin-echo: 1              answer with a JSON echo of the request
";

/// The parsed command line.
pub struct Config {
    pub host: String,
    pub port: u16,
    pub model: String,
    pub load_ms: u64,
    /// At most this many requests served at once (`None`: unlimited).
    pub concurrency: Option<usize>,
}

/// Parses the process arguments; `Ok(None)` means `--help`.
pub fn parse_args() -> Result<Option<Config>, String> {
    let mut args = pico_args::Arguments::from_env();
    if args.contains(["-h", "--help"]) {
        return Ok(None);
    }
    let port: u16 = args.value_from_str("--port").map_err(|e| arg_error("--port", e))?;
    let host: Option<String> = args.opt_value_from_str("--host").map_err(|e| arg_error("--host", e))?;
    let model: String = args.value_from_str("--model").map_err(|e| arg_error("--model", e))?;
    let load_ms: Option<u64> = args.opt_value_from_str("--load-ms").map_err(|e| arg_error("--load-ms", e))?;
    let concurrency: Option<usize> =
        args.opt_value_from_str("--concurrency").map_err(|e| arg_error("--concurrency", e))?;
    let rest = args.finish();
    if !rest.is_empty() {
        let rest: Vec<String> = rest.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        return Err(format!("unexpected argument(s): {}", rest.join(" ")));
    }
    let max = tokio::sync::Semaphore::MAX_PERMITS;
    if concurrency.is_some_and(|k| k == 0 || k > max) {
        return Err(format!("--concurrency must be between 1 and {max}"));
    }
    if model.is_empty() || model.chars().any(char::is_control) {
        return Err("--model must be non-empty and free of control characters".to_owned());
    }
    Ok(Some(Config {
        host: host.unwrap_or_else(|| "127.0.0.1".to_owned()),
        port,
        model,
        load_ms: load_ms.unwrap_or(0),
        concurrency,
    }))
}

fn arg_error(option: &str, e: pico_args::Error) -> String {
    match e {
        pico_args::Error::MissingOption(_) => e.to_string(),
        _ => format!("{option}: {e}"),
    }
}

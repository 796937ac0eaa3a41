#!/usr/bin/env python3
"""Writes the committed seed corpus: fuzz/corpus/<target>/seed-*.

Run from anywhere: `python3 fuzz/seeds.py`. It rewrites every seed-* file
(and removes stale ones) and leaves libFuzzer's own finds alone. Seeds are
named `seed-...` because .gitignore drops the hex-named files libFuzzer
adds. Inputs over ~1 MB are not seeds: fuzz/src/checks.rs generates them
at test time (`generated_cases`).
"""

import base64
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def png_data_url(width, height):
    """A real (grey gradient) PNG, as OpenAI's vision examples send it."""
    raw = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "model": {"type": "string", "description": "a nested `model` that is not the request's"},
                },
                "required": ["location"],
            },
        },
    }
]

CHAT_TOOLS = {
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What's the weather like in Boston today?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc123",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": "{\"location\": \"Boston, MA\", \"model\": \"x\"}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc123", "content": "{\"temperature\": 22, \"unit\": \"celsius\"}"},
    ],
    "tools": TOOLS,
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "metadata": {"model": "not-this-one"},
    "model": "gpt-4o",
}


def extract_seeds(image_url):
    simple_chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}]}
    deep = lambda n: '{"model":"m","x":' + "[" * n + "1" + "]" * n + "}"
    deep_obj = lambda n: '{"a":' * n + '"model":"m"' + "}" * n
    seeds = {
        "chat-model-first.json": compact(simple_chat),
        "chat-model-last-sdk.json": compact(
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
             "stream": True, "stream_options": {"include_usage": True}, "temperature": 0.7, "max_tokens": 256,
             "model": "gpt-4o-mini"}),
        "chat-pretty.json": json.dumps(simple_chat, indent=2) + "\n",
        "chat-tools.json": compact(CHAT_TOOLS),
        "chat-tools-pretty.json": json.dumps(CHAT_TOOLS, indent=4),
        "chat-response-format-schema.json": compact({
            "model": "gpt-4o-2024-08-06",
            "messages": [{"role": "user", "content": "extract"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
                "type": "object", "properties": {"model": {"type": "string"}}, "required": ["model"],
                "additionalProperties": False}}},
        }),
        "chat-vision-data-url.json": compact({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What's in this image?"},
                {"type": "image_url", "image_url": {"url": image_url, "detail": "high"}},
            ]}],
        }),
        "chat-logit-bias-numbers.json": compact({
            "model": "m", "messages": [], "logit_bias": {"50256": -100, "1": 1.5e2}, "seed": -9007199254740993,
            "top_p": 1.0e-7, "n": 1, "stop": ["\n", "</s>"], "user": "u-1"}),
        "embeddings-string.json": compact({"input": "The food was delicious and the waiter...",
                                           "model": "text-embedding-3-small", "encoding_format": "float"}),
        "embeddings-array.json": compact({"model": "text-embedding-ada-002",
                                          "input": ["first text", "second text", "third"], "dimensions": 256}),
        "embeddings-tokens.json": compact({"model": "text-embedding-3-large", "input": [[1234, 5678, 90], [1, 2]]}),
        "completions-legacy.json": compact({"model": "gpt-3.5-turbo-instruct", "prompt": ["Say this", "is a test"],
                                            "max_tokens": 7, "echo": False, "logprobs": None, "suffix": None}),
        "prompt-100kb.json": compact({"messages": [{"role": "user", "content": "lorem ipsum dolor " * 6000}],
                                      "model": "long-context"}),
        "unicode-model.json": compact({"model": "日本語-モデル-🦙-ünïcödé-עברית", "messages": [
            {"role": "user", "content": "e\u0301 \u200d\ufeff 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u2028 \u2029"}]}),
        "escaped-model.json": r'{"model":"gpt\u002d4o\/mini \"q\" \\ \b\f\n\r\t \u00e9 \ud83d\ude00","messages":[]}',
        "escaped-key.json": r'{"\u006dodel":"escaped-key","messages":[]}',
        "escaped-key-duplicate.json": r'{"model":"a","\u006dodel":"b"}',
        "surrogate-pair.json": r'{"model":"\uD83E\uDD99","x":"\ud83d\ude00"}',
        "lone-high-surrogate.json": r'{"model":"a","x":"\ud800"}',
        "lone-low-surrogate.json": r'{"model":"a","x":"\udc00 tail"}',
        "high-then-non-low.json": r'{"model":"a","x":"\ud800\u0041"}',
        "escaped-backslash-u.json": r'{"model":"a","x":"\\ud800 \\\ud83d\ude00"}',
        "nul-escape.json": r'{"model":"a\u0000b"}',
        "raw-control-char.json": '{"model":"tab\there"}',
        "raw-del-and-c1.json": '{"model":"a\x7f\u0085"}',
        "invalid-utf8.json": b'{"model":"\xff\xfe"}',
        "overlong-utf8.json": b'{"model":"\xc0\xaf"}',
        "model-nested-only.json": compact({"messages": [{"role": "user", "content": "hi", "model": "inner"}],
                                           "metadata": {"model": "meta"}}),
        "model-nested-and-top.json": compact({"tools": [{"function": {"model": "x"}}], "model": "z",
                                              "metadata": {"model": "y"}}),
        "model-duplicate.json": '{"model":"a","messages":[],"model":"b"}',
        "model-duplicate-same.json": '{"model":"a","model":"a"}',
        "model-duplicate-non-string.json": '{"model":"a","model":1}',
        "model-missing.json": compact({"messages": [{"role": "user", "content": "hi"}]}),
        "model-number.json": '{"model":4}',
        "model-null.json": '{"model":null}',
        "model-bool.json": '{"model":true}',
        "model-array.json": '{"model":["gpt-4o"]}',
        "model-object.json": '{"model":{"name":"gpt-4o"}}',
        "model-empty-string.json": '{"model":""}',
        "empty-object.json": "{}",
        "not-object-array.json": '[{"model":"a"}]',
        "not-object-string.json": '"model"',
        "not-object-number.json": "42",
        "null.json": "null",
        "empty.json": "",
        "whitespace.json": ' \n\t{ "model" : "ws" }\r\n ',
        "bom.json": '\ufeff{"model":"bom"}',
        "trailing-comma.json": '{"model":"a",}',
        "trailing-garbage.json": '{"model":"a"} x',
        "two-objects.json": '{"model":"a"} {"model":"b"}',
        "truncated.json": '{"model":"a","messages":[{"role":"us',
        "unterminated-string.json": '{"model":"a',
        "comment.json": '{"model":"a" /* c */}',
        "single-quotes.json": "{'model':'a'}",
        "big-numbers.json": '{"model":"a","n":1e400,"m":18446744073709551616,"k":-0.0e-5}',
        "leading-zero.json": '{"model":"a","n":01}',
        "number-edge.json": '{"model":"a","n":[-0,0.0,1E+2,1e-2,123456789012345678901234567890,-1.7976931348623157e308]}',
        "nan.json": '{"model":"a","n":NaN}',
        "float-max-rounding.json": '{"model":"a","n":[1.7976931348623157e308,-1.7976931348623158e308,1.8e308]}',
        "float-rounds-to-max.json": '{"model":"a","n":-1.7976931348623158e308}',
        "deep-arrays-126.json": deep(126),
        "deep-arrays-127.json": deep(127),
        "deep-arrays-128.json": deep(128),
        "deep-objects-126.json": deep_obj(126),
        "deep-objects-128.json": deep_obj(128),
        "deep-unclosed.json": '{"model":"m","x":' + "[" * 200,
        "many-small-keys.json": "{" + ",".join(f'"k{i}":{i}' for i in range(2000)) + ',"model":"m"}',
        "model-key-prefix.json": '{"models":"a","mode":"b","model ":"c","Model":"d"}',
        # Found by fuzzing, fixed (simd-json 0.14 -> 0.19): llmux accepted these, serde_json does not,
        "fixed-nul-after-number.json": b'{"model":"a","n":1\x00}',
        "fixed-nul-after-literal.json": b'{"model":"a","b":true\x00junk}',
        "fixed-nul-hides-bytes.json": b'{"n":1\x00\x00junk,"model":"b"}',
        "fixed-bigint-garbage.json": '{"model":"a","n":1234567890123456789k}',
        "fixed-bigfloat-garbage.json": '{"model":"a","n":12345678901234567890.5e5k}',
        "fixed-fuzz-found-number.json": '{"model":"a","n":[-0,0.0,1E+2,1e-2,1234567890123456789012k91834567890]}',
        # ... and llmux rejected these, which serde_json accepts.
        "fixed-huge-exponent-zero.json": '{"model":"a","n":0e744073709551616}',
        "fixed-huge-negative-exponent.json": '{"model":"a","temperature":1e-99999999999}',
        "fixed-negative-big-int.json": '{"model":"a","seed":-12345678901234567890}',
        # ... an out-of-range float that simd-json 0.14 misread where it sat.
        "fixed-long-float-out-of-range.json": '{"model":"a","n":[-0,0.0,1E+2,1e-2,12345678901234567890123456789-2,'
                                              '1234.6789012345678901234931348623157e308]}',
    }
    return seeds


def yaml_model(name, port, extra=""):
    return f"  {name}:\n    port: {port}\n    wake: ./wake.sh\n    sleep: ./sleep.sh\n    alive: ./alive.sh\n{extra}"


def config_seeds(example):
    full_yaml = (
        "models:\n"
        + yaml_model("llama-8b", 8001, "    wake_timeout_secs: 900\n    sleep_timeout_secs: 60\n    alive_timeout_secs: 5\n")
        + "  qwen:\n    port: 8002\n    wake: |\n      set -e\n      curl -fsS -X POST http://127.0.0.1:$LLMUX_PORT/wake_up\n"
        + "    sleep: >\n      curl -fsS -X POST 'http://127.0.0.1:$LLMUX_PORT/sleep?level=1'\n"
        + "    alive: \"curl -fsS http://127.0.0.1:$LLMUX_PORT/health\"\n"
        + "policy:\n  request_timeout_secs: 300\n  drain_before_switch: true\n  drain_timeout_secs: 30\n"
        + "  min_active_secs: 30\n  on_sleep_failure: continue\n  wake_timeout_secs: 600\n"
        + "  sleep_timeout_secs: 120\n  alive_timeout_secs: 10\n"
        + "host: 127.0.0.1\nport: 3000\nmax_body_bytes: 67108864\nshutdown_grace_secs: 30\nupstream_idle_timeout_secs: 4\n"
    )
    full_json = {
        "models": {
            "a": {"port": 9001, "wake": "w", "sleep": "s", "alive": "a", "wake_timeout_secs": 5},
            "b": {"port": 9002, "wake": "w", "sleep": "s", "alive": "a"},
        },
        "policy": {"request_timeout_secs": 5, "drain_before_switch": False, "drain_timeout_secs": None,
                   "min_active_secs": 0, "on_sleep_failure": "abort"},
        "host": "::1", "port": 0, "max_body_bytes": 1, "shutdown_grace_secs": 0, "upstream_idle_timeout_secs": 4,
    }
    one = "models:\n" + yaml_model("a", 1)
    return {
        "example.yaml": example,
        "full.yaml": full_yaml,
        "minimal.yaml": one,
        "flow-style.yaml": "models: {a: {port: 1, wake: w, sleep: s, alive: a}, b: {port: 2, wake: w, sleep: s, alive: a}}\n",
        "full.json": json.dumps(full_json, indent=2),
        "minimal.json": '{"models":{"a":{"port":1,"wake":"w","sleep":"s","alive":"a"}}}',
        "json-duplicate-model.json": '{"models":{"a":{"port":1,"wake":"w","sleep":"s","alive":"a"},'
                                     '"a":{"port":2,"wake":"w","sleep":"s","alive":"a"}}}',
        "json-duplicate-key.json": '{"models":{"a":{"port":1,"port":2,"wake":"w","sleep":"s","alive":"a"}}}',
        "no-models.yaml": "port: 3000\n",
        "models-empty.yaml": "models: {}\n",
        "models-null.yaml": "models:\n",
        "models-list.yaml": "models:\n  - a\n  - b\n",
        "port-zero.yaml": "models:\n" + yaml_model("a", 0),
        "port-negative.yaml": "models:\n" + yaml_model("a", -1),
        "port-too-big.yaml": "models:\n" + yaml_model("a", 65536),
        "port-string.yaml": "models:\n" + yaml_model("a", "'8001'"),
        "port-float.yaml": "models:\n" + yaml_model("a", "8001.0"),
        "port-hex.yaml": "models:\n" + yaml_model("a", "0x1F41"),
        "ports-shared.yaml": "models:\n" + yaml_model("a", 8001) + yaml_model("b", 8001),
        "hook-empty.yaml": "models:\n  a:\n    port: 1\n    wake: ''\n    sleep: s\n    alive: a\n",
        "hook-blank.yaml": "models:\n  a:\n    port: 1\n    wake: \" \\t\\n \"\n    sleep: s\n    alive: a\n",
        "hook-null.yaml": "models:\n  a:\n    port: 1\n    wake:\n    sleep: s\n    alive: a\n",
        "hook-number.yaml": "models:\n  a:\n    port: 1\n    wake: 1\n    sleep: s\n    alive: a\n",
        "hook-missing.yaml": "models:\n  a:\n    port: 1\n    wake: w\n    sleep: s\n",
        "hook-timeout-zero.yaml": "models:\n" + yaml_model("a", 1, "    wake_timeout_secs: 0\n"),
        "policy-timeout-zero.yaml": one + "policy:\n  alive_timeout_secs: 0\n",
        "request-timeout-zero.yaml": one + "policy:\n  request_timeout_secs: 0\n  drain_timeout_secs: 0\n",
        "timeout-big-but-fine.yaml": one + "policy:\n  request_timeout_secs: 9000000000000000000\n"
                                           "  min_active_secs: 9000000000000000000\n",
        # Found by fuzzing, fixed: huge durations were accepted, then Instant arithmetic panicked.
        "fixed-hook-timeout-u64-max.yaml": "models:\n" + yaml_model("a", 1, "    alive_timeout_secs: 18446744073709551615\n"),
        "fixed-request-timeout-huge.yaml": one + "policy:\n  request_timeout_secs: 9300000000000000000\n",
        "fixed-min-active-huge.json": '{"models":{"a":{"port":1,"wake":"w","sleep":"s","alive":"a"}},'
                                      '"policy":{"min_active_secs":18446744073709551615}}',
        "fixed-grace-u64-max.yaml": one + "shutdown_grace_secs: 18446744073709551615\n",
        "fixed-header-read-timeout-huge.yaml": one + "limits:\n  header_read_timeout_secs: 18446744073709551615\n",
        # Found by fuzzing, fixed: accepted, then tokio's semaphore panicked at start.
        "fixed-max-connections-huge.yaml": one + "limits:\n  max_connections: 18446744073709551615\n",
        "limits-full.yaml": one + "limits:\n  header_read_timeout_secs: 30\n  max_header_bytes: 65536\n"
                                 "  max_headers: 100\n  body_read_timeout_secs: 120\n  max_connections: 10000\n"
                                 "  upstream_connect_timeout_secs: 5\n  upstream_first_byte_timeout_secs: 600\n"
                                 "  h2_max_concurrent_streams: 256\n  h2_max_header_list_bytes: 65536\n"
                                 "  h2_max_pending_reset_streams: 20\n  max_queued_requests: 1024\n"
                                 "  max_queued_body_bytes: 1073741824\nworkers: 2\napi_keys: [sk-1, sk-2]\n",
        "limits-zero.yaml": one + "limits:\n  max_headers: 0\n",
        "limits-unknown-key.yaml": one + "limits:\n  max_header: 1\n",
        "workers-zero.yaml": one + "workers: 0\n",
        "timeout-negative.yaml": one + "policy:\n  request_timeout_secs: -1\n",
        "max-body-zero.yaml": one + "max_body_bytes: 0\n",
        "unknown-top-key.yaml": one + "polcy: {}\n",
        "unknown-model-key.yaml": "models:\n" + yaml_model("a", 1, "    prot: 2\n"),
        "unknown-policy-key.yaml": one + "policy:\n  drain_before: true\n",
        "on-sleep-failure-bad.yaml": one + "policy:\n  on_sleep_failure: retry\n",
        "host-bad.yaml": one + "host: localhost\n",
        "host-v6.yaml": one + "host: '::'\n",
        "name-empty.yaml": "models:\n" + yaml_model("''", 1),
        "name-blank.yaml": "models:\n" + yaml_model("'  '", 1),
        "name-control.yaml": "models:\n" + yaml_model('"a\\x01b"', 1),
        "name-newline.yaml": "models:\n" + yaml_model('"a\\nb"', 1),
        "name-number.yaml": "models:\n" + yaml_model("123", 1),
        "name-null.yaml": "models:\n" + yaml_model("~", 1),
        "name-unicode.yaml": "models:\n" + yaml_model("'日本語 🦙'", 1),
        "name-duplicate.yaml": "models:\n" + yaml_model("a", 1) + yaml_model("a", 2),
        "anchors.yaml": "hooks: &h {wake: w, sleep: s, alive: a}\nmodels:\n  a: {port: 1, <<: *h}\n",
        "merge-key.yaml": "models:\n  a: &m\n    port: 1\n    wake: w\n    sleep: s\n    alive: a\n  b:\n    <<: *m\n    port: 2\n",
        "alias-bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                           "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nmodels: {}\n",
        "tags.yaml": "models: !!map\n  a: !!map {port: !!int 1, wake: !!str w, sleep: s, alive: a}\n",
        "custom-tag.yaml": "models:\n  a: !model {port: 1, wake: w, sleep: s, alive: a}\n",
        "multi-document.yaml": one + "---\n" + one,
        "bool-yes.yaml": one + "policy:\n  drain_before_switch: yes\n",
        "tabs.yaml": "models:\n\ta:\n\t\tport: 1\n",
        "bom.yaml": "\ufeff" + one,
        "deep.yaml": "models: " + "[" * 200 + "]" * 200 + "\n",
        "not-a-map.yaml": "- a\n- b\n",
        "empty.yaml": "",
        "json-in-yaml.yaml": '{"models": {"a": {"port": 1, "wake": "w", "sleep": "s", "alive": "a"}}}',
        "json-trailing.json": '{"models":{"a":{"port":1,"wake":"w","sleep":"s","alive":"a"}}} {}',
        "json-port-float.json": '{"models":{"a":{"port":1.0,"wake":"w","sleep":"s","alive":"a"}}}',
    }


def http(lines, body=b""):
    head = "".join(line + "\r\n" for line in lines) + "\r\n"
    return head.encode() + (body if isinstance(body, bytes) else body.encode())


def post(path, body, extra=(), length=None):
    body = body if isinstance(body, bytes) else body.encode()
    n = len(body) if length is None else length
    return http([f"POST {path} HTTP/1.1", "Host: llmux", "Content-Type: application/json",
                 f"Content-Length: {n}", *extra], body)


def chunked(body, sizes):
    body = body.encode()
    out, at = b"", 0
    for size in sizes:
        part = body[at:at + size]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        at += size
    if at < len(body):
        out += f"{len(body) - at:x}\r\n".encode() + body[at:] + b"\r\n"
    return out + b"0\r\n\r\n"


def request_seeds(image_url):
    chat = compact({"model": "m", "messages": [{"role": "user", "content": "Hello!"}]})
    tools = compact({**CHAT_TOOLS, "model": "m"})
    vision = compact({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url}}]}]})
    cpath = "/v1/chat/completions"
    get = lambda path, *extra: http([f"GET {path} HTTP/1.1", "Host: llmux", *extra])
    te_head = [f"POST {cpath} HTTP/1.1", "Host: llmux", "Transfer-Encoding: chunked"]
    return {
        "chat.http": post(cpath, chat),
        "chat-request-id.http": post(cpath, chat, ["X-Request-Id: fuzz-req-1"]),
        "chat-tools.http": post(cpath, tools, ["X-Request-Id: tools-1", "Accept: text/event-stream"]),
        "chat-vision.http": post(cpath, vision),
        "embeddings.http": post("/v1/embeddings", compact({"model": "m", "input": ["a", "b"]})),
        "query-string.http": post("/v1/chat/completions?api-version=2024-06-01&x=%20", chat),
        "absolute-form.http": post("http://example.com:8080/v1/chat/completions?q=1", chat),
        "get-with-body.http": http(["GET /v1/anything HTTP/1.1", "Host: llmux", "Content-Length: 13"], '{"model":"m"}'),
        "health-with-model-body.http": http(["GET /health HTTP/1.1", "Host: llmux", "Content-Length: 13"],
                                            '{"model":"m"}'),
        "unknown-model.http": post(cpath, '{"model":"gpt-9","messages":[]}', ["X-Request-Id: unknown-1"]),
        "invalid-body.http": post(cpath, '{"model":', ["X-Request-Id: bad-1"]),
        "duplicate-model.http": post(cpath, '{"model":"m","model":"m"}', ["X-Request-Id: dup-1"]),
        "no-model.http": post(cpath, '{"messages":[]}'),
        "no-body-post.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "Content-Length: 0"]),
        "health.http": get("/health"),
        "models.http": get("/v1/models"),
        "model-m.http": get("/v1/models/m"),
        "model-percent.http": get("/v1/models/%6D%"),
        "model-percent-bad-utf8.http": get("/v1/models/%ff%fe%C3"),
        "model-missing.http": get("/v1/models/nope"),
        "head-health.http": http(["HEAD /health HTTP/1.1", "Host: llmux"]),
        "head-chat.http": http([f"HEAD {cpath} HTTP/1.1", "Host: llmux", f"Content-Length: {len(chat)}"], chat),
        "options-star.http": http(["OPTIONS * HTTP/1.1", "Host: llmux"]),
        "chunked.http": http(te_head, chunked(chat, [5, 7, 1])),
        "chunked-ext-trailers.http": http(te_head, b"5;name=value\r\n" + chat.encode()[:5] + b"\r\n"
                                          + f"{len(chat) - 5:X}\r\n".encode() + chat.encode()[5:]
                                          + b"\r\n0\r\nX-Trailer: t\r\n\r\n"),
        "chunked-bad-size.http": http(te_head, b"zz\r\nhello\r\n0\r\n\r\n"),
        "chunked-size-overflow.http": http(te_head, b"ffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
        "chunked-missing-crlf.http": http(te_head, b"5\r\nhelloX0\r\n\r\n"),
        "chunked-truncated.http": http(te_head, b"40\r\n{\"model\":\"m\""),
        "te-gzip-chunked.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "Transfer-Encoding: gzip, chunked"],
                                     chunked(chat, [])),
        "te-chunked-gzip.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "Transfer-Encoding: chunked, gzip"],
                                     chat),
        "te-identity.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "Transfer-Encoding: identity",
                                  f"Content-Length: {len(chat)}"], chat),
        "cl-and-te.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "Content-Length: 4",
                                "Transfer-Encoding: chunked"], chunked(chat, [3])),
        "te-and-cl-smuggle.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "Transfer-Encoding: chunked",
                                        "Content-Length: 48"], b"0\r\n\r\n" + post(cpath, chat)),
        "cl-duplicate-differ.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", f"Content-Length: {len(chat)}",
                                          "Content-Length: 3"], chat),
        "cl-duplicate-same.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", f"Content-Length: {len(chat)}",
                                        f"Content-Length: {len(chat)}"], chat),
        "cl-list.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", f"Content-Length: {len(chat)}, {len(chat)}"],
                             chat),
        "cl-negative.http": post(cpath, chat, length=-1),
        "cl-plus.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", f"Content-Length: +{len(chat)}"], chat),
        "cl-huge.http": post(cpath, chat, length=99999999999999999999),
        "cl-short.http": post(cpath, chat, length=10),
        "cl-long-truncated.http": post(cpath, chat, length=len(chat) + 100),
        "cl-over-limit.http": post(cpath, chat, length=70000),
        "expect-100.http": post(cpath, chat, ["Expect: 100-continue", "X-Request-Id: expect-1"]),
        "expect-100-over-limit.http": post(cpath, chat, ["Expect: 100-continue"], length=1 << 30),
        "expect-100-no-body-sent.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "Content-Length: 13",
                                              "Expect: 100-continue"]),
        "expect-unknown.http": post(cpath, chat, ["Expect: 200-ok"]),
        "pipelined.http": post(cpath, chat, ["X-Request-Id: p1"]) + get("/health") + post(cpath, '{"model":"zz"}')
                          + post(cpath, chat, ["X-Request-Id: p4"]),
        "pipelined-same-id.http": post(cpath, chat, ["X-Request-Id: same"]) + post(cpath, "{", ["X-Request-Id: same"])
                                  + post(cpath, chat, ["X-Request-Id: same"]),
        "pipelined-close.http": post(cpath, chat, ["Connection: close"]) + post(cpath, chat),
        "pipelined-then-garbage.http": post(cpath, chat) + b"\x00\x01\x02 garbage\r\n\r\n",
        "http10.http": http([f"POST {cpath} HTTP/1.0", "Host: llmux", f"Content-Length: {len(chat)}"], chat),
        "http10-keepalive.http": http([f"POST {cpath} HTTP/1.0", "Connection: keep-alive",
                                       f"Content-Length: {len(chat)}"], chat) + get("/health").replace(b"1.1", b"1.0"),
        "http09.http": b"GET /health\r\n\r\n",
        "http2-version-h1.http": http(["GET /health HTTP/2.0", "Host: llmux"]),
        "h2-preface.http": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        "h2-preface-partial.http": b"PRI * HTTP/2.0\r\n\r\n",
        "obs-fold.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "X-Folded: a", " b", "\tc",
                               f"Content-Length: {len(chat)}"], chat),
        "obs-fold-first.http": http([f"POST {cpath} HTTP/1.1", " Host: llmux", f"Content-Length: {len(chat)}"], chat),
        "space-before-colon.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", f"Content-Length : {len(chat)}"],
                                        chat),
        "lf-only.http": post(cpath, chat).replace(b"\r\n", b"\n"),
        "bare-cr.http": http([f"POST {cpath} HTTP/1.1", "Host: llmux", "X-A: a\rb",
                              f"Content-Length: {len(chat)}"], chat),
        "huge-headers-20k.http": post(cpath, chat, [f"X-Pad-{i}: " + "p" * 200 for i in range(100)]),
        "long-uri.http": get("/v1/models/" + "a" * 20000),
        "many-headers.http": get("/health", *[f"X-H{i}: v" for i in range(150)]),
        "headers-at-limit-forwarded.http": post(cpath, chat, [f"X-H{i}: v" for i in range(96)]),
        "request-id-long.http": post(cpath, chat, ["X-Request-Id: " + "r" * 129]),
        "request-id-empty.http": post(cpath, chat, ["X-Request-Id: "]),
        "request-id-twice.http": post(cpath, chat, ["X-Request-Id: one", "X-Request-Id: two"]),
        "request-id-obs-text.http": post(cpath, chat, []).replace(b"Host: llmux", b"Host: llmux\r\nX-Request-Id: \xe9\xff"),
        "hop-by-hop.http": post(cpath, chat, ["Connection: keep-alive, X-Secret, TE", "X-Secret: 1",
                                              "Keep-Alive: timeout=5", "TE: trailers", "Proxy-Authorization: x",
                                              "Trailer: X-T", "X-Forwarded-For: 10.0.0.1"]),
        "upgrade-websocket.http": http(["GET /v1/realtime HTTP/1.1", "Host: llmux", "Connection: Upgrade",
                                        "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]),
        "upgrade-h2c.http": post(cpath, chat, ["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                                               "HTTP2-Settings: AAMAAABkAAQAAP__"]),
        "connect.http": http(["CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"]),
        "method-custom.http": http([f"BREW {cpath} HTTP/1.1", "Host: llmux", f"Content-Length: {len(chat)}"], chat),
        "method-lowercase.http": http([f"post {cpath} HTTP/1.1", "Host: llmux", f"Content-Length: {len(chat)}"], chat),
        "bad-request-line.http": b"POST  /v1/chat/completions  HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad-version.http": b"GET / HTTP/1.7\r\nHost: x\r\n\r\n",
        "nul-in-header.http": b"GET /health HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
        "non-ascii-path.http": "GET /v1/models/é HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        "empty-lines-first.http": b"\r\n\r\n" + get("/health"),
        "garbage.http": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "empty.http": b"",
        # Found by fuzzing, fixed (simd-json 0.19): llmux forwarded a body that is not JSON.
        "fixed-nul-in-body.http": post(cpath, b'{"model":"m","n":1\x00x}', ["X-Request-Id: nul-1"]),
    }


def form(boundary, fields, file=None, crlf="\r\n"):
    """A multipart/form-data body as openai-python sends it: file first."""
    out = b""
    if file is not None:
        out += (f"--{boundary}{crlf}Content-Disposition: form-data; name=\"file\"; filename=\"speech.wav\"{crlf}"
                f"Content-Type: audio/wav{crlf}{crlf}").encode() + file + crlf.encode()
    for name, value in fields:
        out += f"--{boundary}{crlf}Content-Disposition: form-data; name=\"{name}\"{crlf}{crlf}{value}{crlf}".encode()
    return out + f"--{boundary}--{crlf}".encode()


def multipart_seeds():
    """First line: a Content-Type (or a bare boundary); then the body."""
    b = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    ct = f"multipart/form-data; boundary={b}\n".encode()
    wav = b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00" + bytes(range(256)) + b"\r\n-\r\n--x"
    fields = [("model", "whisper-1"), ("language", "en"), ("response_format", "json")]
    return {
        "openai-transcription.txt": ct + form(b, fields, wav),
        "model-first.txt": ct + form(b, [("model", "whisper-1")], wav),
        "no-file.txt": ct + form(b, [("model", "m")]),
        "empty-model.txt": ct + form(b, [("model", "")]),
        "no-model.txt": ct + form(b, [("language", "en")], wav),
        "two-models.txt": ct + form(b, [("model", "a"), ("model", "b")]),
        "quoted-boundary.txt": b'multipart/form-data; boundary="a b:c"; charset=utf-8\n' + form("a b:c", [("model", "m")]),
        "bare-boundary.txt": b"xYz\n" + form("xYz", [("model", "m")]),
        "lf-only.txt": ct + form(b, [("model", "m")], crlf="\n"),
        "preamble-epilogue.txt": ct + b"preamble\r\n" + form(b, [("model", "m")]) + b"epilogue --" + b.encode(),
        "padding-after-boundary.txt": ct + f"--{b} \t\r\nContent-Disposition: form-data; name=model\r\n\r\nm\r\n--{b}--".encode(),
        "lowercase-header-lf.txt": ct + f"--{b}\r\ncontent-disposition: form-data; name=\"model\"\nX: y\r\n\r\nm\r\n--{b}--".encode(),
        "two-dispositions.txt": ct + f"--{b}\r\nContent-Disposition: form-data; name=model\r\nContent-Disposition: form-data; name=x\r\n\r\nm\r\n--{b}--".encode(),
        "escaped-name.txt": ct + f'--{b}\r\nContent-Disposition: form-data; name="mo\\"del"\r\n\r\nm\r\n--{b}--'.encode(),
        "filename-before-name.txt": ct + f'--{b}\r\nContent-Disposition: form-data; filename="model"; name=model\r\n\r\nm\r\n--{b}--'.encode(),
        "no-headers.txt": ct + f"--{b}\r\n\r\nvalue\r\n\r\n--{b}\r\nContent-Disposition: form-data; name=model\r\n\r\nm\r\n--{b}--".encode(),
        "unclosed.txt": ct + f"--{b}\r\nContent-Disposition: form-data; name=model\r\n\r\nm".encode(),
        "bad-header.txt": ct + f"--{b}\r\nBad Header: x\r\n\r\nm\r\n--{b}--".encode(),
        "boundary-in-value.txt": ct + f"--{b}\r\nContent-Disposition: form-data; name=model\r\n\r\nm--{b}\r\n--{b}--".encode(),
        "33-headers.txt": ct + f"--{b}\r\n".encode() + b"".join(f"X-{i}: v\r\n".encode() for i in range(33))
            + f"Content-Disposition: form-data; name=model\r\n\r\nm\r\n--{b}--".encode(),
        "non-utf8-model.txt": ct + f"--{b}\r\nContent-Disposition: form-data; name=model\r\n\r\n".encode() + b"\xff\xfe" + f"\r\n--{b}--".encode(),
        "not-multipart-type.txt": b"application/json\n" + form("b", [("model", "m")]),
        "empty.txt": b"",
        # Found by fuzzing, fixed: llmux took a boundary from a Content-Type
        # ending in a CR (trimmed as white space), which multer refuses.
        "fixed-content-type-cr.txt": f"multipart/form-data; boundary={b}\r\n".encode() + form(b, [("model", "m")]),
        # ... and one with a tab after the `;`, which multer's `mime` refuses.
        "fixed-content-type-tab.txt": f"multipart/form-data;\t boundary={b}\n".encode() + form(b, [("model", "m")]),
        # ... and one with a byte over 0x7f in a quoted parameter.
        "fixed-content-type-non-ascii.txt": f"multipart/form-data; boundary={b}; charset=\"".encode() + b"\xe9\"\n"
            + form(b, [("model", "m")]),
    }


def write(target, seeds):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.startswith("seed-"):
            os.remove(os.path.join(folder, name))
    for name, content in seeds.items():
        data = content if isinstance(content, bytes) else content.encode()
        with open(os.path.join(folder, "seed-" + name), "wb") as f:
            f.write(data)


def main():
    image_url = png_data_url(48, 48)
    with open(os.path.join(os.path.dirname(ROOT), "..", "config.example.yaml")) as f:
        example = f.read()
    write("extract_model", extract_seeds(image_url))
    # The rewrite runs on every body the scan accepts: the same bodies.
    write("rewrite_model", extract_seeds(image_url))
    write("config", config_seeds(example))
    write("request", request_seeds(image_url))
    write("multipart", multipart_seeds())


if __name__ == "__main__":
    main()

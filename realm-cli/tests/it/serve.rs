//! `realm serve` on the real models, over plain HTTP as a client talks to
//! it: answers equal `realm run`'s, streamed answers equal whole ones,
//! requests decoded together equal requests run alone, and bad requests,
//! a full server and a client that goes away get what they should.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

use common::{cached, guest, realm};
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// A running `realm serve`, stopped when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_realm"))
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server ended before it listened")
                .unwrap();
            if let Some((_, rest)) = line.split_once(" on http://") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep reading its log, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, addr }
    }

    /// Sends a request (HTTP/1.0, so that the body ends with the
    /// connection) with extra header lines; the connection, after the
    /// request is written.
    fn send_with(&self, method: &str, path: &str, headers: &str, body: &str) -> TcpStream {
        let mut c = TcpStream::connect(&self.addr).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.0\r\ncontent-type: application/json\r\n{headers}\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        c
    }

    fn send(&self, method: &str, path: &str, body: &str) -> TcpStream {
        self.send_with(method, path, "", body)
    }

    /// (status, body) of a request with extra header lines.
    fn call_with(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let mut raw = String::new();
        self.send_with(method, path, headers, body)
            .read_to_string(&mut raw)
            .unwrap();
        status_and_body(&raw)
    }

    /// (status, body) of a request.
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.call_with(method, path, "", body)
    }

    /// The JSON answer of a POST that must succeed.
    fn post(&self, path: &str, body: &Value) -> Value {
        let (status, text) = self.call("POST", path, &body.to_string());
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The events of a streamed POST whose events are named by their
    /// data's `type` (Anthropic's and the Responses API's): names and data.
    fn named_events(&self, path: &str, body: &Value) -> (Vec<String>, Vec<Value>) {
        let (status, raw) = self.call("POST", path, &body.to_string());
        assert_eq!(status, 200, "{raw}");
        let names: Vec<String> = raw
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .map(str::to_string)
            .collect();
        let events: Vec<Value> = raw
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(names.len(), events.len());
        for (n, e) in names.iter().zip(&events) {
            assert_eq!(&e["type"], n.as_str());
        }
        (names, events)
    }

    /// Sends the server SIGINT (Ctrl-C).
    fn interrupt(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// The server's exit status, waiting for it at most `limit`.
    fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let waited = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(waited.elapsed() < limit, "the server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `data:` payloads of a streamed POST.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let (status, text) = self.call("POST", path, &body.to_string());
        assert_eq!(status, 200, "{text}");
        text.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

fn status_and_body(raw: &str) -> (u16, String) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SYSTEM: &str = "Answer in one short English sentence.";
const QUESTION: &str = "Which city is the capital of France?";

fn question(extra: Value) -> Value {
    let mut body = json!({
        "model": "ignored",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": QUESTION},
        ],
        "temperature": 0,
        "max_tokens": 64,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// A chat answer equals `realm run --chat`'s greedy answer, on both
/// models, and its token counts add up.
#[test]
fn chat_answers_equal_realm_runs() {
    for m in [&catalog::SMOLLM2, &catalog::GEMMA3] {
        if !cached(m) {
            continue;
        }
        let name = m.short_name;
        let (ok, expected, stderr) = realm(&[
            "run", name, "--chat", "--temp", "0", "-n", "64", "--system", SYSTEM, "-p", QUESTION,
        ]);
        assert!(ok, "{stderr}");
        let server = Server::start(&[name]);
        let r = server.post("/v1/chat/completions", &question(json!({})));
        assert_eq!(r["object"], "chat.completion");
        let choice = &r["choices"][0];
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(
            choice["message"]["content"].as_str().unwrap(),
            expected.trim_end_matches('\n'),
            "{name}"
        );
        let u = &r["usage"];
        let (p, c) = (
            u["prompt_tokens"].as_u64().unwrap(),
            u["completion_tokens"].as_u64().unwrap(),
        );
        assert!(
            p > 10 && c > 0 && u["total_tokens"].as_u64() == Some(p + c),
            "{u}"
        );
        // SmolLM2 answers and ends its turn; Gemma 3 270M (not tuned for
        // chat) runs on to the limit.
        let reason = if c == 64 { "length" } else { "stop" };
        assert_eq!(choice["finish_reason"], reason, "{r}");
        if name == "smollm2" {
            assert_eq!(reason, "stop");
        }
        assert!(r["model"].as_str().unwrap().ends_with(".gguf"));
        let models: Value = serde_json::from_str(&server.call("GET", "/v1/models", "").1).unwrap();
        assert_eq!(models["data"][0]["id"], r["model"]);
    }
}

/// `response_format` with a JSON schema constrains the answer to JSON of
/// that schema, the same answer `realm run -j` gives; a GBNF `grammar`
/// constrains a completion.
#[test]
fn structured_output_follows_its_schema() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"]
    });
    let (ok, expected, stderr) = realm(&[
        "run",
        "smollm2",
        "--chat",
        "--temp",
        "0",
        "-n",
        "64",
        "--system",
        SYSTEM,
        "-p",
        QUESTION,
        "-j",
        &schema.to_string(),
    ]);
    assert!(ok, "{stderr}");
    let server = Server::start(&["smollm2"]);
    let format = json!({"type": "json_schema", "json_schema": {"name": "place", "schema": schema}});
    let r = server.post(
        "/v1/chat/completions",
        &question(json!({"response_format": format})),
    );
    let content = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content, expected.trim_end_matches('\n'));
    let place: Value = serde_json::from_str(content).unwrap();
    // (SmolLM2-135M's answer is JSON of the schema, if not a right one.)
    assert!(
        place["city"].is_string() && place["country"].is_string(),
        "{content}"
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "Is Paris in France? Answer:", "grammar": "root ::= \" \" (\"yes\" | \"no\")",
                "temperature": 0, "max_tokens": 8}),
    );
    let text = r["choices"][0]["text"].as_str().unwrap();
    assert!(text == " yes" || text == " no", "{text:?}");
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
}

/// A streamed answer is the whole answer in pieces: a role chunk, text
/// chunks, a finish chunk, a usage chunk, `[DONE]`; text completions
/// likewise.
fn weather_request(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {"type": "object",
                           "properties": {"city": {"type": "string"},
                                          "unit": {"type": "string",
                                                   "enum": ["celsius", "fahrenheit"]}},
                           "required": ["city"]}}}],
        "temperature": 0,
        "max_tokens": 80,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// Anthropic's Messages API: the answer of the chat completion the request
/// means, as a message of content blocks with Anthropic's stop reasons
/// and usage; streamed as its events, which add up to it; tool calls as
/// `tool_use` blocks; a conversation's earlier call and result read back;
/// token counts; errors in Anthropic's shape; `x-api-key` accepted.
#[test]
fn anthropic_messages_answer_as_chat_completions() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let msg = json!({
        "model": "x", "max_tokens": 64, "temperature": 0, "system": SYSTEM,
        "messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}],
    });
    let oai = server.post("/v1/chat/completions", &question(json!({})));
    let r = server.post("/v1/messages", &msg);
    assert_eq!(
        (&r["type"], &r["role"]),
        (&json!("message"), &json!("assistant"))
    );
    assert!(r["id"].as_str().unwrap().starts_with("msg_"), "{r}");
    assert_eq!(
        r["content"],
        json!([{"type": "text", "text": oai["choices"][0]["message"]["content"]}])
    );
    assert_eq!(r["stop_reason"], "end_turn");
    assert!(r["stop_sequence"].is_null());
    assert_eq!(
        r["usage"]["output_tokens"],
        oai["usage"]["completion_tokens"]
    );
    let u = &r["usage"];
    assert_eq!(
        u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap(),
        oai["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    let counted = server.post("/v1/messages/count_tokens", &msg);
    assert_eq!(
        counted["input_tokens"], oai["usage"]["prompt_tokens"],
        "{counted}"
    );

    // Streamed: named events, text deltas that add up to the answer.
    let mut streamed = msg.clone();
    streamed["stream"] = json!(true);
    let (names, events) = server.named_events("/v1/messages", &streamed);
    assert_eq!(names[..2], ["message_start", "content_block_start"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let text: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(json!(text), r["content"][0]["text"]);
    let delta = &events[events.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], r["usage"]["output_tokens"]);

    // A stop sequence and a token limit.
    let mut stop = msg.clone();
    stop["stop_sequences"] = json!(["Paris"]);
    let r = server.post("/v1/messages", &stop);
    assert_eq!(
        (&r["stop_reason"], &r["stop_sequence"]),
        (&json!("stop_sequence"), &json!("Paris")),
        "{r}"
    );
    let mut short = msg.clone();
    short["max_tokens"] = json!(2);
    assert_eq!(
        server.post("/v1/messages", &short)["stop_reason"],
        "max_tokens"
    );

    // Tools: the call the chat completion makes, as a tool_use block.
    let tool = json!({"name": "get_weather", "description": "Get the current weather in a city",
        "input_schema": {"type": "object",
                         "properties": {"city": {"type": "string"},
                                        "unit": {"type": "string",
                                                 "enum": ["celsius", "fahrenheit"]}},
                         "required": ["city"]}});
    let ask = json!({"max_tokens": 80, "temperature": 0, "tools": [tool],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}]});
    let oai = server.post(
        "/v1/chat/completions",
        &weather_request(json!({"tool_choice": "required"})),
    );
    let call = &oai["choices"][0]["message"]["tool_calls"][0]["function"];
    let r = server.post("/v1/messages", &ask);
    assert_eq!(r["stop_reason"], "tool_use", "{r}");
    let block = &r["content"][0];
    assert_eq!(
        (&block["type"], &block["name"]),
        (&json!("tool_use"), &call["name"])
    );
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(block["input"], args);
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let events: Vec<Value> = server
        .stream("/v1/messages", &streamed)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let start = events
        .iter()
        .find(|e| e["type"] == "content_block_start")
        .unwrap();
    assert_eq!(start["content_block"]["name"], "get_weather");
    let json_delta = events
        .iter()
        .find_map(|e| e["delta"]["partial_json"].as_str())
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(json_delta).unwrap(), args);
    // Under tools, a reply the model writes as text streams as it comes.
    let mut auto = ask.clone();
    auto["tool_choice"] = json!({"type": "auto"});
    let whole = server.post("/v1/messages", &auto);
    let text = whole["content"][0]["text"].as_str().unwrap();
    auto["stream"] = json!(true);
    let (_, events) = server.named_events("/v1/messages", &auto);
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert!(deltas.len() > 1, "{events:?}");
    assert_eq!(deltas.concat(), text);

    // The call and its result read back as the chat completion's
    // conversation with them: the same prompt, the same reply.
    let id = block["id"].clone();
    let follow = json!({"max_tokens": 40, "temperature": 0, "tools": [ask["tools"][0]],
        "messages": [ask["messages"][0],
            {"role": "assistant", "content": [r["content"][0]]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id,
                                          "content": "18 degrees and sunny"}]}]});
    let mut oai_follow = weather_request(json!({"max_tokens": 40}));
    oai_follow["messages"] = json!([ask["messages"][0],
        {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
            "function": {"name": "get_weather", "arguments": block["input"].to_string()}}]},
        {"role": "tool", "tool_call_id": id, "content": "18 degrees and sunny"}]);
    let (r, oai) = (
        server.post("/v1/messages", &follow),
        server.post("/v1/chat/completions", &oai_follow),
    );
    let u = &r["usage"];
    assert_eq!(
        u["input_tokens"].as_u64().unwrap() + u["cache_read_input_tokens"].as_u64().unwrap(),
        oai["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    let message = &oai["choices"][0]["message"];
    match message["tool_calls"].as_array() {
        Some(calls) => {
            let args: Value =
                serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(r["content"][0]["input"], args, "{r}");
        }
        None => assert_eq!(r["content"][0]["text"], message["content"], "{r}"),
    }

    // Errors in Anthropic's shape.
    let (status, text) = server.call("POST", "/v1/messages", r#"{"max_tokens": 5}"#);
    assert_eq!(status, 400, "{text}");
    let e: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (&e["type"], &e["error"]["type"]),
        (&json!("error"), &json!("invalid_request_error"))
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("messages"));

    // An Anthropic client's key.
    let keyed = Server::start(&["smollm2", "--api-key", "sesame"]);
    let body = msg.to_string();
    let (status, _) = keyed.call("POST", "/v1/messages/count_tokens", &body);
    assert_eq!(status, 401);
    let (status, text) = keyed.call_with(
        "POST",
        "/v1/messages/count_tokens",
        "x-api-key: sesame\r\n",
        &body,
    );
    assert_eq!(status, 200, "{text}");
}

/// OpenAI's Responses API: the answer of the chat completion the request
/// means, as a response whose output is a message of `output_text` (or
/// `function_call` items), with usage; a token limit makes it incomplete;
/// streamed, numbered events whose deltas add up to it; a conversation
/// with a call and its output reads as the chat completion's.
#[test]
fn responses_answer_as_chat_completions() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let ask = json!({"model": "x", "instructions": SYSTEM, "input": QUESTION,
                     "max_output_tokens": 64, "temperature": 0});
    let oai = server.post("/v1/chat/completions", &question(json!({})));
    let r = server.post("/v1/responses", &ask);
    assert_eq!(
        (&r["object"], &r["status"]),
        (&json!("response"), &json!("completed")),
        "{r}"
    );
    assert!(r["id"].as_str().unwrap().starts_with("resp_"));
    let item = &r["output"][0];
    assert_eq!(
        (&item["type"], &item["role"]),
        (&json!("message"), &json!("assistant"))
    );
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(
        item["content"][0]["text"],
        oai["choices"][0]["message"]["content"]
    );
    assert_eq!(r["usage"]["input_tokens"], oai["usage"]["prompt_tokens"]);
    assert_eq!(
        r["usage"]["output_tokens"],
        oai["usage"]["completion_tokens"]
    );
    // The same request as a list of items, at /responses too.
    let mut items = ask.clone();
    items["input"] =
        json!([{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}]);
    assert_eq!(
        server.post("/responses", &items)["output"][0]["content"],
        item["content"]
    );

    let mut short = ask.clone();
    short["max_output_tokens"] = json!(2);
    let r = server.post("/v1/responses", &short);
    assert_eq!(r["status"], "incomplete");
    assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let (names, events) = server.named_events("/v1/responses", &streamed);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i);
    }
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let text: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(json!(text), item["content"][0]["text"]);
    let last = &events[events.len() - 1]["response"];
    assert_eq!(last["output"][0]["content"], item["content"]);
    assert_eq!(
        last["usage"]["output_tokens"],
        oai["usage"]["completion_tokens"]
    );

    // Tools: the call the chat completion makes, as a function_call item,
    // then the call and its output read back.
    let tool = json!({"type": "function", "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string"},
                                      "unit": {"type": "string",
                                               "enum": ["celsius", "fahrenheit"]}},
                       "required": ["city"]}});
    let question = "What is the weather like in Paris today?";
    let calling = json!({"input": question, "tools": [tool], "tool_choice": "required",
                         "max_output_tokens": 80, "temperature": 0});
    let oai = server.post(
        "/v1/chat/completions",
        &weather_request(json!({"tool_choice": "required"})),
    );
    let want = &oai["choices"][0]["message"]["tool_calls"][0]["function"];
    let r = server.post("/v1/responses", &calling);
    let call = &r["output"][0];
    assert_eq!(
        (&call["type"], &call["name"]),
        (&json!("function_call"), &want["name"]),
        "{r}"
    );
    assert_eq!(call["arguments"], want["arguments"]);
    let mut streamed = calling.clone();
    streamed["stream"] = json!(true);
    let events: Vec<Value> = server
        .stream("/v1/responses", &streamed)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let args = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(args["arguments"], want["arguments"]);
    let mut auto = calling.clone();
    auto["tool_choice"] = json!("auto");
    let whole = server.post("/v1/responses", &auto);
    let text = whole["output"][0]["content"][0]["text"].as_str().unwrap();
    auto["stream"] = json!(true);
    let (_, events) = server.named_events("/v1/responses", &auto);
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert!(deltas.len() > 1, "{events:?}");
    assert_eq!(deltas.concat(), text);
    let follow = json!({"input": [{"role": "user", "content": question}, call,
            {"type": "function_call_output", "call_id": call["call_id"],
             "output": "18 degrees and sunny"}],
        "tools": [tool], "max_output_tokens": 40, "temperature": 0});
    let mut oai_follow = weather_request(json!({"max_tokens": 40}));
    oai_follow["messages"] = json!([{"role": "user", "content": question},
        {"role": "assistant", "content": null, "tool_calls": [{"id": call["call_id"],
            "type": "function", "function": {"name": "get_weather", "arguments": call["arguments"]}}]},
        {"role": "tool", "tool_call_id": call["call_id"], "content": "18 degrees and sunny"}]);
    let (r, oai) = (
        server.post("/v1/responses", &follow),
        server.post("/v1/chat/completions", &oai_follow),
    );
    assert_eq!(
        r["usage"]["input_tokens"], oai["usage"]["prompt_tokens"],
        "{r}"
    );
    let message = &oai["choices"][0]["message"];
    match message["tool_calls"].as_array() {
        Some(calls) => assert_eq!(
            r["output"][0]["arguments"],
            calls[0]["function"]["arguments"]
        ),
        None => assert_eq!(r["output"][0]["content"][0]["text"], message["content"]),
    }

    let (status, text) = server.call(
        "POST",
        "/v1/responses",
        r#"{"input": "x", "previous_response_id": "resp_1"}"#,
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("previous_response_id"), "{text}");
}

/// Chunks of a stream, `[DONE]` checked and left out.
fn chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// Tools: a required call comes back as `tool_calls` (whole, or streamed
/// in one delta: the generic format's calls stream whole) with arguments of the tool's schema; a direct answer
/// streams as text and equals the whole one; a tool's result handed back
/// reaches the model.
#[test]
fn tool_calls_come_back_as_openais() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let required = weather_request(json!({"tool_choice": "required"}));
    let r = server.post("/v1/chat/completions", &required);
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    assert!(choice["message"]["content"].is_null());
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments = calls[0]["function"]["arguments"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(arguments).unwrap();
    assert!(parsed["city"].is_string(), "{arguments}");

    // Streamed: the same call in one delta.
    let (name, args, _) = call_whole_and_streamed(&server, &required, false);
    assert_eq!((name.as_str(), &args), ("get_weather", &parsed));

    // Auto: SmolLM2-135M answers this one itself; the text streams.
    let auto = weather_request(json!({}));
    let whole = server.post("/v1/chat/completions", &auto);
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(whole["choices"][0]["finish_reason"], "stop", "{whole}");
    assert!(!content.starts_with('{'), "{content}");
    let mut streamed = auto.clone();
    streamed["stream"] = json!(true);
    let events = chunks(&server.stream("/v1/chat/completions", &streamed));
    let text: Vec<&str> = events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert!(text.len() > 5, "{events:?}");
    assert_eq!(text.concat(), content);

    // The call and its result go back; the answer uses the result.
    let mut follow = auto.clone();
    let messages = follow["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}));
    messages.push(json!({"role": "tool", "tool_call_id": "call_1",
                         "content": "{\"temperature\": 11, \"sky\": \"rain\"}"}));
    let r = server.post("/v1/chat/completions", &follow);
    let answer = r["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("11"), "{answer}");

    // Refused: a grammar with tools, a choice of no tool.
    let mut bad = auto.clone();
    bad["grammar"] = json!("root ::= \"a\"");
    let (status, text) = server.call("POST", "/v1/chat/completions", &bad.to_string());
    assert_eq!(
        (status, text.contains("\"grammar\"")),
        (400, true),
        "{text}"
    );
    let bad =
        weather_request(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}));
    let (status, text) = server.call("POST", "/v1/chat/completions", &bad.to_string());
    assert_eq!(
        (status, text.contains("tool_choice")),
        (400, true),
        "{text}"
    );
}

/// `GET /props` reports the server's settings and the model's template;
/// `POST /apply-template` gives the prompt a chat runs (its tokens are the
/// chat's prompt tokens), tools' instructions included; `--chat-template-file`
/// replaces the model's template everywhere.
#[test]
fn props_and_apply_template_show_what_runs() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--parallel", "3", "-c", "512"]);
    let (status, text) = server.call("GET", "/props", "");
    assert_eq!(status, 200, "{text}");
    let props: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(props["total_slots"], 3);
    assert_eq!(props["default_generation_settings"]["n_ctx"], 512);
    let path = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    assert_eq!(props["model_path"], path.display().to_string());
    let file = GgufFile::open(&path).unwrap();
    let source = file.metadata().get_str("tokenizer.chat_template").unwrap();
    assert_eq!(props["chat_template"], source);

    let applied = server.post("/apply-template", &question(json!({})));
    let prompt = applied["prompt"].as_str().unwrap();
    assert!(
        prompt.contains(QUESTION) && prompt.contains(SYSTEM),
        "{prompt}"
    );
    let tokens = server.post(
        "/tokenize",
        &json!({"content": prompt, "add_special": false, "parse_special": true}),
    );
    let chat = server.post("/v1/chat/completions", &question(json!({"max_tokens": 1})));
    assert_eq!(
        tokens["tokens"].as_array().unwrap().len() as u64,
        chat["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    let with_tools = server.post("/apply-template", &weather_request(json!({})));
    assert!(with_tools["prompt"]
        .as_str()
        .unwrap()
        .contains("\"get_weather\""));

    let dir = tempfile::tempdir().unwrap();
    let tpl = dir.path().join("t.jinja");
    std::fs::write(
        &tpl,
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>",
    )
    .unwrap();
    let custom = Server::start(&["smollm2", "--chat-template-file", tpl.to_str().unwrap()]);
    let applied = custom.post("/apply-template", &question(json!({})));
    assert_eq!(
        applied["prompt"],
        format!("<system>{SYSTEM}\n<user>{QUESTION}\n<assistant>")
    );
    let (_, text) = custom.call("GET", "/props", "");
    let props: Value = serde_json::from_str(&text).unwrap();
    assert!(props["chat_template"]
        .as_str()
        .unwrap()
        .starts_with("{% for m"));
    let r = custom.post("/v1/chat/completions", &question(json!({"max_tokens": 4})));
    assert_eq!(r["usage"]["completion_tokens"], 4);
}

#[test]
fn streamed_answers_equal_whole_ones() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let whole = server.post("/v1/chat/completions", &question(json!({})));
    let events = server.stream(
        "/v1/chat/completions",
        &question(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage, finish) = (&chunks[chunks.len() - 1], &chunks[chunks.len() - 2]);
    assert_eq!(usage["choices"], json!([]));
    let (streamed, whole_usage) = (&usage["usage"], &whole["usage"]);
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(streamed[count], whole_usage[count]);
    }
    // The same prompt again: a kept cache held all of it but its last token.
    assert_eq!(
        streamed["prompt_tokens_details"]["cached_tokens"].as_u64(),
        whole_usage["prompt_tokens"].as_u64().map(|p| p - 1)
    );
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let text: String = chunks[1..chunks.len() - 2]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert!(chunks.len() > 5, "{events:?}");
    assert_eq!(text, whole["choices"][0]["message"]["content"]);

    // A text completion, sampled with a seed: the same seed, the same text.
    let body = json!({"prompt": "Once upon a time", "max_tokens": 12, "seed": 7});
    let whole = server.post("/v1/completions", &body);
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 12);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = server.stream("/v1/completions", &streamed);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            let c: Value = serde_json::from_str(e).unwrap();
            assert_eq!(c["object"], "text_completion");
            c["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, whole["choices"][0]["text"]);
}

/// Requests decoded together in batched steps get the answers they get
/// alone, each its own.
#[test]
fn requests_decoded_together_get_their_answers_alone() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--parallel", "4", "-c", "512"]);
    let prompts = [
        "Which city is the capital of France?",
        "Name three colours.",
        "What is two plus two?",
        "Write a haiku about the sea.",
        "Who wrote Hamlet?",
    ];
    let body = |p: &str| {
        json!({
            "messages": [{"role": "user", "content": p}],
            "temperature": 0,
            "max_tokens": 40,
        })
    };
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| server.post("/v1/chat/completions", &body(p))["choices"][0].clone())
        .collect();
    let together: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let server = &server;
                s.spawn(move || server.post("/v1/chat/completions", &body(p)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap()["choices"][0].clone())
            .collect()
    });
    assert_eq!(together, alone);
    assert!(alone.windows(2).all(|w| w[0] != w[1]));
}

/// A chat's next turn reuses the KV cache of the turn before: only its new
/// tokens run (`cached_tokens`), and its answer is the one a server that
/// keeps no caches gives.
#[test]
fn a_chats_next_turn_runs_only_its_new_tokens() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let keeping = Server::start(&["smollm2", "-c", "1024"]);
    let fresh = Server::start(&["smollm2", "-c", "1024", "--prompt-cache", "0"]);
    let ask = |server: &Server, messages: &Value| {
        let r = server.post(
            "/v1/chat/completions",
            &json!({"messages": messages, "temperature": 0, "max_tokens": 48}),
        );
        let u = &r["usage"];
        (
            r["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            u["prompt_tokens"].as_u64().unwrap(),
            u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        )
    };
    let mut messages = json!([{"role": "user", "content": "Which city is the capital of France?"}]);
    let (first, p1, c1) = ask(&keeping, &messages);
    assert_eq!(c1, 0);
    assert_eq!(ask(&fresh, &messages).0, first);
    // The same request again: all but its last prompt token are held.
    let (again, p, c) = ask(&keeping, &messages);
    assert_eq!((again.as_str(), p, c), (first.as_str(), p1, p1 - 1));

    let turns = messages.as_array_mut().unwrap();
    turns.push(json!({"role": "assistant", "content": first}));
    turns.push(json!({"role": "user", "content": "And of Germany?"}));
    let (second, p2, c2) = ask(&keeping, &messages);
    assert!(
        c2 >= p1 && c2 < p2,
        "{c2} of {p2} cached after a first prompt of {p1}"
    );
    let (want, fresh_p2, fresh_c2) = ask(&fresh, &messages);
    assert_eq!((second, p2, 0), (want, fresh_p2, fresh_c2));
}

/// Requests served by wasm tenants (the guest tokenizes, samples and
/// streams; the runtime batches the tenants' steps) get the native
/// engine's answers and token counts, several at once.
#[test]
fn wasm_tenants_answer_as_the_native_engine() {
    let Some(g) = guest() else { return };
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let native = Server::start(&["smollm2"]);
    let wasm = Server::start(&["smollm2", "--wasm", "--guest", &g, "--parallel", "3"]);
    let bodies: Vec<Value> = [
        "Which city is the capital of France?",
        "Name three colours.",
        "Who wrote Hamlet?",
    ]
    .iter()
    .map(|p| {
        json!({"messages": [{"role": "user", "content": p}], "temperature": 0,
                    "max_tokens": 32})
    })
    .chain([
        json!({"prompt": "Once upon a time", "max_tokens": 16, "seed": 3}),
        // Structured output: the guest keeps to the schema's grammar.
        json!({"messages": [{"role": "user", "content": "Describe Paris as JSON."}],
               "temperature": 0, "max_tokens": 48,
               "response_format": {"type": "json_object"}}),
    ])
    .collect();
    let answer = |r: &Value| {
        let c = &r["choices"][0];
        (
            c["message"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .unwrap()
                .to_string(),
            c["finish_reason"].clone(),
            r["usage"]["prompt_tokens"].clone(),
            r["usage"]["completion_tokens"].clone(),
        )
    };
    let path = |b: &Value| match b.get("prompt") {
        Some(_) => "/v1/completions",
        None => "/v1/chat/completions",
    };
    let want: Vec<_> = bodies
        .iter()
        .map(|b| answer(&native.post(path(b), b)))
        .collect();
    let got: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let wasm = &wasm;
                s.spawn(move || answer(&wasm.post(path(b), b)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(got, want);
    // Token ids and log-probabilities are the native engine's alone.
    let (status, text) = wasm.call("POST", "/v1/completions", r#"{"prompt": [1, 2]}"#);
    assert_eq!(status, 400, "{text}");
    let (status, text) = wasm.call(
        "POST",
        "/v1/completions",
        r#"{"prompt": "a", "logprobs": 1}"#,
    );
    assert_eq!(
        (status, text.contains("\"logprobs\"")),
        (400, true),
        "{text}"
    );
    let (status, text) = wasm.call("POST", "/v1/embeddings", r#"{"input": "a"}"#);
    assert_eq!(status, 501, "{text}");
    // Tenants run with the server's LoRA adapters (none here): a request
    // cannot name its own, nor set the server's.
    let (status, text) = wasm.call(
        "POST",
        "/v1/completions",
        r#"{"prompt": "a", "lora": [{"id": 0, "scale": 1}]}"#,
    );
    assert_eq!((status, text.contains("tenants")), (400, true), "{text}");
    assert_eq!(wasm.call("POST", "/lora-adapters", "[]").0, 400);
    assert_eq!(wasm.call("GET", "/lora-adapters", "").1, "[]");
    // Tools: the guest keeps to their grammar; the call is the native one.
    let tools = weather_request(json!({"tool_choice": "required"}));
    let call = |s: &Server| {
        let r = s.post("/v1/chat/completions", &tools);
        (
            r["choices"][0]["message"]["tool_calls"][0]["function"].clone(),
            r["choices"][0]["finish_reason"].clone(),
        )
    };
    assert_eq!(call(&wasm), call(&native));
    // `echo` puts the prompt first; with `max_tokens: 0` it is all.
    let echo = json!({"prompt": "Once upon a time", "max_tokens": 16, "seed": 3, "echo": true});
    let r = wasm.post("/v1/completions", &echo);
    assert_eq!(
        r["choices"][0]["text"],
        format!("Once upon a time{}", want[3].0)
    );
    let r = wasm.post(
        "/v1/completions",
        &json!({"prompt": "Hi", "max_tokens": 0, "echo": true}),
    );
    assert_eq!(
        (&r["choices"][0]["text"], &r["usage"]["completion_tokens"]),
        (&json!("Hi"), &json!(0))
    );
}

/// The engine runs on the GPU backend too (here on candle's CPU device,
/// the code path CUDA takes less its kernels): requests decoded together
/// get their answers alone.
#[test]
fn the_gpu_backend_serves_requests_together_as_alone() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--device", "candle-cpu", "-c", "256"]);
    let bodies: Vec<Value> = ["The capital of France is", "One, two, three,", "Roses are"]
        .iter()
        .map(|p| json!({"prompt": p, "temperature": 0, "max_tokens": 10}))
        .collect();
    let text = |r: Value| r["choices"][0]["text"].as_str().unwrap().to_string();
    let alone: Vec<String> = bodies
        .iter()
        .map(|b| text(server.post("/v1/completions", b)))
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| {
                let server = &server;
                s.spawn(move || text(server.post("/v1/completions", b)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
}

/// `stop` cuts the text before the string; a prompt of token ids is the
/// same prompt as its text.
#[test]
fn completions_stop_where_asked() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let greedy = |extra: Value| {
        let mut body = json!({"prompt": "The capital of France is", "temperature": 0,
                              "max_tokens": 24});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        server.post("/v1/completions", &body)["choices"][0].clone()
    };
    let full = greedy(json!({}));
    let text = full["text"].as_str().unwrap();
    assert_eq!(full["finish_reason"], "length");
    // A word from the middle of the text as the stop string.
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() > 4, "{text}");
    let stop = words[words.len() / 2];
    let cut = greedy(json!({"stop": ["never appears", stop]}));
    assert_eq!(cut["finish_reason"], "stop");
    assert_eq!(
        cut["text"].as_str().unwrap(),
        &text[..text.find(stop).unwrap()]
    );

    let path = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let ids = tok.encode("The capital of France is", true, false).unwrap();
    assert_eq!(greedy(json!({"prompt": ids}))["text"], full["text"]);
}

/// Prompt log-probabilities (`echo`, `logprobs`, `max_tokens: 0`, as
/// evaluation harnesses score text) agree with llama.cpp: scored as
/// llama-perplexity scores its chunks, they give its perplexities
/// (realm-cli/tests/fixtures/perplexity.json; `realm perplexity`'s own test
/// states the tolerance).
#[test]
fn prompt_logprobs_give_llama_cpps_perplexity() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/perplexity.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/perplexity.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let ctx = fixture["ctx"].as_u64().unwrap() as usize;
    let path = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let tok = Tokenizer::from_metadata(GgufFile::open(&path).unwrap().metadata()).unwrap();
    let ids = tok.encode(&text, true, false).unwrap();
    let server = Server::start(&["smollm2", "--cache-type", "f16"]);
    let (mut nll, mut count) = (0.0, 0);
    for (c, want) in fixture["models"]["smollm2"]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .enumerate()
    {
        let chunk = &ids[c * ctx..(c + 1) * ctx];
        let body = json!({"prompt": chunk, "echo": true, "logprobs": 1, "max_tokens": 0});
        let r = server.post("/v1/completions", &body);
        assert_eq!(r["usage"]["completion_tokens"], 0);
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let lp = &r["choices"][0]["logprobs"];
        let scores = lp["token_logprobs"].as_array().unwrap();
        assert_eq!(scores.len(), ctx);
        assert!(scores[0].is_null() && lp["top_logprobs"][0].is_null());
        assert_eq!(lp["top_logprobs"][1].as_object().unwrap().len(), 1);
        // The text is the prompt's, and each offset is its token's.
        let answer = r["choices"][0]["text"].as_str().unwrap();
        assert_eq!(answer, tok.decode(chunk, true, false).unwrap());
        for (t, at) in lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .zip(lp["text_offset"].as_array().unwrap())
        {
            let at = at.as_u64().unwrap() as usize;
            let rest: String = answer.chars().skip(at).collect();
            assert!(rest.starts_with(t.as_str().unwrap()), "{t} at {at}");
        }
        // llama-perplexity scores the second half of each chunk.
        for s in &scores[ctx / 2 + 1..] {
            nll -= s.as_f64().unwrap();
            count += 1;
        }
        let ppl = f64::exp(nll / count as f64);
        let want = want.as_f64().unwrap();
        assert!(
            (ppl / want - 1.0).abs() < 0.0125,
            "chunk {}: {ppl} against llama.cpp's {want}",
            c + 1
        );
    }
}

/// Log-probabilities of generated tokens: for greedy answers, each token is
/// its own likeliest alternative; the tokens spell the text; streamed
/// chunks carry the same entries as the whole answer; `echo` puts the
/// prompt's tokens first; a stop string's tokens go with its text.
#[test]
fn generated_tokens_carry_their_logprobs() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let body = question(json!({"logprobs": true, "top_logprobs": 3}));
    let whole = server.post("/v1/chat/completions", &body);
    let content = whole["choices"][0]["message"]["content"].as_str().unwrap();
    let entries = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    // Every token generated (the end of the turn is not part of the answer).
    assert_eq!(
        entries.len() as u64,
        whole["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut spelled = Vec::new();
    for e in &entries {
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], e["token"]);
        assert_eq!(top[0]["logprob"], e["logprob"]);
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0 && top[1]["logprob"].as_f64().unwrap() <= lp);
        spelled.extend(
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    assert_eq!(String::from_utf8(spelled).unwrap(), content);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = server.stream("/v1/chat/completions", &streamed);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let streamed_entries: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(streamed_entries, entries);

    // A completion with `echo`: the prompt, then the continuation; the
    // prompt's tokens first, their offsets running on into the text.
    let prompt = "The capital of France is";
    let greedy = |extra: Value| {
        let mut body = json!({"prompt": prompt, "temperature": 0, "max_tokens": 24,
                              "logprobs": 2});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        server.post("/v1/completions", &body)
    };
    let plain = greedy(json!({}));
    let echoed = greedy(json!({"echo": true}));
    let text = plain["choices"][0]["text"].as_str().unwrap();
    assert_eq!(echoed["choices"][0]["text"], format!("{prompt}{text}"));
    let (p, e) = (
        &plain["choices"][0]["logprobs"],
        &echoed["choices"][0]["logprobs"],
    );
    let n_prompt = echoed["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let tokens = |v: &Value| v["tokens"].as_array().unwrap().clone();
    assert_eq!(tokens(e).len(), n_prompt + tokens(p).len());
    assert_eq!(tokens(e)[n_prompt..], tokens(p)[..]);
    assert_eq!(
        e["token_logprobs"].as_array().unwrap()[n_prompt..],
        p["token_logprobs"].as_array().unwrap()[..]
    );
    let offsets = |v: &Value| -> Vec<u64> {
        v["text_offset"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_u64().unwrap())
            .collect()
    };
    let shift = prompt.chars().count() as u64;
    assert_eq!(
        offsets(e)[n_prompt..],
        offsets(p).iter().map(|o| o + shift).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        tokens(p)
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        text
    );

    // A stop string: the tokens kept are those whose text begins before it.
    let words: Vec<&str> = text.split_whitespace().collect();
    let stop = words[words.len() / 2];
    let cut = greedy(json!({"stop": stop}));
    let cut_text = cut["choices"][0]["text"].as_str().unwrap();
    let kept: Vec<String> = tokens(&cut["choices"][0]["logprobs"])
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    let joined: String = kept.concat();
    assert!(joined.starts_with(cut_text), "{joined:?} / {cut_text:?}");
    assert!(
        joined.len() - kept.last().unwrap().len() < cut_text.len(),
        "{kept:?}"
    );
}

/// A completion request with several prompts (strings or token lists)
/// answers each as a request of its own would, a choice per prompt in
/// order; `n` samples a prompt `n` times, choice `j` with the seed plus
/// `j`; streamed choices carry their index. Token counts add up, a prompt
/// counted once however many choices it has.
#[test]
fn several_prompts_and_choices_answer_as_requests_alone() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--parallel", "3"]);
    let prompts = [
        "The capital of France is",
        "One, two, three,",
        "Roses are red,",
    ];
    let complete = |body: Value| server.post("/v1/completions", &body);
    let text = |r: &Value, i: usize| r["choices"][i]["text"].as_str().unwrap().to_string();
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| complete(json!({"prompt": p, "max_tokens": 10, "seed": 11})))
        .collect();
    let together = complete(json!({"prompt": prompts, "max_tokens": 10, "seed": 11}));
    let choices = together["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, a) in alone.iter().enumerate() {
        assert_eq!(choices[i]["index"], i);
        assert_eq!(text(&together, i), text(a, 0));
    }
    let sum = |key: &str| {
        alone
            .iter()
            .map(|a| a["usage"][key].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(together["usage"]["prompt_tokens"], sum("prompt_tokens"));
    assert_eq!(
        together["usage"]["completion_tokens"],
        sum("completion_tokens")
    );

    // Token lists, as evaluation harnesses send them.
    let path = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let tok = Tokenizer::from_metadata(GgufFile::open(&path).unwrap().metadata()).unwrap();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true, false).unwrap())
        .collect();
    let r = complete(json!({"prompt": ids, "max_tokens": 10, "seed": 11}));
    assert_eq!(r["choices"], together["choices"]);

    // `n`: choice j is the request with seed 11 + j.
    let body = json!({"prompt": prompts[0], "max_tokens": 10, "seed": 11, "n": 3});
    let r = complete(body.clone());
    for j in 0..3 {
        let one = complete(json!({"prompt": prompts[0], "max_tokens": 10, "seed": 11 + j}));
        assert_eq!(text(&r, j as usize), text(&one, 0));
    }
    assert_eq!(
        r["usage"]["prompt_tokens"],
        alone[0]["usage"]["prompt_tokens"]
    );
    assert_eq!(r["usage"]["completion_tokens"], 30);
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let mut texts = vec![String::new(); 3];
    let mut ends = 0;
    for e in server.stream("/v1/completions", &streamed) {
        if e == "[DONE]" {
            continue;
        }
        let c: Value = serde_json::from_str(&e).unwrap();
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        texts[i].push_str(choice["text"].as_str().unwrap());
        ends += usize::from(!choice["finish_reason"].is_null());
    }
    assert_eq!(ends, 3);
    assert_eq!(texts, (0..3).map(|j| text(&r, j)).collect::<Vec<_>>());

    // Chat choices too; more sequences than the server holds get a 503.
    let r = server.post("/v1/chat/completions", &question(json!({"n": 2})));
    assert_eq!(
        r["choices"][1]["message"]["content"],
        r["choices"][0]["message"]["content"]
    );
    let (status, body) = server.call(
        "POST",
        "/v1/completions",
        &json!({"prompt": vec!["a"; 64], "n": 2}).to_string(),
    );
    assert_eq!(status, 503, "{body}");
}

/// `/v1/embeddings` answers with `realm embed`'s vectors (mean pooling,
/// unit length), as numbers or base64, for texts and token ids alike.
#[test]
fn embeddings_equal_realm_embeds() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let texts = ["The capital of France is Paris.", "Roses are red."];
    let (ok, stdout, stderr) =
        realm(&["embed", "smollm2", "--json", "-p", texts[0], "-p", texts[1]]);
    assert!(ok, "{stderr}");
    let cli: Value = serde_json::from_str(&stdout).unwrap();
    let server = Server::start(&["smollm2"]);
    let r = server.post("/v1/embeddings", &json!({"input": texts, "model": "x"}));
    assert_eq!(r["object"], "list");
    for i in 0..2 {
        assert_eq!(r["data"][i]["index"], i);
        assert_eq!(r["data"][i]["embedding"], cli["data"][i]["embedding"]);
    }
    let path = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let tok = Tokenizer::from_metadata(GgufFile::open(&path).unwrap().metadata()).unwrap();
    let ids = tok.encode(texts[0], true, true).unwrap();
    assert_eq!(
        r["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        ids.len() + tok.encode(texts[1], true, true).unwrap().len()
    );
    let by_ids = server.post("/v1/embeddings", &json!({"input": ids}));
    assert_eq!(by_ids["data"][0]["embedding"], cli["data"][0]["embedding"]);
    let b64 = server.post(
        "/v1/embeddings",
        &json!({"input": texts[0], "encoding_format": "base64"}),
    );
    let decoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap())
            .unwrap()
    };
    let floats: Vec<f32> = decoded
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let want: Vec<f32> = cli["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(floats, want);
    for (body, status) in [
        (json!({"input": "a", "dimensions": 8}), 400),
        (json!({"input": "a", "encoding_format": "int8"}), 400),
        (json!({"input": []}), 400),
    ] {
        let (got, text) = server.call("POST", "/v1/embeddings", &body.to_string());
        assert_eq!(got, status, "{text}");
    }
}

/// `/tokenize` and `/detokenize`, as llama.cpp's server has them: the
/// model's tokenizer's ids (special tokens' text read as them by default),
/// pieces that spell the text, and ids back to the text.
#[test]
fn tokenize_and_detokenize_round_trip() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let path = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let tok = Tokenizer::from_metadata(GgufFile::open(&path).unwrap().metadata()).unwrap();
    let text = "<|im_start|>user\nHello, wörld!";
    let r = server.post("/tokenize", &json!({"content": text}));
    let ids: Vec<u32> = serde_json::from_value(r["tokens"].clone()).unwrap();
    assert_eq!(ids, tok.encode(text, false, true).unwrap());
    let plain = server.post(
        "/tokenize",
        &json!({"content": text, "parse_special": false}),
    );
    assert!(plain["tokens"].as_array().unwrap().len() > ids.len());
    let pieces = server.post("/tokenize", &json!({"content": text, "with_pieces": true}));
    let spelled: String = pieces["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["piece"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(spelled, text);
    let back = server.post("/detokenize", &json!({"tokens": ids}));
    assert_eq!(back["content"], text);
    let (status, body) = server.call("POST", "/detokenize", r#"{"tokens": [99999999]}"#);
    assert_eq!(status, 400, "{body}");
}

/// `--cors ORIGIN`: browsers' preflight requests from that origin are
/// answered, and answers to it carry the allowing header; other origins,
/// and a server without `--cors`, get none.
#[test]
fn cors_lets_listed_origins_in() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let header = |raw: &str, name: &str| {
        raw.split("\r\n\r\n").next().unwrap().lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let raw = |server: &Server, method: &str, headers: &str| {
        let mut out = String::new();
        server
            .send_with(method, "/v1/models", headers, "")
            .read_to_string(&mut out)
            .unwrap();
        out
    };
    let open = Server::start(&["smollm2", "--cors", "https://app.example"]);
    let preflight = raw(
        &open,
        "OPTIONS",
        "origin: https://app.example\r\naccess-control-request-method: POST\r\n\
         access-control-request-headers: authorization, content-type\r\n",
    );
    assert_eq!(status_and_body(&preflight).0, 200, "{preflight}");
    let allowed = "access-control-allow-origin";
    assert_eq!(
        header(&preflight, allowed).as_deref(),
        Some("https://app.example")
    );
    let get = raw(&open, "GET", "origin: https://app.example\r\n");
    assert_eq!(
        header(&get, allowed).as_deref(),
        Some("https://app.example")
    );
    let other = raw(&open, "GET", "origin: https://evil.example\r\n");
    assert_eq!(header(&other, allowed), None, "{other}");
    let closed = Server::start(&["smollm2"]);
    let get = raw(&closed, "GET", "origin: https://app.example\r\n");
    assert_eq!(header(&get, allowed), None, "{get}");
}

/// `--metrics`: `/metrics` counts what the requests ran, in Prometheus's
/// text format; without the flag there is no such route.
#[test]
fn metrics_count_what_ran() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--metrics"]);
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("realm:{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    let (status, before) = server.call("GET", "/metrics", "");
    assert_eq!(status, 200, "{before}");
    assert_eq!(value(&before, "tokens_predicted_total"), 0.0);
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 9}),
    );
    let e = server.post("/v1/embeddings", &json!({"input": "Hello"}));
    let (_, after) = server.call("GET", "/metrics", "");
    assert_eq!(value(&after, "tokens_predicted_total"), 9.0);
    let prompt = r["usage"]["prompt_tokens"].as_f64().unwrap()
        + e["usage"]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(value(&after, "prompt_tokens_total"), prompt);
    assert_eq!(value(&after, "sequences_done_total"), 1.0);
    assert_eq!(value(&after, "embeddings_total"), 1.0);
    assert!(value(&after, "decode_steps_total") >= 8.0);
    assert!(value(&after, "tokens_predicted_seconds_total") > 0.0);
    assert!(
        after.contains("# TYPE realm:requests_processing gauge"),
        "{after}"
    );
    let plain = Server::start(&["smollm2"]);
    assert_eq!(plain.call("GET", "/metrics", "").0, 404);
}

/// Bad requests get OpenAI-shaped errors with the right status, and the
/// server goes on answering.
/// llama.cpp's samplers, by its server's field names, give what `realm run`
/// gives with the flags of llama.cpp's names; values out of range are 400s.
#[test]
fn llama_cpps_samplers_answer_as_realm_runs() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let prompt = "Once upon a time";
    let run = |flags: &[&str]| {
        let mut args = vec![
            "run", "smollm2", "-p", prompt, "-n", "24", "--seed", "5", "--temp", "0.9",
        ];
        args.extend(flags);
        let (ok, out, err) = realm(&args);
        assert!(ok, "{err}");
        out.strip_prefix(prompt)
            .unwrap()
            .trim_end_matches('\n')
            .to_string()
    };
    let complete = |fields: Value| {
        let mut body = json!({"prompt": prompt, "max_tokens": 24, "seed": 5, "temperature": 0.9});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        let r = server.post("/v1/completions", &body);
        r["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let plain = run(&[]);
    assert_eq!(complete(json!({})), plain);
    for (flags, fields) in [
        (
            vec![
                "--dry-multiplier",
                "0.8",
                "--dry-allowed-length",
                "1",
                "--typical",
                "0.9",
                "--top-nsigma",
                "2",
                "--xtc-probability",
                "0.5",
                "--dynatemp-range",
                "0.4",
                "--min-keep",
                "2",
                "--repeat-last-n",
                "32",
                "--repeat-penalty",
                "1.1",
                "--presence-penalty",
                "0.3",
                "--frequency-penalty",
                "0.2",
                "-l",
                "13+1.5",
            ],
            json!({
                "dry_multiplier": 0.8, "dry_allowed_length": 1, "typical_p": 0.9,
                "top_n_sigma": 2.0, "xtc_probability": 0.5, "dynatemp_range": 0.4,
                "min_keep": 2, "repeat_last_n": 32, "repeat_penalty": 1.1,
                "presence_penalty": 0.3, "frequency_penalty": 0.2, "logit_bias": {"13": 1.5},
            }),
        ),
        (
            vec![
                "--dry-multiplier",
                "1.5",
                "--dry-base",
                "2",
                "--dry-allowed-length",
                "0",
                "--dry-sequence-breaker",
                "none",
            ],
            json!({
                "dry_multiplier": 1.5, "dry_base": 2.0, "dry_allowed_length": 0,
                "dry_sequence_breakers": [],
            }),
        ),
        (
            vec![
                "--mirostat",
                "2",
                "--mirostat-ent",
                "3",
                "--mirostat-lr",
                "0.2",
            ],
            json!({"mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.2}),
        ),
        (
            vec!["--mirostat", "1", "--mirostat-ent", "4"],
            json!({"mirostat": 1, "mirostat_tau": 4.0}),
        ),
        (
            vec!["--samplers", "top_k;temperature;min_p", "--min-p", "0.2"],
            json!({"samplers": ["top_k", "temperature", "min_p"], "min_p": 0.2}),
        ),
        (vec!["--sampler-seq", "kt"], json!({"samplers": "kt"})),
    ] {
        let want = run(&flags);
        assert_ne!(want, plain, "{flags:?} change the text");
        assert_eq!(complete(fields), want, "{flags:?}");
    }
    for (fields, says) in [
        (json!({"mirostat": 3}), "mirostat is 0, 1 or 2"),
        (
            json!({"samplers": ["top_k", "nonsense"]}),
            "no sampler is called",
        ),
        (json!({"typical_p": 1.5}), "typical_p"),
        (
            json!({"dry_multiplier": 1.0, "dry_sequence_breakers": [""]}),
            "must not be empty",
        ),
    ] {
        let mut body = json!({"prompt": prompt, "max_tokens": 2});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        let (status, text) = server.call("POST", "/v1/completions", &body.to_string());
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let (_, text) = server.call("GET", "/props", "");
    let props: Value = serde_json::from_str(&text).unwrap();
    let d = &props["default_generation_settings"]["params"];
    assert_eq!((&d["mirostat"], &d["dry_base"]), (&json!(0), &json!(1.75)));
    // ignore_eos: a chat that ends by itself runs on to max_tokens.
    let ends = server.post("/v1/chat/completions", &question(json!({"max_tokens": 80})));
    assert_eq!(ends["choices"][0]["finish_reason"], "stop", "{ends}");
    let on = server.post(
        "/v1/chat/completions",
        &question(json!({"max_tokens": 80, "ignore_eos": true})),
    );
    assert_eq!(on["choices"][0]["finish_reason"], "length", "{on}");
    assert_eq!(on["usage"]["completion_tokens"], 80);
}

/// `--context-shift`: a completion runs past a full context, with the
/// text the server gives without a shift until then; its session is not
/// kept for later prompts (it no longer holds their beginning). Wasm
/// tenants give the same texts.
#[test]
fn context_shift_lets_completions_run_past_the_context() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let body = json!({"prompt": "Once upon a time", "max_tokens": 100, "temperature": 0});
    let plain = Server::start(&["smollm2", "-c", "48"]).post("/v1/completions", &body);
    let server = Server::start(&["smollm2", "-c", "48", "--context-shift"]);
    let r = server.post("/v1/completions", &body);
    assert_eq!(r["usage"]["completion_tokens"], 100, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    let (short, long) = (
        plain["choices"][0]["text"].as_str().unwrap(),
        r["choices"][0]["text"].as_str().unwrap(),
    );
    assert!(plain["usage"]["completion_tokens"].as_u64().unwrap() < 48);
    assert!(
        long.starts_with(short) && long.len() > short.len(),
        "{short:?} {long:?}"
    );
    // `n_keep: -1` keeps the prompt: another text, as long.
    let mut keep = body.clone();
    keep["n_keep"] = json!(-1);
    let k = server.post("/v1/completions", &keep);
    assert_eq!(k["usage"]["completion_tokens"], 100, "{k}");
    assert!(k["choices"][0]["text"].as_str().unwrap().starts_with(short));
    // Nothing of the shifted sessions was kept to start from.
    let again = server.post("/v1/completions", &body);
    assert_eq!(again["choices"][0]["text"], r["choices"][0]["text"]);
    let cached = &again["usage"]["prompt_tokens_details"]["cached_tokens"];
    assert!(cached.is_null() || cached == 0, "{again}");
    // Wasm tenants shift their sessions through the host: the same texts.
    if let Some(g) = guest() {
        let wasm = Server::start(&[
            "smollm2",
            "-c",
            "48",
            "--context-shift",
            "--wasm",
            "--guest",
            &g,
        ]);
        let w = wasm.post("/v1/completions", &body);
        assert_eq!(w["choices"][0]["text"], r["choices"][0]["text"], "{w}");
        assert_eq!(w["usage"]["completion_tokens"], 100);
        let w = wasm.post("/v1/completions", &keep);
        assert_eq!(w["choices"][0]["text"], k["choices"][0]["text"], "{w}");
    }
}

/// llama.cpp's own `/completion` (and `/completions`): `n_predict`, the
/// text in `content` (the `/v1/completions` text), `stop_type` and
/// `stopping_word`, counts, settings and timings; streamed, pieces that add
/// up to it and a last event with `"stop": true`; several prompts, an array.
#[test]
fn llama_cpps_completion_endpoint_answers_in_its_shape() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2"]);
    let prompt = "Once upon a time";
    let oai = server.post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0}),
    );
    let body = json!({"prompt": prompt, "n_predict": 12, "temperature": 0});
    let r = server.post("/completion", &body);
    assert_eq!(r["content"], oai["choices"][0]["text"], "{r}");
    assert_eq!(
        (&r["stop"], &r["stop_type"]),
        (&json!(true), &json!("limit"))
    );
    assert_eq!(r["tokens_predicted"], 12);
    assert_eq!(r["tokens_evaluated"], oai["usage"]["prompt_tokens"]);
    assert_eq!(r["prompt"], prompt);
    assert_eq!(r["generation_settings"]["n_predict"], 12);
    assert_eq!(r["generation_settings"]["temperature"], 0.0);
    let t = &r["timings"];
    assert_eq!(t["predicted_n"], 12);
    assert!(t["predicted_ms"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["predicted_per_second"].as_f64().unwrap() > 0.0, "{t}");
    assert_eq!(server.post("/completions", &body)["content"], r["content"]);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events: Vec<Value> = server
        .stream("/completion", &streamed)
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (last, pieces) = events.split_last().unwrap();
    let text: String = pieces
        .iter()
        .map(|e| {
            assert_eq!(e["stop"], false, "{e}");
            e["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, r["content"].as_str().unwrap());
    assert_eq!(
        (&last["stop"], &last["content"]),
        (&json!(true), &json!(""))
    );
    assert_eq!(last["tokens_predicted"], 12);

    // A stop string ends it: "word", and which.
    let r = server.post(
        "/completion",
        &json!({"prompt": prompt, "n_predict": 40, "temperature": 0, "stop": ["zzz", ","]}),
    );
    assert_eq!(
        (&r["stop_type"], &r["stopping_word"]),
        (&json!("word"), &json!(",")),
        "{r}"
    );
    assert!(!r["content"].as_str().unwrap().contains(','));
    // Several prompts: an array, in order.
    let both = server.post(
        "/completion",
        &json!({"prompt": [prompt, "The capital of France"], "n_predict": 4, "temperature": 0}),
    );
    let both = both.as_array().unwrap();
    assert_eq!(both.len(), 2);
    assert_eq!(both[1]["prompt"], "The capital of France");
    assert_eq!(both[1]["index"], 1);
    let (status, text) = server.call(
        "POST",
        "/completion",
        &json!({"prompt": prompt, "n_predict": 0}).to_string(),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("n_predict"), "{text}");

    // n_probs: each token's log-probability and alternatives, the ones
    // /v1/completions gives; greedy, each token is its own first
    // alternative.
    let lp = server.post(
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 12, "temperature": 0, "logprobs": 3}),
    );
    let mut with = body.clone();
    with["n_probs"] = json!(3);
    let r = server.post("/completion", &with);
    let probs = r["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 12, "{r}");
    let theirs = lp["choices"][0]["logprobs"]["token_logprobs"]
        .as_array()
        .unwrap();
    for (p, l) in probs.iter().zip(theirs) {
        assert_eq!(&p["logprob"], l);
        let top = p["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["id"], p["id"], "{p}");
    }
    with["stream"] = json!(true);
    let streamed: usize = server
        .stream("/completion", &with)
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|e| e["completion_probabilities"].as_array().map(Vec::len))
        .sum();
    assert_eq!(streamed, 12);

    // post_sampling_probs: what the samplers left, as probabilities. With
    // top-k 3 and n_probs 5 that is every token left (they add up to 1),
    // the drawn one among them; greedy, the token alone with 1.
    let sampled = json!({"prompt": prompt, "n_predict": 12, "temperature": 0.9, "top_k": 3,
                         "seed": 5, "n_probs": 5, "post_sampling_probs": true});
    let r = server.post("/completion", &sampled);
    let probs = r["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 12, "{r}");
    for p in probs {
        let top = p["top_probs"].as_array().unwrap();
        assert!((1..=3).contains(&top.len()), "{p}");
        let sum: f64 = top.iter().map(|t| t["prob"].as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{p}");
        let drawn = top.iter().find(|t| t["id"] == p["id"]).unwrap();
        assert_eq!(drawn["prob"], p["prob"], "{p}");
        assert!(p.get("logprob").is_none() && p.get("top_logprobs").is_none());
    }
    let mut plain = sampled.clone();
    plain["post_sampling_probs"] = json!(false);
    assert_eq!(server.post("/completion", &plain)["content"], r["content"]);
    let mut greedy = sampled.clone();
    greedy["temperature"] = json!(0);
    let r = server.post("/completion", &greedy);
    for p in r["completion_probabilities"].as_array().unwrap() {
        assert_eq!(p["prob"], 1.0, "{p}");
        assert_eq!(p["top_probs"].as_array().unwrap().len(), 1, "{p}");
    }
}

#[test]
fn bad_requests_get_clear_errors() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "-c", "64", "--max-body", "2000"]);
    let long = "word ".repeat(100);
    for (path, body, status, says) in [
        ("/v1/chat/completions", "{not json".to_string(), 400, "JSON"),
        (
            "/v1/chat/completions",
            r#"{"messages": 3}"#.into(),
            422,
            "messages",
        ),
        (
            "/v1/chat/completions",
            question(json!({"n": 17})).to_string(),
            400,
            "from 1 to 16",
        ),
        (
            "/v1/completions",
            json!({"prompt": ["fine", long]}).to_string(),
            400,
            "context holds 64",
        ),
        (
            "/v1/completions",
            json!({"prompt": long}).to_string(),
            400,
            "context holds 64",
        ),
        (
            "/v1/completions",
            json!({"prompt": [1, 99_999_999]}).to_string(),
            400,
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(3000)}).to_string(),
            413,
            "",
        ),
        ("/v1/nothing", "{}".into(), 404, "no such route"),
    ] {
        let (got, text) = server.call("POST", path, &body);
        assert_eq!(got, status, "{path} {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert!(
            e["error"]["message"].as_str().unwrap().contains(says),
            "{e}"
        );
        assert!(e["error"]["type"].is_string(), "{e}");
    }
    let (got, _) = server.call("GET", "/v1/completions", "");
    assert_eq!(got, 405);
    // A form's content type (as `curl -d` sends) is read as JSON too, as
    // llama.cpp's server reads it.
    let body = json!({"prompt": "Hello", "max_tokens": 2}).to_string();
    let mut c = TcpStream::connect(&server.addr).unwrap();
    write!(
        c,
        "POST /v1/completions HTTP/1.0\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let (got, text) = status_and_body(&raw);
    assert_eq!(got, 200, "{text}");
    let r = server.post(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 2}),
    );
    assert_eq!(r["usage"]["completion_tokens"], 2);
}

/// A server holding all the requests it may refuses the next with a 503;
/// a client that goes away mid-stream gives its place back: natively, and
/// with wasm tenants (whose guest is told to stop).
#[test]
fn a_full_server_refuses_and_a_gone_client_frees_its_place() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    // A context long enough that a request nobody stops outlasts the wait
    // below.
    let limits = ["smollm2", "--parallel", "1", "--queue", "0", "-c", "8192"];
    full_server_refuses_and_frees(&Server::start(&limits));
    if let Some(g) = guest() {
        let mut wasm = limits.to_vec();
        wasm.extend(["--wasm", "--guest", &g]);
        full_server_refuses_and_frees(&Server::start(&wasm));
    }
}

fn full_server_refuses_and_frees(server: &Server) {
    // Generation that never ends early: every end-of-generation token banned.
    let path = catalog::cached_path(&catalog::SMOLLM2).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let bias: serde_json::Map<String, Value> = tok
        .eog_ids()
        .iter()
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    assert!(!bias.is_empty());
    let endless = json!({"prompt": "Once upon a time", "stream": true, "logit_bias": bias});
    let mut first = server.send("POST", "/v1/completions", &endless.to_string());
    let mut seen = [0u8; 1024];
    let n = first.read(&mut seen).unwrap();
    assert!(String::from_utf8_lossy(&seen[..n]).starts_with("HTTP/1.0 200"));

    let (status, text) = server.call("POST", "/v1/completions", r#"{"prompt": "Hi"}"#);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("try again later"), "{text}");

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = server.call(
            "POST",
            "/v1/completions",
            r#"{"prompt": "Hi", "max_tokens": 2}"#,
        );
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{text}");
        assert!(
            Instant::now() < deadline,
            "the gone client's place never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With `--api-key`, every route but /health wants `Authorization: Bearer
/// KEY`, and says so with a 401.
#[test]
fn an_api_key_keeps_out_who_lacks_it() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--api-key", "s3cret"]);
    let body = r#"{"prompt": "Hello", "max_tokens": 2}"#;
    for headers in [
        "",
        "authorization: Bearer s3cre\r\n",
        "authorization: s3cret\r\n",
    ] {
        let (status, text) = server.call_with("POST", "/v1/completions", headers, body);
        assert_eq!(status, 401, "{headers:?}: {text}");
        assert!(text.contains("Authorization: Bearer"), "{text}");
        assert_eq!(server.call_with("GET", "/v1/models", headers, "").0, 401);
    }
    let key = "authorization: Bearer s3cret\r\n";
    let (status, text) = server.call_with("POST", "/v1/completions", key, body);
    assert_eq!(status, 200, "{text}");
    assert_eq!(server.call_with("GET", "/v1/models", key, "").0, 200);
    assert_eq!(server.call("GET", "/health", "").0, 200);
    assert_eq!(server.call("GET", "/v1/health", "").0, 200);
}

/// Ctrl-C (SIGINT) stops the server once the answers in flight end: a
/// streamed answer runs to `[DONE]`, and the process exits cleanly.
#[cfg(unix)]
#[test]
fn ctrl_c_lets_answers_in_flight_end() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let mut server = Server::start(&["smollm2"]);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0,
                      "stream": true});
    let mut c = server.send("POST", "/v1/completions", &body.to_string());
    let mut first = [0u8; 12];
    c.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.0 200");
    server.interrupt();
    // (A bound on the wait, so that an answer that never ends fails here,
    // with what came of it, rather than holding the test run: seen once.)
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut rest = String::new();
    let read = c.read_to_string(&mut rest);
    assert!(read.is_ok(), "no end after SIGINT ({read:?}); got: {rest}");
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(server.child.wait().unwrap().success());
}

/// A second Ctrl-C stops the server at once, the answer in flight cut.
#[test]
fn ctrl_c_twice_stops_at_once() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let mut server = Server::start(&["smollm2"]);
    let body = json!({"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0,
                      "ignore_eos": true, "stream": true});
    let mut c = server.send("POST", "/v1/completions", &body.to_string());
    let mut first = [0u8; 12];
    c.read_exact(&mut first).unwrap();
    server.interrupt();
    std::thread::sleep(Duration::from_millis(300));
    server.interrupt();
    assert!(server.exit_within(Duration::from_secs(20)).success());
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut rest = String::new();
    let _ = c.read_to_string(&mut rest);
    assert!(!rest.trim_end().ends_with("data: [DONE]"), "{rest}");
}

/// After Ctrl-C, a connection that never finishes its request does not
/// hold the server: once no answer is in flight it gets a grace period,
/// then the server exits.
#[test]
fn ctrl_c_does_not_wait_for_stalled_connections() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let mut server = Server::start(&["smollm2"]);
    let mut stalled = TcpStream::connect(&server.addr).unwrap();
    write!(stalled, "GET /health HTTP/1.1\r\nhost: x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.interrupt();
    assert!(server.exit_within(Duration::from_secs(60)).success());
    drop(stalled);
}

/// LoRA adapters (`--lora`, `--lora-scaled`): a request runs with the
/// server's scales, or with its own (`lora`), as `realm run` with the same
/// adapters answers, also when requests with different adapters decode
/// together; `/lora-adapters` lists them and sets the server's scales; a
/// kept cache is reused only by a request with the same adapters.
#[test]
fn lora_adapters_answer_as_realm_runs_with_them() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("realm-serve-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.gguf"), dir.join("b.gguf"));
    for (path, rank, seed) in [(&a, "8", "1"), (&b, "4", "2")] {
        let p = path.to_str().unwrap();
        let (ok, _, err) = realm(&[
            "synth",
            "smollm2",
            "--lora",
            rank,
            "--alpha",
            "16",
            "--amplitude",
            "0.15",
            "--seed",
            seed,
            "-o",
            p,
        ]);
        assert!(ok, "{err}");
    }
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    const STORY: &str = "Once upon a time, in a small village by the sea,";
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "smollm2", "-p", STORY, "-n", "32", "--temp", "0"];
        args.extend(["--no-display-prompt"]);
        args.extend(extra);
        let (ok, out, err) = realm(&args);
        assert!(ok, "{err}");
        out.trim_end_matches('\n').to_string()
    };
    let b_scaled = format!("{b}:0.7");
    let want_a = run(&["--lora", a]);
    let want_none = run(&[]);
    let want_b = run(&["--lora-scaled", &b_scaled]);
    let want_both = run(&["--lora", a, "--lora-scaled", &b_scaled]);
    assert!(want_a != want_none && want_b != want_none && want_both != want_a);

    let server = Server::start(&[
        "smollm2",
        "--parallel",
        "3",
        "--lora",
        a,
        "--lora-scaled",
        &format!("{b}:0"),
    ]);
    let (status, list) = server.call("GET", "/lora-adapters", "");
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        list,
        json!([{"id": 0, "path": a, "scale": 1.0}, {"id": 1, "path": b, "scale": 0.0}])
    );
    let ask = |lora: Option<Value>| {
        let mut body = json!({"prompt": STORY, "temperature": 0, "max_tokens": 32});
        if let Some(l) = lora {
            body["lora"] = l;
        }
        server.post("/v1/completions", &body)["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let none = json!([{"id": 0, "scale": 0.0}]);
    let only_b = json!([{"id": 1, "scale": 0.7}]);
    let both = json!([{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.7}]);
    // One after another on one prompt: kept caches must not cross adapters.
    assert_eq!(ask(None), want_a);
    assert_eq!(ask(Some(none.clone())), want_none);
    assert_eq!(ask(Some(only_b.clone())), want_b);
    assert_eq!(ask(Some(both.clone())), want_both);
    assert_eq!(
        ask(Some(json!([]))),
        want_a,
        "an empty list is the server's"
    );
    // Together, in one batch.
    let asked = [None, Some(none), Some(only_b), Some(both)];
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = asked
            .iter()
            .map(|l| {
                let ask = &ask;
                s.spawn(move || ask(l.clone()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        together,
        [want_a.clone(), want_none.clone(), want_b.clone(), want_both]
    );
    // The server's scales, set.
    let set = |body: &str| server.call("POST", "/lora-adapters", body);
    assert_eq!(set(r#"[{"id": 1, "scale": 0.7}]"#).0, 200);
    assert_eq!(ask(None), want_b);
    let (_, list) = server.call("GET", "/lora-adapters", "");
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        (list[0]["scale"].as_f64(), list[1]["scale"].as_f64()),
        (Some(0.0), Some(0.699999988079071))
    );
    // Ids it lacks are refused.
    assert_eq!(set(r#"[{"id": 2, "scale": 1}]"#).0, 400);
    let (status, body) = server.call(
        "POST",
        "/v1/completions",
        &json!({"prompt": STORY, "lora": [{"id": 5, "scale": 1}]}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no LoRA adapter 5"), "{body}");
    drop(server);
    // Loaded without being applied: scale 0 until asked for.
    let unapplied = Server::start(&["smollm2", "--lora", a, "--lora-init-without-apply"]);
    let (_, list) = unapplied.call("GET", "/lora-adapters", "");
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap(),
        json!([{"id": 0, "path": a, "scale": 0.0}])
    );
    let body = json!({"prompt": STORY, "temperature": 0, "max_tokens": 32});
    let text = |r: Value| r["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(text(unapplied.post("/v1/completions", &body)), want_none);
    let mut with_a = body.clone();
    with_a["lora"] = json!([{"id": 0, "scale": 1.0}]);
    assert_eq!(text(unapplied.post("/v1/completions", &with_a)), want_a);
    drop(unapplied);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A chat's reasoning and answer, whole and streamed: `reasoning_content`
/// and `content`, and the streamed deltas of each put together.
fn reasoning_and_answer(server: &Server, body: &Value) -> [(String, String); 2] {
    let whole = server.post("/v1/chat/completions", body);
    let m = &whole["choices"][0]["message"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (mut reasoning, mut content) = (String::new(), String::new());
    for d in server.stream("/v1/chat/completions", &streamed) {
        if d == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&d).unwrap();
        let delta = &v["choices"][0]["delta"];
        // Every chunk says something (a role, text or the end).
        assert!(
            delta.as_object().is_some_and(|o| !o.is_empty())
                || !v["choices"][0]["finish_reason"].is_null(),
            "{d}"
        );
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or_default());
        content.push_str(delta["content"].as_str().unwrap_or_default());
    }
    [
        (text(&m["reasoning_content"]), text(&m["content"])),
        (reasoning, content),
    ]
}

/// Reasoning apart from the answer, as llama.cpp's server gives it: a
/// `<think>` block's text in `reasoning_content` (`reasoning_format`
/// deepseek, or the server's `--reasoning-format`), whole and streamed
/// alike; the reply as it is with `none`; a block the template's prompt
/// opened; gpt-oss's harmony channels and Mistral's `[THINK]` block where
/// the template writes them. The replies are SmolLM2's, held to the
/// markers by a grammar.
#[test]
fn reasoning_is_told_from_the_answer() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let think = "root ::= \"<think>\\nThe user asks about France.\\n</think>\\n\\nIt is \" \
                 [A-Z] [a-z]+ \".\"";
    let ask = |grammar: &str, extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "Capital of France?"}],
                              "max_tokens": 96, "temperature": 0, "grammar": grammar});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let server = Server::start(&["smollm2"]);
    // SmolLM2's template writes no reasoning: `auto` leaves the reply.
    let [(r, c), _] = reasoning_and_answer(&server, &ask(think, json!({})));
    assert_eq!(r, "");
    assert!(
        c.starts_with("<think>\nThe user asks about France.\n</think>\n\nIt is "),
        "{c}"
    );
    let raw = c;
    let deepseek = ask(think, json!({"reasoning_format": "deepseek"}));
    let [whole, streamed] = reasoning_and_answer(&server, &deepseek);
    assert_eq!(whole, streamed);
    assert_eq!(whole.0, "The user asks about France.");
    let block = "<think>\nThe user asks about France.\n</think>\n\n";
    assert_eq!(whole.1, &raw[block.len()..]);
    let bad = ask(think, json!({"reasoning_format": "dsk"}));
    let (status, text) = server.call("POST", "/v1/chat/completions", &bad.to_string());
    assert_eq!(status, 400, "{text}");
    drop(server);

    // A template whose prompt opens the block; its reply closes it.
    let opened = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
                  {% endfor %}<|im_start|>assistant\n<think>\n";
    let server = Server::start(&["smollm2", "--chat-template", opened]);
    let closes = "root ::= \"France has one.\\n</think>\\nParis.\"";
    let [whole, streamed] = reasoning_and_answer(&server, &ask(closes, json!({})));
    assert_eq!(whole, streamed);
    assert_eq!(whole, ("France has one.".to_string(), "Paris.".to_string()));
    // Anthropic's Messages API: the reasoning as a thinking block, whole
    // and streamed, as the chat completion's (free text: all reasoning,
    // the block never closed in 12 tokens).
    let free = json!({"messages": [{"role": "user", "content": "Capital of France?"}],
                      "max_tokens": 12, "temperature": 0});
    let [(reasoning, answer), _] = reasoning_and_answer(&server, &free);
    assert!(
        !reasoning.is_empty() && answer.is_empty(),
        "{reasoning:?} {answer:?}"
    );
    let message = server.post("/v1/messages", &free);
    let blocks = message["content"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "thinking");
    assert_eq!(blocks[0]["thinking"], reasoning.as_str());
    assert_eq!(blocks.len(), 2, "{message}");
    let mut streamed_free = free.clone();
    streamed_free["stream"] = json!(true);
    let (names, events) = server.named_events("/v1/messages", &streamed_free);
    let thought: String = events
        .iter()
        .filter(|e| e["delta"]["type"] == "thinking_delta")
        .map(|e| e["delta"]["thinking"].as_str().unwrap())
        .collect();
    assert_eq!(thought, reasoning);
    let starts = names.iter().filter(|n| *n == "content_block_start").count();
    let stops = names.iter().filter(|n| *n == "content_block_stop").count();
    assert_eq!((starts, stops), (2, 2), "{names:?}");
    // The Responses API: a reasoning item before the message.
    let asked = json!({"input": "Capital of France?", "max_output_tokens": 12,
                       "temperature": 0});
    let response = server.post("/v1/responses", &asked);
    let output = response["output"].as_array().unwrap();
    assert_eq!(output[0]["type"], "reasoning", "{response}");
    assert_eq!(output[0]["content"][0]["text"], reasoning.as_str());
    assert_eq!(output[1]["type"], "message");
    let mut streamed_asked = asked.clone();
    streamed_asked["stream"] = json!(true);
    let (_, events) = server.named_events("/v1/responses", &streamed_asked);
    let thought: String = events
        .iter()
        .filter(|e| e["type"] == "response.reasoning_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(thought, reasoning);
    // The same items as the whole answer's, but for their ids.
    let last = events.last().unwrap();
    let without_ids = |items: &Value| -> Vec<Value> {
        let mut items = items.as_array().unwrap().clone();
        for it in &mut items {
            it.as_object_mut().unwrap().remove("id");
        }
        items
    };
    assert_eq!(
        without_ids(&last["response"]["output"]),
        without_ids(&response["output"]),
        "{last}"
    );
    drop(server);

    // Harmony: the analysis channel is the reasoning, the final one the
    // answer.
    let harmony = "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>\
                   {% endfor %}<|start|>assistant{# <|channel|> #}";
    let server = Server::start(&["smollm2", "--chat-template", harmony]);
    let channels = "root ::= \"<|channel|>analysis<|message|>Easy: Paris.<|end|>\
                    <|start|>assistant<|channel|>final<|message|>Paris.\"";
    let [whole, streamed] = reasoning_and_answer(&server, &ask(channels, json!({})));
    assert_eq!(whole, streamed);
    assert_eq!(whole, ("Easy: Paris.".to_string(), "Paris.".to_string()));
    let none = ask(channels, json!({"reasoning_format": "none"}));
    let [(r, c), _] = reasoning_and_answer(&server, &none);
    assert_eq!(r, "");
    assert!(c.starts_with("<|channel|>analysis<|message|>"), "{c}");
    drop(server);

    // Mistral's `[THINK]` block (Magistral, Ministral 3), where the
    // template writes it: by the template, and as `deepseek` asks.
    let mistral = "{% for m in messages %}[INST]{{ m.content }}[/INST]{% endfor %}\
                   {# [THINK] #}";
    let server = Server::start(&["smollm2", "--chat-template", mistral]);
    let bracketed = "root ::= \"[THINK]France has one.[/THINK]Paris.\"";
    for extra in [json!({}), json!({"reasoning_format": "deepseek"})] {
        let [whole, streamed] = reasoning_and_answer(&server, &ask(bracketed, extra));
        assert_eq!(whole, streamed);
        assert_eq!(whole, ("France has one.".to_string(), "Paris.".to_string()));
    }
}

/// `chat_template_kwargs` and `reasoning_effort` reach the chat template
/// (`/apply-template` shows the prompt a chat would run).
#[test]
fn template_variables_reach_the_template() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let tpl = "{% for m in messages %}{{ m.content }}{% endfor %}|{{ enable_thinking }}|\
               {{ reasoning_effort }}|{{ add_generation_prompt }}";
    let server = Server::start(&["smollm2", "--chat-template", tpl]);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}],
                      "chat_template_kwargs": {"enable_thinking": false,
                                               "add_generation_prompt": "not this"},
                      "reasoning_effort": "high"});
    let applied = server.post("/apply-template", &body);
    // (Booleans print as Python prints them, as transformers renders.)
    assert_eq!(applied["prompt"], "Hi|False|high|True");
    let bad = json!({"messages": [{"role": "user", "content": "Hi"}],
                     "chat_template_kwargs": [1]});
    assert_eq!(
        server.call("POST", "/apply-template", &bad.to_string()).0,
        400
    );
}

/// A Hermes-style template (Qwen 2.5's and 3's format, written anew): the
/// tools as `tojson` writes them, calls as `<tool_call>` blocks, results
/// as `<tool_response>`.
const HERMES_TEMPLATE: &str = "{%- if tools %}<|im_start|>system\nYou may call these tools:\n\
{% for t in tools %}{{ t | tojson }}\n{% endfor %}To call one, write <tool_call>\n\
{\"name\": <name>, \"arguments\": <arguments>}\n</tool_call><|im_end|>\n{% endif %}\
{%- for m in messages %}{%- if m.role == \"tool\" %}<|im_start|>user\n<tool_response>\n\
{{ m.content }}\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}\
{% for c in m.tool_calls or [] %}<tool_call>\n{\"name\": \"{{ c.function.name }}\", \
\"arguments\": {{ c.function.arguments | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n\
{% endif %}{%- endfor %}<|im_start|>assistant\n";

/// A gpt-oss-style template (harmony, written anew): calls as messages to
/// `functions.NAME`, results as messages from them.
const HARMONY_TEMPLATE: &str = "{%- if tools %}<|start|>developer<|message|># Tools\n\
{% for t in tools %}{{ t.function.name }}: {{ t.function.parameters | tojson }}\n{% endfor %}\
<|end|>{%- endif %}{%- for m in messages %}{%- if m.role == \"tool\" %}<|start|>functions.\
{{ m.name }} to=assistant<|channel|>commentary<|message|>{{ m.content | tojson }}<|end|>\
{%- elif m.tool_calls %}<|start|>assistant to=functions.{{ m.tool_calls[0].function.name }}\
<|channel|>commentary json<|message|>{{ m.tool_calls[0].function.arguments | tojson }}<|call|>\
{%- else %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endif %}{%- endfor %}\
<|start|>assistant";

/// A Llama 3-style template (written anew): calls as JSON with
/// `parameters`, results in `ipython` turns.
const LLAMA3_TEMPLATE: &str = "{%- if tools %}<|start_header_id|>system<|end_header_id|>\n\n\
Environment: ipython\nFunctions: {% for t in tools %}{{ t | tojson }} {% endfor %}<|eot_id|>\
{%- endif %}{%- for m in messages %}{%- if m.role == \"tool\" %}<|start_header_id|>ipython\
<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{%- elif m.tool_calls %}<|start_header_id|>\
assistant<|end_header_id|>\n\n{\"name\": \"{{ m.tool_calls[0].function.name }}\", \
\"parameters\": {{ m.tool_calls[0].function.arguments | tojson }}}<|eom_id|>{%- else %}\
<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{%- endif %}\
{%- endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n";

/// A Mistral-style template (Small 3.2's format, written anew): calls as
/// `[TOOL_CALLS]NAME[ARGS]{...}`.
const MISTRAL_TEMPLATE: &str = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}\
[/AVAILABLE_TOOLS]{% endif %}{%- for m in messages %}{%- if m.role == \"user\" %}[INST]\
{{ m.content }}[/INST]{%- elif m.role == \"tool\" %}[TOOL_RESULTS]{{ m.tool_call_id }}\
[TOOL_CONTENT]{{ m.content }}[/TOOL_RESULTS]{%- elif m.tool_calls %}{% for c in m.tool_calls %}\
{% if c.id | length != 9 %}{{ raise_exception('ids are 9 characters') }}{% endif %}\
[TOOL_CALLS]{{ c.function.name }}[ARGS]{{ c.function.arguments | tojson }}{% endfor %}\
{{ eos_token }}{%- else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";

/// An XML-parameters template (Qwen 3 Coder's and 3.5's format, written
/// anew): `<function=NAME>` and `<parameter=P>` elements in `<tool_call>`.
const XML_TEMPLATE: &str = "{%- if tools %}<|im_start|>system\nTools: {% for t in tools %}\
{{ t | tojson }} {% endfor %}<|im_end|>\n{% endif %}{%- for m in messages %}\
{%- if m.role == \"tool\" %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n\
</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}\
{% for c in m.tool_calls or [] %}<tool_call>\n<function={{ c.function.name }}>\n\
{% for k, v in c.function.arguments | items %}<parameter={{ k }}>\n{{ v }}\n</parameter>\n\
{% endfor %}</function>\n</tool_call>{% endfor %}<|im_end|>\n{% endif %}{%- endfor %}\
<|im_start|>assistant\n";

/// GLM-4.5's format (written anew): the name after `<tool_call>`, then
/// `<arg_key>`/`<arg_value>` pairs.
const GLM_TEMPLATE: &str = "{%- if tools %}<|system|>\nTools: {% for t in tools %}\
{{ t | tojson }} {% endfor %}{% endif %}{%- for m in messages %}{%- if m.role == \"tool\" %}\
<|observation|>\n<tool_response>\n{{ m.content }}\n</tool_response>{% else %}<|{{ m.role }}|>\n\
{{ m.content }}{% for c in m.tool_calls or [] %}\n<tool_call>{{ c.function.name }}\n\
{% for k, v in c.function.arguments | items %}<arg_key>{{ k }}</arg_key>\n\
<arg_value>{{ v }}</arg_value>\n{% endfor %}</tool_call>{% endfor %}{% endif %}{%- endfor %}\
<|assistant|>\n";

/// MiniMax-M2's format (written anew): `<invoke name=...>` and
/// `<parameter name=...>` elements in `<minimax:tool_call>`.
const MINIMAX_TEMPLATE: &str = "{%- if tools %}system\nTools: {% for t in tools %}\
{{ t | tojson }} {% endfor %}\n{% endif %}{%- for m in messages %}{{ m.role }}\n{{ m.content }}\
{% for c in m.tool_calls or [] %}<minimax:tool_call>\n<invoke name=\"{{ c.function.name }}\">\n\
{% for k, v in c.function.arguments | items %}<parameter name=\"{{ k }}\">{{ v }}</parameter>\n\
{% endfor %}</invoke>\n</minimax:tool_call>{% endfor %}\n{%- endfor %}ai\n";

/// DeepSeek V3.1's format (written anew): a section of calls, each a name
/// and JSON arguments between special tokens.
const DEEPSEEK_TEMPLATE: &str = "{%- if tools %}system\nTools: {% for t in tools %}\
{{ t | tojson }} {% endfor %}\n{% endif %}{%- for m in messages %}{% if m.role == \"tool\" %}\
<｜tool▁output▁begin｜>{{ m.content }}<｜tool▁output▁end｜>{% else %}{{ m.role }}: {{ m.content }}\
{% if m.tool_calls %}<｜tool▁calls▁begin｜>{% for c in m.tool_calls %}<｜tool▁call▁begin｜>\
{{ c.function.name }}<｜tool▁sep｜>{{ c.function.arguments | tojson }}<｜tool▁call▁end｜>{% endfor %}\
<｜tool▁calls▁end｜>{% endif %}\n{% endif %}{%- endfor %}assistant: ";

/// Kimi K2's format (written anew): calls numbered as `functions.NAME:N`.
const KIMI_TEMPLATE: &str = "{%- if tools %}system\nTools: {% for t in tools %}\
{{ t | tojson }} {% endfor %}\n{% endif %}{%- for m in messages %}{{ m.role }}: {{ m.content }}\
{% if m.tool_calls %}<|tool_calls_section_begin|>{% for c in m.tool_calls %}<|tool_call_begin|>\
functions.{{ c.function.name }}:{{ loop.index0 }}<|tool_call_argument_begin|>\
{{ c.function.arguments | tojson }}<|tool_call_end|>{% endfor %}<|tool_calls_section_end|>\
{% endif %}\n{%- endfor %}assistant: ";

/// A weather request after `shots` earlier calls of the tool (each with
/// its result and an answer), asking about Lima.
fn weather_after_calls(shots: usize, extra: Value) -> Value {
    let mut messages = Vec::new();
    for (i, city) in ["Oslo", "Rome"].iter().take(shots).enumerate() {
        let id = format!("c{i}");
        messages.push(json!({"role": "user", "content": format!("Weather in {city}?")}));
        messages.push(json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "get_weather",
             "arguments": json!({"city": city}).to_string()}}]}));
        messages.push(json!({"role": "tool", "tool_call_id": id,
                             "content": "{\"temperature\": 3}"}));
        messages.push(json!({"role": "assistant",
                             "content": format!("It is 3 degrees in {city}.")}));
    }
    messages.push(json!({"role": "user", "content": "Weather in Lima?"}));
    let mut body = weather_request(extra);
    body["messages"] = json!(messages);
    body
}

/// A call as the whole answer and the stream give it: (name, arguments,
/// content), each the same both ways (the stream ended with the finish
/// reason `tool_calls`); `piecewise`: the format streams the call as it is
/// written, its arguments in several deltas, not in one.
fn call_whole_and_streamed(
    server: &Server,
    body: &Value,
    piecewise: bool,
) -> (String, Value, Value) {
    let r = server.post("/v1/chat/completions", body);
    let choice = &r["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{r}");
    let call = &choice["message"]["tool_calls"][0]["function"];
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = chunks(&server.stream("/v1/chat/completions", &streamed));
    let deltas: Vec<&Value> = events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .flat_map(|d| d.as_array().unwrap())
        .collect();
    // The first delta of the call names it; the arguments' pieces put
    // together are its arguments (the model's text: equal as JSON).
    let first = &deltas[0];
    assert_eq!(
        (&first["index"], &first["type"]),
        (&json!(0), &json!("function"))
    );
    // (Ids are the request's own: alike in form.)
    let id = |v: &Value| v.as_str().unwrap().len();
    assert_eq!(
        id(&first["id"]),
        id(&choice["message"]["tool_calls"][0]["id"])
    );
    assert_eq!(first["function"]["name"], call["name"]);
    let pieces: String = deltas
        .iter()
        .map(|d| d["function"]["arguments"].as_str().unwrap())
        .collect();
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    assert_eq!(parse(&pieces), parse(call["arguments"].as_str().unwrap()));
    assert!(deltas.iter().all(|d| d["index"] == 0), "{deltas:?}");
    // Where the format streams arguments, they come in pieces; the others'
    // calls in one delta.
    assert_eq!(deltas.len() > 1, piecewise, "{deltas:?}");
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    let text: String = events
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let content = &choice["message"]["content"];
    assert_eq!(text, content.as_str().unwrap_or_default());
    let arguments = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    (
        call["name"].as_str().unwrap().to_string(),
        arguments,
        content.clone(),
    )
}

/// A server with `template` (and `more` arguments), which writes tool calls in a format of its
/// own: it gets the tools and OpenAI's messages (its rendering of an
/// earlier call, `history`, and no generic instructions), and the model's
/// calls come back as calls: required (the grammar holds from the first
/// token), and by choice (a lazy grammar: SmolLM2, shown two calls, writes
/// one itself); a plain answer streams as text, which a grammar holding
/// from the start would not have allowed.
fn native_tool_calls(template: &str, history: &str, more: &[&str]) {
    let mut args = vec!["smollm2", "--chat-template", template];
    args.extend_from_slice(more);
    let server = Server::start(&args);
    let two = weather_after_calls(2, json!({}));
    let prompt = server.post("/apply-template", &two)["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains(history), "{prompt}");
    assert!(!prompt.contains("These tools are available"), "{prompt}");

    let (name, args, content) = call_whole_and_streamed(&server, &two, true);
    assert_eq!(
        (name.as_str(), args, content),
        ("get_weather", json!({"city": "Lima"}), Value::Null)
    );
    let required = weather_request(json!({"tool_choice": "required"}));
    let (name, args, _) = call_whole_and_streamed(&server, &required, true);
    assert_eq!(name, "get_weather");
    assert!(args["city"].is_string(), "{args}");

    let plain = weather_request(json!({}));
    let [whole, streamed] = reasoning_and_answer(&server, &plain);
    assert_eq!(whole, streamed);
    assert!(whole.1.len() > 20, "{whole:?}");
    anthropic_call_streams(&server);
}

/// Anthropic's Messages API streams a required call as it is written: a
/// `tool_use` block named at its start, its input in several
/// `input_json_delta`s that put together are the whole answer's input.
fn anthropic_call_streams(server: &Server) {
    let tool = json!({"name": "get_weather", "description": "Get the current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}});
    let ask = json!({"max_tokens": 80, "temperature": 0, "tools": [tool],
        "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}]});
    let whole = server.post("/v1/messages", &ask);
    let block = whole["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap_or_else(|| panic!("{whole}"))
        .clone();
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let (_, events) = server.named_events("/v1/messages", &streamed);
    let start = events
        .iter()
        .find(|e| e["content_block"]["type"] == "tool_use")
        .unwrap();
    assert_eq!(start["content_block"]["name"], block["name"]);
    let pieces: Vec<&str> = events
        .iter()
        .filter(|e| e["index"] == start["index"])
        .filter_map(|e| e["delta"]["partial_json"].as_str())
        .collect();
    assert!(pieces.len() > 1, "{events:?}");
    let input: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(input, block["input"]);
    let stops = events
        .iter()
        .filter(|e| e["type"] == "content_block_stop" && e["index"] == start["index"])
        .count();
    assert_eq!(stops, 1, "{events:?}");
    responses_call_streams(server);
}

/// The Responses API streams a required call as it is written: a
/// `function_call` item added with its name, its arguments in several
/// deltas that put together are the `.done` event's and the item's, equal
/// as JSON to the whole answer's.
fn responses_call_streams(server: &Server) {
    let tool = json!({"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}});
    let ask = json!({"input": "What is the weather like in Paris today?", "tools": [tool],
                     "tool_choice": "required", "temperature": 0, "max_output_tokens": 80});
    let whole = server.post("/v1/responses", &ask);
    let call = whole["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|it| it["type"] == "function_call")
        .unwrap_or_else(|| panic!("{whole}"))
        .clone();
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let (_, events) = server.named_events("/v1/responses", &streamed);
    let added = events
        .iter()
        .find(|e| e["type"] == "response.output_item.added" && e["item"]["type"] == "function_call")
        .unwrap();
    assert_eq!(added["item"]["name"], call["name"]);
    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert!(deltas.len() > 1, "{events:?}");
    let done = events
        .iter()
        .find(|e| e["type"] == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(done["arguments"], deltas.concat());
    let parse = |v: &Value| serde_json::from_str::<Value>(v.as_str().unwrap()).unwrap();
    assert_eq!(parse(&done["arguments"]), parse(&call["arguments"]));
    let last = events.last().unwrap();
    let item = last["response"]["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|it| it["type"] == "function_call")
        .unwrap();
    assert_eq!(item["arguments"], done["arguments"]);
}

/// Hermes' format (Qwen 2.5 and 3, QwQ, Hermes): the tools as `tojson`
/// writes them, `<tool_call>` blocks.
#[test]
fn hermes_tool_calls_in_the_templates_format() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    native_tool_calls(
        HERMES_TEMPLATE,
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
         {\"city\": \"Rome\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n\
         {\"temperature\": 3}\n</tool_response>",
        &[],
    );
    let server = Server::start(&["smollm2", "--chat-template", HERMES_TEMPLATE]);
    let prompt = server.post("/apply-template", &weather_request(json!({})))["prompt"].clone();
    assert!(
        prompt.as_str().unwrap().contains(
            "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \
             \"Get the current weather in a city\", \"parameters\": {\"type\": \"object\""
        ),
        "{prompt}"
    );
}

/// Llama 3.1-3.3's format: JSON with `parameters`, results in `ipython`
/// turns.
#[test]
fn llama3_tool_calls_in_the_templates_format() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    native_tool_calls(
        LLAMA3_TEMPLATE,
        "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \
         \"parameters\": {\"city\": \"Rome\"}}<|eom_id|><|start_header_id|>ipython\
         <|end_header_id|>\n\n{\"temperature\": 3}<|eot_id|>",
        &[],
    );
}

/// Wasm tenants keep to a native format's lazy grammar as the native
/// engine does (the guest gets the triggers in its parameter block).
#[test]
fn native_tool_calls_in_wasm_tenants() {
    let Some(g) = guest() else { return };
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    native_tool_calls(
        HERMES_TEMPLATE,
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\"",
        &["--wasm", "--guest", &g],
    );
}

/// A harmony template: calls are messages to `functions.NAME` (the
/// recipient right after `<|start|>assistant`), read as calls and kept out
/// of the content and the reasoning; results go back as messages from the
/// function.
#[test]
fn harmony_tool_calls_are_messages_to_functions() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--chat-template", HARMONY_TEMPLATE]);
    let one = weather_after_calls(1, json!({"tool_choice": "required"}));
    let prompt = server.post("/apply-template", &one)["prompt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(prompt.contains(
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>\
         {\"city\": \"Oslo\"}<|call|><|start|>functions.get_weather to=assistant\
         <|channel|>commentary<|message|>\"{\\\"temperature\\\": 3}\"<|end|>"
    ));
    let (name, args, content) = call_whole_and_streamed(&server, &one, true);
    assert_eq!(
        (name.as_str(), args, content),
        ("get_weather", json!({"city": "Lima"}), Value::Null)
    );
}

/// Mistral's format: `[TOOL_CALLS]NAME[ARGS]{...}` calls, and call ids of
/// nine letters and digits (its templates refuse others), in the chat
/// completion and Anthropic's tool_use blocks; an id handed out goes back
/// through the template.
#[test]
fn mistral_tool_calls_get_nine_character_ids() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--chat-template", MISTRAL_TEMPLATE]);
    let required = weather_request(json!({"tool_choice": "required"}));
    let (name, args, content) = call_whole_and_streamed(&server, &required, true);
    assert_eq!((name.as_str(), &content), ("get_weather", &Value::Null));
    let r = server.post("/v1/chat/completions", &required);
    let call = &r["choices"][0]["message"]["tool_calls"][0];
    let id = call["id"].as_str().unwrap();
    assert!(
        id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    let mut follow = required.clone();
    follow["tool_choice"] = json!("auto");
    let messages = follow["messages"].as_array_mut().unwrap();
    messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
    messages.push(json!({"role": "tool", "tool_call_id": id, "content": "sunny"}));
    let prompt = server.post("/apply-template", &follow)["prompt"].clone();
    let city = args["city"].as_str().unwrap();
    let prompt = prompt.as_str().unwrap();
    assert!(
        prompt.contains(&format!(
            "[TOOL_CALLS]get_weather[ARGS]{{\"city\": \"{city}\""
        )) && prompt.ends_with(&format!(
            "}}<|im_end|>[TOOL_RESULTS]{id}[TOOL_CONTENT]sunny[/TOOL_RESULTS]"
        )),
        "{prompt}"
    );
    let message = server.post(
        "/v1/messages",
        &json!({"max_tokens": 60, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the weather like in Paris today?"}],
                "tools": [{"name": "get_weather", "input_schema": {"type": "object",
                    "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
                "tool_choice": {"type": "any"}}),
    );
    let block = &message["content"][0];
    assert_eq!(block["type"], "tool_use", "{message}");
    assert_eq!(block["id"].as_str().unwrap().len(), 9, "{message}");
}

/// GLM-4.5's, MiniMax-M2's, DeepSeek V3.1's and Kimi K2's formats: an
/// earlier call written in each, a required call read back, whole and
/// streamed.
#[test]
fn glm_minimax_deepseek_and_kimi_tool_calls() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    for (template, earlier) in [
        (
            GLM_TEMPLATE,
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n\
             </tool_call>",
        ),
        (
            MINIMAX_TEMPLATE,
            "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">Oslo\
             </parameter>\n</invoke>\n</minimax:tool_call>",
        ),
        (
            DEEPSEEK_TEMPLATE,
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Oslo\"}\
             <｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        ),
        (
            KIMI_TEMPLATE,
            "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0\
             <|tool_call_argument_begin|>{\"city\": \"Oslo\"}<|tool_call_end|>\
             <|tool_calls_section_end|>",
        ),
    ] {
        let server = Server::start(&["smollm2", "--chat-template", template]);
        let prompt =
            server.post("/apply-template", &weather_after_calls(1, json!({})))["prompt"].clone();
        assert!(prompt.as_str().unwrap().contains(earlier), "{prompt}");
        // (DeepSeek's markers are many byte tokens in SmolLM2's vocabulary.)
        let required = weather_request(json!({"tool_choice": "required", "max_tokens": 200}));
        let (name, args, content) = call_whole_and_streamed(&server, &required, true);
        assert_eq!((name.as_str(), &content), ("get_weather", &Value::Null));
        assert!(args["city"].is_string(), "{args}");
    }
}

/// The XML-parameters format (Qwen 3 Coder, Qwen 3.5, Nemotron 3 Nano):
/// an earlier call's arguments written as parameter elements, a required
/// call read back from them, whole and streamed.
#[test]
fn xml_parameter_tool_calls() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let server = Server::start(&["smollm2", "--chat-template", XML_TEMPLATE]);
    let prompt =
        server.post("/apply-template", &weather_after_calls(1, json!({})))["prompt"].clone();
    assert!(
        prompt.as_str().unwrap().contains(
            "<|im_start|>assistant\n<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n\
             </parameter>\n</function>\n</tool_call><|im_end|>"
        ),
        "{prompt}"
    );
    let required = weather_request(json!({"tool_choice": "required"}));
    let (name, args, content) = call_whole_and_streamed(&server, &required, true);
    assert_eq!((name.as_str(), &content), ("get_weather", &Value::Null));
    assert!(args["city"].is_string(), "{args}");
}

/// A model whose blocks keep a recurrent state (a tiny Qwen 3.5 and a
/// tiny LFM2, synthetic): a kept session is reused whole where all it
/// holds begins the next prompt, up to its checkpoint 4 tokens before its
/// prompt's end where the next prompt leaves it after that (with
/// `--ctx-checkpoints 0`, not at all), not at all where it leaves it
/// before; every answer is the one a server that keeps nothing gives.
#[test]
fn recurrent_models_reuse_kept_sessions_whole_or_to_a_checkpoint() {
    let dir = std::env::temp_dir().join(format!("realm-serve-recurrent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for layout in ["tiny-qwen35", "tiny-lfm2"] {
        let path = dir.join(format!("{layout}.gguf"));
        let p = path.to_str().unwrap();
        let (ok, _, err) = realm(&["synth", layout, "--seed", "5", "-o", p]);
        assert!(ok, "{err}");
        let keeping = Server::start(&[p, "-c", "128"]);
        let fresh = Server::start(&[p, "-c", "128", "--prompt-cache", "0"]);
        let unmarked = Server::start(&[p, "-c", "128", "--ctx-checkpoints", "0"]);
        let ask = |server: &Server, prompt: &str, max_tokens: u32| {
            let r = server.post(
                "/v1/completions",
                &json!({"prompt": prompt, "temperature": 0, "max_tokens": max_tokens}),
            );
            let u = &r["usage"];
            (
                r["choices"][0]["text"].as_str().unwrap().to_string(),
                u["prompt_tokens"].as_u64().unwrap(),
                u["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap(),
            )
        };
        // One token: the kept session holds the prompt alone.
        let (_, p1, c1) = ask(&keeping, "abc def ghi", 1);
        assert_eq!(c1, 0, "{layout}");
        // A prompt it begins: all of it reused.
        let longer = "abc def ghi jkl";
        let (text, p2, c2) = ask(&keeping, longer, 8);
        assert_eq!(c2, p1, "{layout}: {c2} of {p2} cached");
        assert_eq!(text, ask(&fresh, longer, 8).0, "{layout}");
        // A prompt that leaves it in its prompt's last 4 tokens: reused
        // up to the checkpoint there.
        let near = "abc def ghi jkX";
        let (text, p3, c3) = ask(&keeping, near, 8);
        assert_eq!((p3, c3), (p2, p2 - 4), "{layout}");
        assert_eq!(text, ask(&fresh, near, 8).0, "{layout}");
        ask(&unmarked, "abc def ghi jkl", 8);
        assert_eq!(ask(&unmarked, near, 8).2, 0, "{layout}: no checkpoints");
        // A prompt that leaves it before any checkpoint: nothing reused.
        let other = "abc xyz";
        let (text, _, c4) = ask(&keeping, other, 8);
        assert_eq!(c4, 0, "{layout}");
        assert_eq!(text, ask(&fresh, other, 8).0, "{layout}");
    }
}

/// Encoders served: a reranker (a tiny BERT with `cls` heads) answers
/// `/v1/rerank` in Jina's format (best first, `top_n`) and TEI's (`texts`,
/// `return_text`) with the scores `realm rerank` gives; `/v1/embeddings`
/// on it, `/v1/rerank` on an embedding model and chat on either are
/// refused with clear errors; an embedding model's vectors are unit
/// length.
#[test]
fn encoders_serve_embeddings_and_reranking() {
    let dir = std::env::temp_dir().join(format!("realm-serve-encoders-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |layout: &str| {
        let p = dir.join(format!("{layout}.gguf"));
        let p = p.to_str().unwrap().to_string();
        let (ok, _, err) = realm(&["synth", layout, "--seed", "5", "-o", &p]);
        assert!(ok, "{err}");
        p
    };
    let (ranker, embedder) = (path("tiny-bert-rank"), path("tiny-nomic-bert"));
    let docs = ["a b c", "d e f g", "h", "i j"];
    let mut args = vec!["rerank", ranker.as_str(), "-q", "q r s", "--json"];
    for d in docs {
        args.extend(["-d", d]);
    }
    let (ok, out, err) = realm(&args);
    assert!(ok, "{err}");
    let want: Value = serde_json::from_str(&out).unwrap();
    let want = want["results"].as_array().unwrap().clone();
    assert_eq!(want.len(), 4);
    let server = Server::start(&[&ranker, "-c", "64"]);
    let got = server.post(
        "/v1/rerank",
        &json!({"query": "q r s", "documents": docs, "top_n": 3}),
    );
    assert_eq!(got["object"], "list");
    assert_eq!(got["results"].as_array().unwrap()[..], want[..3]);
    let scores: Vec<f64> = want
        .iter()
        .map(|r| r["relevance_score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(got["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let tei = server.post(
        "/rerank",
        &json!({"query": "q r s", "texts": docs, "return_text": true}),
    );
    let first = &tei.as_array().unwrap()[0];
    assert_eq!(first["score"], want[0]["relevance_score"]);
    assert_eq!(
        first["text"],
        docs[want[0]["index"].as_u64().unwrap() as usize]
    );
    let (status, body) = server.call(
        "POST",
        "/v1/embeddings",
        &json!({"input": "a b"}).to_string(),
    );
    assert!(
        status == 400 && body.contains("/v1/rerank"),
        "{status} {body}"
    );
    let (status, body) = server.call(
        "POST",
        "/v1/rerank",
        &json!({"documents": docs}).to_string(),
    );
    assert!(status == 400 && body.contains("query"), "{status} {body}");
    let (status, body) = server.call(
        "POST",
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
    );
    assert!(
        status == 400 && body.contains("embedding model"),
        "{status} {body}"
    );

    let server = Server::start(&[&embedder, "-c", "64"]);
    let got = server.post("/v1/embeddings", &json!({"input": ["a b c", "d e"]}));
    for d in got["data"].as_array().unwrap() {
        let v: Vec<f64> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let length = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((length - 1.0).abs() < 1e-4, "{length}");
    }
    let (status, body) = server.call(
        "POST",
        "/v1/rerank",
        &json!({"query": "a", "documents": ["b"]}).to_string(),
    );
    assert!(
        status == 400 && body.contains("reranker"),
        "{status} {body}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

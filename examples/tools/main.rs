//! Tool calling, natively: the model is offered a tool, calls it (a grammar
//! built from the tool's schema keeps the call well formed), the program
//! runs the tool, hands the result back, and the model answers with it.
//!
//! ```text
//! cargo xtask fetch-model
//! cargo run --release --example tools -- "Is it raining in Paris?"
//! ```

use std::sync::Arc;

use realm_compute_cpu::CpuBackend;
use realm_core::catalog;
use realm_core::chat::{ChatMessage, ChatTemplate};
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::tools::{calls_text, result_text, ToolCall, ToolReply, Tools};
use realm_models::{generate, GenerateParams, Grammar, Model, SamplingParams};
use serde_json::{json, Value};

type Error = Box<dyn std::error::Error>;

/// The tool: today's weather in a city, from a table (a real program would
/// call a service here).
fn get_weather(args: &Value) -> Value {
    let city = args["city"].as_str().unwrap_or_default();
    let (temperature, sky) = match city.to_lowercase().as_str() {
        "oslo" => (-3, "snow"),
        "paris" => (11, "rain"),
        "lima" => (19, "cloud"),
        _ => return json!({"error": format!("no weather for {city}")}),
    };
    json!({"city": city, "temperature_c": temperature, "sky": sky})
}

/// One turn of the model: greedy, kept to `grammar` if given.
fn turn(
    model: &Model<'_, CpuBackend>,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    grammar: Option<Grammar>,
) -> Result<String, Error> {
    let text = template.render(messages, true)?;
    let prompt = tokenizer.encode(&text, false, true)?;
    let mut session = model.session(2048, 256)?;
    let params = GenerateParams {
        max_tokens: 96,
        sampling: SamplingParams::greedy(),
        grammar: grammar.map(Arc::new),
        ..GenerateParams::default()
    };
    Ok(generate(model, tokenizer, &mut session, &prompt, &params, |_| true)?.text)
}

/// Asks `question`: the model must first call `get_weather`; then, with
/// each result handed back, it calls again or answers (at most 3 calls).
/// Returns the calls it made and its answer.
fn ask(path: &std::path::Path, question: &str) -> Result<(Vec<ToolCall>, String), Error> {
    let file = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_metadata(file.metadata())?;
    let cpu = CpuBackend::new()?;
    let model = Model::load(&file, &cpu)?;
    let template = ChatTemplate::from_metadata(file.metadata(), &tokenizer)?;

    // Tools in OpenAI's shape. The first turn must call one ("required");
    // later ones may answer ("auto").
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "Today's weather in a city",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]);
    let required = Tools::from_openai(&tools, Some(&json!("required")), None)?.ok_or("no tools")?;
    let auto = Tools::from_openai(&tools, None, None)?.ok_or("no tools")?;
    let mut messages = vec![
        ChatMessage::new("system", auto.instructions()),
        ChatMessage::new("user", question),
    ];
    let mut made = Vec::new();
    for round in 0..4 {
        let tools = if round == 0 { &required } else { &auto };
        messages[0] = ChatMessage::new("system", tools.instructions());
        let reply = turn(
            &model,
            &tokenizer,
            &template,
            &messages,
            Some(tools.grammar(None)?),
        )?;
        let calls = match tools.parse(&reply)? {
            ToolReply::Response(answer) => {
                let answer = answer
                    .as_str()
                    .map_or_else(|| answer.to_string(), str::to_string);
                return Ok((made, answer));
            }
            ToolReply::Calls(_) if round == 3 => break,
            ToolReply::Calls(calls) => calls,
        };
        // The calls and their results go back into the conversation.
        messages.push(ChatMessage::new("assistant", calls_text(&calls)));
        let results: Vec<String> = calls
            .iter()
            .map(|c| result_text(Some(&c.name), &get_weather(&c.arguments).to_string()))
            .collect();
        messages.push(ChatMessage::new("user", results.join("\n")));
        made.extend(calls);
    }
    Err("the model kept calling tools".into())
}

fn main() -> Result<(), Error> {
    let path = catalog::cached_path(&catalog::SMOLLM2)
        .filter(|p| p.is_file())
        .ok_or("SmolLM2 is not cached: run `cargo xtask fetch-model`")?;
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Is it raining in Paris?".into());
    let (calls, answer) = ask(&path, &question)?;
    for c in &calls {
        println!("called {}({})", c.name, c.arguments);
    }
    println!("{answer}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_the_tool_and_answers_with_its_result() {
        let Some(path) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
            eprintln!("skipped: SmolLM2 is not cached");
            return;
        };
        let (calls, answer) = ask(&path, "Is it raining in Paris?").unwrap();
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(
            calls[0].arguments["city"], "Paris",
            "{}",
            calls[0].arguments
        );
        // The temperature only the tool knew.
        assert!(answer.contains("11") && answer.contains("rain"), "{answer}");
    }
}

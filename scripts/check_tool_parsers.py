#!/usr/bin/env python3
"""Checks that Realm reads models' replies with tools as llama.cpp does:
replies written in each template's own tool format (calls alone, after
text, after reasoning, two at once, of a tool that does not exist, none)
are read by llama.cpp's chat parser (`scripts/llama_tool_parse.cpp`,
compiled here against the `libllama-common` that `scripts/build_llama_cpp.sh
--tools` builds, as llama-server with `--jinja` reads them) and by `realm
chat-template --tools --parse` (as `realm serve` reads them). The calls
(names, and arguments as JSON values) must be the same; content and
reasoning the same but for surrounding whitespace, which Realm trims.

    scripts/check_tool_parsers.py [--realm target/release/realm] [--model smollm2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

LLAMA = os.path.expanduser("~/.cache/realm/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "now", "description": "The time.",
        "parameters": {"type": "object", "properties": {}}}},
]

OSLO = {"city": "Oslo"}
LIMA = {"city": "Lima", "days": 2}


def hermes(name, args):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


def xml(name, args):
    params = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in args.items())
    return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"


def glm45(name, args):
    params = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n"
                     for k, v in args.items())
    return f"<tool_call>{name}\n{params}</tool_call>"


def glm47(name, args):
    params = "".join(f"<arg_key>{k}</arg_key><arg_value>{v}</arg_value>" for k, v in args.items())
    return f"<tool_call>{name}{params}</tool_call>"


def minimax(name, args):
    params = "".join(f'<parameter name="{k}">{v}</parameter>\n' for k, v in args.items())
    return f'<minimax:tool_call>\n<invoke name="{name}">\n{params}</invoke>\n</minimax:tool_call>'


def deepseek(name, args):
    return ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>" + name + "<｜tool▁sep｜>"
            + json.dumps(args) + "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def deepseek_r1(name, args):
    return ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>" + name
            + "\n```json\n" + json.dumps(args) + "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def kimi(name, args):
    return ("<|tool_calls_section_begin|><|tool_call_begin|>functions." + name + ":0"
            + "<|tool_call_argument_begin|>" + json.dumps(args)
            + "<|tool_call_end|><|tool_calls_section_end|>")


def llama3(name, args):
    return json.dumps({"name": name, "parameters": args})


def mistral(name, args):
    return f"[TOOL_CALLS]{name}[ARGS]" + json.dumps(args)


def harmony(name, args):
    return (f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
            + json.dumps(args))


def harmony_plain(text):
    return "<|channel|>final<|message|>" + text


def harmony_before(text, call):
    return "<|channel|>commentary<|message|>" + text + "<|end|><|start|>assistant" + call


def plain(text):
    return text


def before(text, call):
    return text + "\n" + call


# Each template: its call writer, how two calls join (None: one call a
# reply), how it thinks before a call (None: it does not), and how a plain
# answer and text before a call are written.
TEMPLATES = [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", hermes, "\n", None, plain, before),
    ("Qwen-Qwen3-0.6B.jinja", hermes, "\n", "<think>\n{}\n</think>\n\n", plain, before),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", hermes, "\n", None, plain, before),
    ("Qwen3-Coder.jinja", xml, "\n", None, plain, before),
    ("Qwen3.5-4B.jinja", xml, "\n", "<think>\n{}\n</think>\n\n", plain, before),
    ("GLM-4.6.jinja", glm45, "\n", "<think>{}</think>\n", plain, before),
    ("GLM-4.7-Flash.jinja", glm47, "", "{}</think>", plain, before),
    ("MiniMax-M2.jinja", minimax, None, "{}\n</think>\n\n", plain, before),
    ("deepseek-ai-DeepSeek-V3.1.jinja", deepseek, None, None, plain, before),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", deepseek_r1, None, "{}\n</think>\n\n",
     plain, before),
    ("moonshotai-Kimi-K2.jinja", kimi, None, None, plain, before),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", llama3, None, None, plain, before),
    ("unsloth-mistral-Devstral-Small-2507.jinja", mistral, "", None, plain, before),
    ("mistralai-Ministral-3-14B-Reasoning-2512.jinja", mistral, "", "[THINK]{}[/THINK]", plain,
     before),
    ("openai-gpt-oss-120b.jinja", harmony, None,
     "<|channel|>analysis<|message|>{}<|end|><|start|>assistant", harmony_plain, harmony_before),
]


# Templates whose prompt opens a think block: their replies close it
# first (an empty one where they do not think).
OPENED = {"GLM-4.7-Flash.jinja", "MiniMax-M2.jinja", "deepseek-ai-DeepSeek-V3.1.jinja",
          "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja"}


def replies(call, join, think, plain_text, text_before, opened):
    out = [
        call("get_weather", OSLO),
        text_before("Let me check.", call("get_weather", OSLO)),
        plain_text("No call here, Oslo is cold."),
        call("get_time", {}),
    ]
    if join is not None:
        out.append(call("get_weather", OSLO) + join + call("get_weather", LIMA))
    if opened:
        out = ["</think>" + r for r in out]
    if think:
        out.append(think.format("The user wants Oslo.") + call("get_weather", LIMA))
    return out


def realm(args, template, tools_path, replies_path):
    run = subprocess.run(
        [args.realm, "chat-template", args.model, "--chat-template-file", template,
         "--tools", tools_path, "--parse", replies_path],
        capture_output=True, text=True, check=True)
    fmt = [l for l in run.stderr.splitlines() if l.startswith("tool calls:")]
    return [json.loads(l) for l in run.stdout.splitlines()], fmt[0].split(": ")[1]


def llama(binary, template, request):
    run = subprocess.run([binary, template], input=json.dumps(request),
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def same(a, b):
    calls = lambda m: [(c["name"], json.loads(c["arguments"])) for c in m["tool_calls"]]
    return (calls(a) == calls(b)
            and a["content"].strip() == b["content"].strip()
            and a["reasoning_content"].strip() == b["reasoning_content"].strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--realm", default="target/release/realm")
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    binary = os.path.join(tmp, "llama_tool_parse")
    here = os.path.dirname(os.path.abspath(__file__))
    bin_dir = os.path.join(LLAMA, "build", "bin")
    subprocess.run(
        ["g++", "-std=c++17", "-O1", f"-I{LLAMA}/common", f"-I{LLAMA}/include",
         f"-I{LLAMA}/ggml/include", f"-I{LLAMA}/vendor", os.path.join(here, "llama_tool_parse.cpp"),
         f"-L{bin_dir}", "-lllama-common", "-lllama", "-lggml", "-lggml-base",
         f"-Wl,-rpath,{bin_dir}", "-o", binary], check=True)
    tools_path = os.path.join(tmp, "tools.json")
    json.dump(TOOLS, open(tools_path, "w"))
    failed = total = refused = 0
    for name, call, join, think, plain_text, text_before in TEMPLATES:
        template = os.path.join(LLAMA, "models", "templates", name)
        texts = replies(call, join, think, plain_text, text_before, name in OPENED)
        replies_path = os.path.join(tmp, "replies.json")
        json.dump(texts, open(replies_path, "w"))
        ours, fmt = realm(args, template, tools_path, replies_path)
        theirs = llama(binary, template, {"tools": TOOLS, "tool_choice": "auto",
                                          "reasoning": True, "replies": texts})
        for text, a, b in zip(texts, ours, theirs):
            total += 1
            if "error" in b:
                refused += 1
                print(f"refused by llama.cpp  {name}: {text!r}\n    realm: {a}\n    llama: {b['error'][:200]}")
                continue
            if same(a, b):
                continue
            failed += 1
            print(f"DIFFERENT  {name} ({fmt}): {text!r}\n    realm: {a}\n    llama: {b}")
        print(f"{name} ({fmt}): {len(texts)} replies")
    print(f"{total - failed - refused} of {total} read alike; {refused} refused by llama.cpp's parser")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

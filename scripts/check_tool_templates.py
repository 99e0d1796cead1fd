#!/usr/bin/env python3
"""Checks that Realm renders real chat templates with tools as transformers
does: each template is rendered by Jinja2 set up as transformers sets it up
(trim_blocks, lstrip_blocks, its `tojson`, `raise_exception`,
`strftime_now`) and by `realm serve --chat-template-file` (`POST
/apply-template`), for conversations with tools, earlier calls and their
results; the two prompts must be equal.

The templates are llama.cpp's copies (`models/templates` in the
llama-cpp-python sdist that `scripts/build_llama_cpp.sh` unpacks); they are
read from there, not kept here.

    scripts/check_tool_templates.py [--realm target/release/realm]
        [--templates DIR] [--model smollm2]
"""

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES = [
    "Qwen-Qwen2.5-7B-Instruct.jinja",
    "Qwen-Qwen3-0.6B.jinja",
    "Qwen-QwQ-32B.jinja",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
    "openai-gpt-oss-120b.jinja",
    "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "ibm-granite-granite-4.0.jinja",
    "MiMo-VL.jinja",
    "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "Mistral-Small-3.2-24B-Instruct-2506.jinja",
    "unsloth-mistral-Devstral-Small-2507.jinja",
    "mistralai-Ministral-3-14B-Reasoning-2512.jinja",
    "Qwen3-Coder.jinja",
    "Qwen3.5-4B.jinja",
    "NVIDIA-Nemotron-3-Nano-30B-A3B-BF16.jinja",
    "StepFun3.5-Flash.jinja",
    "GLM-4.6.jinja",
    "GLM-4.7-Flash.jinja",
    "MiniMax-M2.jinja",
    "deepseek-ai-DeepSeek-V3.1.jinja",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
    "moonshotai-Kimi-K2.jinja",
]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "now", "description": "The time now.",
        "parameters": {"type": "object", "properties": {}}}},
]

CONVERSATIONS = {
    "ask": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo? Ünïcode <b>&</b>"}],
    "called": [
        {"role": "user", "content": "Weather in Oslo and the time?"},
        {"role": "assistant", "content": "", "reasoning_content": "Oslo first.",
         "tool_calls": [
            {"id": "call00001", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "tool_call_id": "call00001", "name": "get_weather",
         "content": "{\"temperature\": 3}"},
        {"role": "assistant", "content": "It is 3 degrees."},
        {"role": "user", "content": "And in Lima?"},
    ],
    # A call's result, the turn going on: its reasoning is written back.
    "calling": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the weather.",
         "tool_calls": [
            {"id": "call00002", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}]},
        {"role": "tool", "tool_call_id": "call00002", "name": "get_weather",
         "content": "{\"temperature\": 3}"},
    ],
}


def transformers_env():
    """Jinja2 as transformers' chat templating sets it up."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols])

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def realm_prompts(realm, model, template, requests):
    port = free_port()
    server = subprocess.Popen(
        [realm, "serve", model, "--port", str(port), "--chat-template-file", template],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                time.sleep(0.1)
        out = []
        for r in requests:
            try:
                out.append(post(port, "/apply-template", r)["prompt"])
            except urllib.error.HTTPError as e:
                out.append("ERROR " + e.read().decode())
        return out
    finally:
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--realm", default="target/release/realm")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--templates", default=os.path.expanduser(
        "~/.cache/realm/llama.cpp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates"))
    args = ap.parse_args()
    env = transformers_env()
    failed = 0
    for name in TEMPLATES:
        path = os.path.join(args.templates, name)
        source = open(path, encoding="utf-8").read()
        requests, wants = [], []
        for conv_name, messages in CONVERSATIONS.items():
            requests.append({"messages": [
                {**m, "tool_calls": [
                    {**c, "function": {**c["function"],
                                       "arguments": json.dumps(c["function"]["arguments"])}}
                    for c in m["tool_calls"]]} if "tool_calls" in m else m
                for m in messages], "tools": TOOLS})
            # OpenAI's messages as Realm gives them to a template: content
            # always text, arguments as objects, a tool message named;
            # for harmony, reasoning as `thinking` too, and no content
            # beside calls (as llama.cpp gives them).
            if "<|channel|>" in source:
                messages = [{**{k: v for k, v in m.items()
                                if not (k == "content" and "tool_calls" in m)},
                             "thinking": m["reasoning_content"]}
                            if "reasoning_content" in m else m for m in messages]
            # Ministral 3's template: system and assistant content as
            # blocks, reasoning a `thinking` block first (llama.cpp's
            # common_chat_params_init_ministral_3).
            if all(m in source for m in ("[SYSTEM_PROMPT]", "[TOOL_CALLS]", "[ARGS]")) \
                    and "[CALL_ID]" not in source:
                messages = [{**{k: v for k, v in m.items() if k != "reasoning_content"},
                             "content": ([{"type": "thinking", "thinking": m["reasoning_content"]}]
                                         if "reasoning_content" in m else [])
                             + [{"type": "text", "text": m["content"]}]}
                            if m["role"] in ("system", "assistant") else m for m in messages]
            wants.append(env.from_string(source).render(
                messages=messages, tools=TOOLS, add_generation_prompt=True,
                bos_token="<|im_start|>", eos_token="<|im_end|>"))
        got = realm_prompts(args.realm, args.model, path, requests)
        for conv_name, want, have in zip(CONVERSATIONS, wants, got):
            same = want == have
            failed += not same
            print(f"{'same' if same else 'DIFFERENT'}  {name}  {conv_name}  ({len(want)} chars)")
            if not same:
                at = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b),
                          min(len(want), len(have)))
                print(f"    jinja2: {want[max(0, at - 60):at + 60]!r}")
                print(f"    realm:  {have[max(0, at - 60):at + 200]!r}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

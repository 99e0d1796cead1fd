// llama.cpp's reading of chat replies with tools, for
// scripts/check_tool_parsers.py: the template (a file) and the tools are
// applied as llama-server applies them (`--jinja`), and each reply is parsed
// by the parser that gives, as a finished reply.
//
// usage: llama_tool_parse TEMPLATE_FILE < {"tools": [...], "tool_choice":
//        "auto", "reasoning": true, "replies": ["..."]}
// prints: [{"content", "reasoning_content", "tool_calls": [{"name",
//         "arguments"}]} or {"error"} for a reply the parser refuses, ...]
//         and the format's name on stderr.

#include "chat.h"

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

int main(int argc, char ** argv) {
    if (argc != 2) {
        std::cerr << "usage: llama_tool_parse TEMPLATE_FILE < request.json\n";
        return 2;
    }
    std::ifstream file(argv[1]);
    std::stringstream src;
    src << file.rdbuf();
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    auto req = common_json::parse(input);

    auto tmpls = common_chat_templates_init(nullptr, src.str(), "<s>", "</s>");
    common_chat_templates_inputs in;
    common_chat_msg user;
    user.role    = "user";
    user.content = "Weather in Oslo?";
    in.messages.push_back(user);
    in.tools               = common_chat_tools_parse_oaicompat(req.at("tools"));
    in.tool_choice         = common_chat_tool_choice_parse_oaicompat(req.at("tool_choice").get<std::string>());
    in.parallel_tool_calls = true;
    bool reasoning         = req.at("reasoning").get<bool>();
    in.reasoning_format    = reasoning ? COMMON_REASONING_FORMAT_DEEPSEEK : COMMON_REASONING_FORMAT_NONE;
    auto params            = common_chat_templates_apply(tmpls.get(), in);
    std::cerr << common_chat_format_name(params.format) << "\n";

    common_chat_parser_params pp(params);
    pp.reasoning_format = in.reasoning_format;
    pp.parser.load(params.parser);

    auto out = common_json::array();
    const auto & replies = req.at("replies");
    for (size_t i = 0; i < replies.size(); i++) {
        common_chat_msg msg;
        try {
            msg = common_chat_parse(replies.at(i).get<std::string>(), false, pp);
        } catch (const std::exception & e) {
            // A reply the format's parser refuses.
            out.push_back(common_json::object({ { "error", std::string(e.what()) } }));
            continue;
        }
        auto calls = common_json::array();
        for (const auto & c : msg.tool_calls) {
            calls.push_back(common_json::object({ { "name", c.name }, { "arguments", c.arguments } }));
        }
        out.push_back(common_json::object({ { "content", msg.content },
                                            { "reasoning_content", msg.reasoning_content },
                                            { "tool_calls", calls } }));
    }
    std::cout << out.dump() << "\n";
    return 0;
}

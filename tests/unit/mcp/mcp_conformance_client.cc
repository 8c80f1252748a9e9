// mcp_conformance_client: the client side of the official MCP conformance suite
// (@modelcontextprotocol/conformance, `conformance client --command ...`).
//
//   mcp_conformance_client <server-url>
//
// The suite starts a scenario server, then runs this program with the server's URL as the
// last argument and MCP_CONFORMANCE_SCENARIO / MCP_CONFORMANCE_PROTOCOL_VERSION in the
// environment (and MCP_CONFORMANCE_CONTEXT with the tool calls some scenarios want). The
// client connects with McpClient (era detection included), lists the tools, makes the calls,
// and exits 0, or 1 when it cannot connect or list; the scenario's checks judge the rest.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "tools/mcp/mcp_client.h"

using agentd::Json;
using namespace agentd::tools::mcp;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: mcp_conformance_client <server-url>\n");
    return 2;
  }
  std::string url = argv[argc - 1];
  const char* scenario_env = std::getenv("MCP_CONFORMANCE_SCENARIO");
  const char* version_env = std::getenv("MCP_CONFORMANCE_PROTOCOL_VERSION");
  std::string scenario = scenario_env != nullptr ? scenario_env : "";
  std::string version = version_env != nullptr ? version_env : kVersion20251125;

  ClientOptions options;
  options.server_name = "conformance";
  options.client_name = "agentd-conformance-client";
  // The stateless revision is asked for as a dual-era client would; a handshake revision
  // exactly, since the scenario checks the version sent in initialize.
  if (version >= kStatelessVersion) {
    options.protocol_versions = {version, kVersion20251125, kVersion20250618};
  } else {
    options.protocol_versions = {version};
  }
  auto client = McpClient::ConnectHttpBlocking(options, HttpTarget{url, {}, {}, {}, {}});
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "scenario %s: connected, era %s, protocol %s\n", scenario.c_str(),
               (*client)->era() == Era::kStateless ? "stateless" : "handshake",
               (*client)->protocol_version().c_str());
  auto tools = (*client)->ListToolsBlocking();
  if (!tools.ok()) {
    std::fprintf(stderr, "tools/list: %s\n", tools.status().ToString().c_str());
    return 1;
  }
  // Scenarios that want particular calls name them in MCP_CONFORMANCE_CONTEXT.toolCalls;
  // otherwise every listed tool is called once, with the arguments the known ones need.
  Json context = Json::object();
  if (const char* c = std::getenv("MCP_CONFORMANCE_CONTEXT")) {
    auto parsed = agentd::ParseJson(c, "MCP_CONFORMANCE_CONTEXT");
    if (parsed.ok() && parsed->is_object()) context = std::move(parsed).value();
  }
  std::vector<std::pair<std::string, Json>> calls;
  if (context.contains("toolCalls") && context["toolCalls"].is_array()) {
    for (const auto& call : context["toolCalls"]) {
      calls.emplace_back(call.value("name", std::string()),
                         call.contains("arguments") ? call["arguments"] : Json::object());
    }
  } else {
    for (const auto& tool : *tools) {
      Json args = Json::object();
      if (tool.name == "add_numbers") {
        args = {{"a", 5}, {"b", 3}};
      } else if (tool.name == "json_schema_echo") {
        // Echo back another tool's inputSchema exactly as the client kept it.
        for (const auto& other : *tools) {
          if (other.name != tool.name) args = {{"schema", other.input_schema}};
        }
      }
      calls.emplace_back(tool.name, std::move(args));
    }
  }
  for (const auto& [name, args] : calls) {
    auto r = (*client)->CallToolBlocking(name, args);
    if (!r.ok()) {
      std::fprintf(stderr, "tools/call %s: %s\n", name.c_str(), r.status().ToString().c_str());
      continue;  // the scenario's checks judge it
    }
    std::fprintf(stderr, "tools/call %s: %s\n", name.c_str(), agentd::DumpJson(r->content).c_str());
  }
  return 0;
}

// mcp_conformance_client: the client side of the official MCP conformance suite
// (@modelcontextprotocol/conformance, `conformance client --command ...`).
//
//   mcp_conformance_client <server-url>
//
// The suite starts a scenario server, then runs this program with the server's URL as the
// last argument and MCP_CONFORMANCE_SCENARIO / MCP_CONFORMANCE_PROTOCOL_VERSION in the
// environment. The client connects with McpClient (era detection included), lists the
// tools and calls the ones the scenarios expect, and exits 0, or 1 with the error on stderr.
#include <cstdio>
#include <cstdlib>
#include <string>

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
  auto client = McpClient::ConnectHttpBlocking(options, HttpTarget{url, {}, {}});
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
  for (const auto& tool : *tools) {
    if (tool.name != "add_numbers") continue;
    auto r = (*client)->CallToolBlocking(tool.name, Json{{"a", 5}, {"b", 3}});
    if (!r.ok()) {
      std::fprintf(stderr, "tools/call %s: %s\n", tool.name.c_str(), r.status().ToString().c_str());
      return 1;
    }
    std::fprintf(stderr, "tools/call %s: %s\n", tool.name.c_str(),
                 agentd::DumpJson(r->content).c_str());
  }
  return 0;
}

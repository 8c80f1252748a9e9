#include "memory/context.h"

namespace agentd::memory {

Json AssembleContext(const Json& conversation, const ContextOptions& options) {
  if (options.max_items == 0 || conversation.size() <= options.max_items) return conversation;
  // Keep the newest items, but never start on a tool output whose call was cut off.
  size_t start = conversation.size() - options.max_items;
  while (start < conversation.size() &&
         conversation[start].value("type", "") == "function_call_output") {
    ++start;
  }
  Json out = Json::array();
  for (size_t i = start; i < conversation.size(); ++i) out.push_back(conversation[i]);
  return out;
}

}  // namespace agentd::memory

#include "memory/context.h"

namespace agentd::memory {

const Json& AssembleContext(const Json& conversation, Json* kept, const ContextOptions& options) {
  if (options.max_items == 0 || conversation.size() <= options.max_items) return conversation;
  // Keep the newest items, but never start on a tool output whose call was cut off.
  size_t start = conversation.size() - options.max_items;
  while (start < conversation.size() &&
         conversation[start].value("type", "") == "function_call_output") {
    ++start;
  }
  *kept = Json::array();
  for (size_t i = start; i < conversation.size(); ++i) kept->push_back(conversation[i]);
  return *kept;
}

}  // namespace agentd::memory

// Context assembly: what a model call sees of a session's working memory.
//
// Today every model call carries the session's whole conversation (all prior turns' inputs,
// answers, tool calls and results). Budgeting and compaction belong here when they come, so
// that nothing else decides what the model sees.
#pragma once

#include "common/json.h"

namespace agentd::memory {

struct ContextOptions {
  size_t max_items = 0;  // 0: no limit (the whole conversation)
};

// Returns the canonical items to send to the model, oldest first: `conversation` itself when
// nothing is left out (no copy), otherwise the kept items, stored in *kept.
const Json& AssembleContext(const Json& conversation, Json* kept,
                            const ContextOptions& options = {});

}  // namespace agentd::memory

// The chat request body as JSON, for tests that look inside it.
#pragma once

#include "model/openai_chat/openai_chat.h"

namespace agentd::model::openai_chat {

inline Result<Json> BuildChatRequestBody(const ModelRequest& request) {
  ASSIGN_OR_RETURN(std::string body, EncodeChatRequestBody(request, request.items));
  return ParseJson(body, "chat request body");
}

}  // namespace agentd::model::openai_chat

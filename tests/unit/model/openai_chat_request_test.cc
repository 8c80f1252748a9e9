// The openai-chat request body encoder and its JSON string writer, against the DOM-based
// builder they replaced (kept here as the reference) and nlohmann's serialiser.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "model/openai_chat/json_text.h"
#include "model/openai_chat/openai_chat.h"
#include "chat_body.h"  // beside this file

namespace agentd::model::openai_chat {
namespace {

using std::string_view;
using namespace std::string_literals;

const std::string* StringField(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? &it->get_ref<const std::string&>() : nullptr;
}

// The request body as the provider built it before EncodeChatRequestBody: an nlohmann DOM,
// sent as DumpJson(body). The encoder must produce the same bytes and the same errors.
Result<Json> ReferenceChatRequestBody(const ModelRequest& request) {
  if (request.model.empty()) return InvalidArgument("model name is empty");
  if (!request.items.is_array()) return InvalidArgument("conversation items must be an array");
  Json messages = Json::array();
  if (!request.instructions.empty()) {
    messages.push_back({{"role", "system"}, {"content", request.instructions}});
  }
  constexpr size_t kNone = static_cast<size_t>(-1);
  size_t open_assistant = kNone;
  for (size_t i = 0; i < request.items.size(); ++i) {
    const Json& item = request.items[i];
    auto where = [i](string_view key) { return fmt::format("items[{}].{}", i, key); };
    if (!item.is_object()) return InvalidArgument(fmt::format("items[{}] must be an object", i));
    const std::string* type = StringField(item, "type");
    if (type == nullptr)
      return InvalidArgument(fmt::format("'{}' must be a string", where("type")));
    if (*type == "message") {
      const std::string* role = StringField(item, "role");
      if (role == nullptr) {
        return InvalidArgument(fmt::format("'{}' must be a string", where("role")));
      }
      auto content = item.find("content");
      if (content == item.end() || !(content->is_string() || content->is_array())) {
        return InvalidArgument(fmt::format("'{}' must be a string", where("content")));
      }
      messages.push_back({{"role", *role}, {"content", *content}});
      open_assistant = *role == "assistant" ? messages.size() - 1 : kNone;
    } else if (*type == "function_call") {
      const std::string* call_id = StringField(item, "call_id");
      const std::string* name = StringField(item, "name");
      if (call_id == nullptr) {
        return InvalidArgument(fmt::format("'{}' must be a string", where("call_id")));
      }
      if (name == nullptr)
        return InvalidArgument(fmt::format("'{}' must be a string", where("name")));
      std::string arguments = "{}";
      if (auto a = item.find("arguments"); a != item.end() && !a->is_null()) {
        arguments = a->is_string() ? a->get<std::string>() : DumpJson(*a);
      }
      if (open_assistant == kNone) {
        messages.push_back(
            {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", Json::array()}});
        open_assistant = messages.size() - 1;
      }
      messages[open_assistant]["tool_calls"].push_back(
          {{"id", *call_id},
           {"type", "function"},
           {"function", {{"name", *name}, {"arguments", std::move(arguments)}}}});
    } else if (*type == "function_call_output") {
      const std::string* call_id = StringField(item, "call_id");
      if (call_id == nullptr) {
        return InvalidArgument(fmt::format("'{}' must be a string", where("call_id")));
      }
      std::string output;
      if (auto o = item.find("output"); o != item.end() && !o->is_null()) {
        output = o->is_string() ? o->get<std::string>() : DumpJson(*o);
      }
      messages.push_back({{"role", "tool"}, {"tool_call_id", *call_id}, {"content", output}});
      open_assistant = kNone;
    }
  }
  Json body = {{"model", request.model},
               {"messages", std::move(messages)},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  if (!request.tools.empty()) {
    Json tools = Json::array();
    for (const ToolSpec& t : request.tools) {
      Json fn = {{"name", t.name}};
      if (!t.description.empty()) fn["description"] = t.description;
      fn["parameters"] = t.parameters.is_object()
                             ? t.parameters
                             : Json{{"type", "object"}, {"properties", Json::object()}};
      tools.push_back({{"type", "function"}, {"function", std::move(fn)}});
    }
    body["tools"] = std::move(tools);
  }
  return body;
}

std::string Quoted(string_view s) {
  std::string out;
  AppendJsonString(&out, s);
  return out;
}

// Expects the encoder and the reference to agree: the same bytes, or the same error.
void ExpectSameAsReference(const ModelRequest& r) {
  auto ref = ReferenceChatRequestBody(r);
  auto got = EncodeChatRequestBody(r, r.items);
  ASSERT_EQ(got.ok(), ref.ok()) << (got.ok() ? ref.status() : got.status()).ToString();
  if (!ref.ok()) {
    EXPECT_EQ(got.status().code(), ref.status().code());
    EXPECT_EQ(got.status().message(), ref.status().message());
    return;
  }
  std::string want = DumpJson(*ref);
  EXPECT_EQ(*got, want);
  auto parsed = ParseJson(*got, "encoded body");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, *ParseJson(want, "reference body"));
}

TEST(AppendJsonStringTest, EscapesLikeNlohmann) {
  const std::vector<std::string> cases = {
      "",
      "plain ascii text that is longer than eight bytes",
      "quote \" backslash \\ slash / del \x7f",
      "nul \0 and all controls"s,
      "\b\t\n\f\r\x01\x1f\x0b",
      "unicode: caf\xC3\xA9, \xE2\x82\xAC, \xF0\x9F\x98\x80, \xEF\xBF\xBF, \xF4\x8F\xBF\xBF",
      "lone continuation \x80 and \xBF\xBF",
      "overlong \xC0\xAF \xC1\xBF \xE0\x80\xAF \xF0\x80\x80\xAF",
      "surrogates \xED\xA0\x80 \xED\xBF\xBF and max+1 \xF4\x90\x80\x80",
      "invalid leads \xF5\x80 \xFF \xFE",
      "truncated \xE2\x82",
      "truncated at the end \xF0\x9F\x98",
      "\xE2\x82\xE2\x82\xAC",
      "\xC3",
      "a\"b\\c\x01\xC3\xA9\xE2\x28\xA1",
  };
  for (const std::string& s : cases) {
    std::string got = Quoted(s);
    EXPECT_EQ(got, DumpJson(Json(s)))
        << Json(s).dump(-1, ' ', true, Json::error_handler_t::replace);
    EXPECT_TRUE(ParseJson(got, "string").ok()) << got;
  }
  std::string out = "prefix";
  AppendJsonString(&out, "x");
  EXPECT_EQ(out, "prefix\"x\"");
}

TEST(AppendJsonStringTest, RandomBytesMatchNlohmannAndStayValid) {
  std::mt19937 rng(12345);
  // Weighted towards the bytes that matter: controls, quotes, UTF-8 leads and continuations.
  const std::string interesting =
      "\"\\\x00\x01\x1f\x7f\x80\xbf\xc0\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff a"s;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string s(rng() % 24, '\0');
    for (char& c : s) {
      c = rng() % 2 ? interesting[rng() % interesting.size()] : static_cast<char>(rng() & 0xFF);
    }
    std::string got = Quoted(s);
    ASSERT_EQ(got, DumpJson(Json(s)))
        << Json(s).dump(-1, ' ', true, Json::error_handler_t::replace);
    ASSERT_TRUE(ParseJson(got, "string").ok()) << got;
  }
}

ModelRequest VariedConversation() {
  ModelRequest r;
  r.model = "gpt-\xC3\xA9\"test\"";
  r.items = Json::array({
      {{"type", "message"},
       {"role", "user"},
       {"content", "Hello \"world\" \\ caf\xC3\xA9 \xF0\x9F\x98\x80"}},
      {{"type", "message"}, {"role", "user"}, {"content", "ctl \0\x01\x1f\b\f\n\r\t end"s}},
      {{"type", "message"},
       {"role", "user"},
       {"content", Json::array({{{"type", "text"}, {"text", "part one"}},
                                {{"type", "text"}, {"text", "part \"two\"\n"}}})}},
      {{"type", "message"},
       {"role", "assistant"},
       {"content", "invalid \xC3\x28 \xFF utf8 \xE2\x82"}},
      {{"type", "function_call"},
       {"call_id", "c1"},
       {"name", "weather"},
       {"arguments", "{\"city\":\"Oslo\"}"}},
      {{"type", "reasoning"}, {"summary", "does not end the assistant message"}},
      {{"type", "function_call"}, {"call_id", "c2"}, {"name", "time"}, {"arguments", "{bad"}},
      {{"type", "function_call_output"}, {"call_id", "c1"}, {"output", "rain \xE2\x98\x94"}},
      {{"type", "function_call_output"}, {"call_id", "c2"}, {"output", Json{{"hour", 12}}}},
      {{"type", "function_call"},
       {"call_id", "c3"},
       {"name", "obj"},
       {"arguments", Json{{"a", {1, 2}}}}},
      {{"type", "function_call"}, {"call_id", "c4"}, {"name", "none"}},
      {{"type", "function_call"}, {"call_id", "c5"}, {"name", "null"}, {"arguments", nullptr}},
      {{"type", "function_call_output"}, {"call_id", "c3"}},
      {{"type", "function_call_output"}, {"call_id", "c4"}, {"output", nullptr}},
      {{"type", "function_call_output"}, {"call_id", "c5"}, {"output", ""}},
      {{"type", "message"}, {"role", "assistant"}, {"content", ""}},
      {{"type", "message"}, {"role", "assistant"}, {"content", Json::array()}},
      {{"type", "function_call"}, {"call_id", "c6"}, {"name", "after_array"}, {"arguments", "{}"}},
      {{"type", "message"}, {"role", "user"}, {"content", "</script>\u2028\u2029"}, {"extra", 1}},
      {{"type", "function_call"}, {"call_id", "c7"}, {"name", "last"}, {"arguments", "{}"}},
  });
  r.tools.push_back({"weather", "Looks up the \"weather\"\n",
                     Json{{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}});
  r.tools.push_back({"time", "", Json()});
  r.tools.push_back({"odd\xFF", "x", Json::array({1})});
  return r;
}

TEST(EncodeChatRequestBodyTest, VariedConversationMatchesTheDomBuilder) {
  ModelRequest r = VariedConversation();
  ExpectSameAsReference(r);
  r.instructions = "Be terse.\n\"Really\" \x01";
  ExpectSameAsReference(r);
  r.tools.clear();
  ExpectSameAsReference(r);
  r.items = Json::array();
  ExpectSameAsReference(r);
  r.items.push_back({{"type", "function_call"}, {"call_id", "c"}, {"name", "n"}});
  ExpectSameAsReference(r);
}

TEST(EncodeChatRequestBodyTest, GroupsMessagesLikeChatCompletions) {
  ModelRequest r = VariedConversation();
  auto body = BuildChatRequestBody(r);
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  const Json& m = (*body)["messages"];
  ASSERT_EQ(m.size(), 14u) << m.dump(1);
  EXPECT_EQ(m[0]["role"], "user") << "instructions are empty: no system message";
  EXPECT_EQ(m[1]["content"], "ctl \0\x01\x1f\b\f\n\r\t end"s);
  EXPECT_EQ(m[2]["content"][1]["text"], "part \"two\"\n");
  EXPECT_EQ(m[3]["role"], "assistant");
  EXPECT_EQ(m[3]["content"], "invalid \xEF\xBF\xBD( \xEF\xBF\xBD utf8 \xEF\xBF\xBD");
  ASSERT_EQ(m[3]["tool_calls"].size(), 2u);
  EXPECT_EQ(m[3]["tool_calls"][1]["function"]["arguments"], "{bad");
  EXPECT_EQ(m[5]["content"], "{\"hour\":12}");
  EXPECT_TRUE(m[6]["content"].is_null());
  ASSERT_EQ(m[6]["tool_calls"].size(), 3u);
  EXPECT_EQ(m[6]["tool_calls"][0]["function"]["arguments"], "{\"a\":[1,2]}");
  EXPECT_EQ(m[6]["tool_calls"][1]["function"]["arguments"], "{}");
  EXPECT_EQ(m[6]["tool_calls"][2]["function"]["arguments"], "{}");
  EXPECT_EQ(m[7]["content"], "");
  EXPECT_FALSE(m[10].contains("tool_calls"));
  EXPECT_EQ(m[11]["tool_calls"][0]["id"], "c6");
  EXPECT_FALSE(m[12].contains("extra"));
  EXPECT_EQ(m[13]["role"], "assistant");
  EXPECT_TRUE(m[13]["content"].is_null());
}

TEST(EncodeChatRequestBodyTest, EncodesTheItemsArgumentNotRequestItems) {
  ModelRequest r;
  r.model = "m";
  r.items = Json::array({{{"type", "message"}, {"role", "user"}, {"content", "ignored"}}});
  Json items = Json::array({{{"type", "message"}, {"role", "user"}, {"content", "used"}}});
  auto body = EncodeChatRequestBody(r, items);
  ASSERT_TRUE(body.ok());
  EXPECT_NE(body->find("used"), std::string::npos);
  EXPECT_EQ(body->find("ignored"), std::string::npos);
  OpenAIChatProvider provider;
  auto via_provider = provider.EncodeBody(r, items);
  ASSERT_TRUE(via_provider.ok());
  EXPECT_EQ(*via_provider, *body);
}

TEST(EncodeChatRequestBodyTest, SameErrorsAsTheDomBuilder) {
  ModelRequest r;
  r.model = "m";
  for (Json items :
       {Json::array({{{"role", "user"}, {"content", "x"}}}), Json::array({{{"type", 1}}}),
        Json::array({{{"type", "message"}, {"content", "x"}}}),
        Json::array({{{"type", "message"}, {"role", "user"}}}),
        Json::array({{{"type", "message"}, {"role", "user"}, {"content", 3}}}),
        Json::array({{{"type", "function_call"}, {"name", "f"}}}),
        Json::array({{{"type", "function_call"}, {"call_id", "c"}}}),
        Json::array({{{"type", "function_call_output"}, {"output", "o"}}}),
        Json::array({{{"type", "message"}, {"role", "user"}, {"content", "ok"}}, 7}),
        Json::array({"text"}), Json::object(), Json()}) {
    r.items = items;
    ExpectSameAsReference(r);
    EXPECT_FALSE(EncodeChatRequestBody(r, r.items).ok()) << items.dump();
  }
  r.items = Json::array();
  r.model.clear();
  ExpectSameAsReference(r);
}

// The cache of one conversation: every call, as the conversation grows one item at a time
// (so every call boundary falls inside an assistant message that later items join), gives
// the bytes and errors that encoding from scratch gives.
TEST(EncodeChatRequestBodyTest, CachedEncodingMatchesEncodingFromScratch) {
  const ModelRequest full = VariedConversation();
  ModelRequest r = full;
  r.items = Json::array();
  std::unique_ptr<EncodeCache> cache;
  auto expect_same = [&](const char* when) {
    auto fresh = EncodeChatRequestBody(r, r.items);
    auto cached = EncodeChatRequestBody(r, r.items, &cache);
    ASSERT_EQ(fresh.ok(), cached.ok()) << when;
    if (fresh.ok()) {
      EXPECT_EQ(*cached, *fresh) << when << " after " << r.items.size() << " items";
    } else {
      EXPECT_EQ(cached.status().ToString(), fresh.status().ToString()) << when;
    }
  };
  expect_same("empty");
  for (const Json& item : full.items) {
    r.items.push_back(item);
    expect_same("grown");
    expect_same("called again with nothing new");
  }
  ASSERT_NE(cache, nullptr);

  // Whatever the prefix or the tail was written from changes: it is written again.
  r.instructions = "Now with instructions";
  expect_same("instructions changed");
  r.tools.pop_back();
  expect_same("tools changed");
  r.tools[0].parameters["required"] = Json::array({"city"});
  expect_same("a tool's schema changed");
  r.model = "other-model";
  expect_same("model changed");

  // The same array, refilled with other items (a reloaded conversation): not taken for the
  // one encoded before, whether it is shorter, as long, or longer.
  r.items = Json::array({{{"type", "message"}, {"role", "user"}, {"content", "new start"}}});
  expect_same("replaced, shorter");
  r.items = full.items;
  r.items[r.items.size() - 1]["name"] = "renamed";
  expect_same("replaced, one item differs");
  r.items.push_back({{"type", "message"}, {"role", "user"}, {"content", "more"}});
  expect_same("grown again");

  // A malformed item fails the call and leaves the cache usable for a good conversation.
  Json before = r.items;
  r.items.push_back({{"type", "function_call"}, {"name", "no_call_id"}});
  expect_same("malformed item");
  expect_same("malformed item, again");
  r.items = before;
  expect_same("malformed item removed");
  r.items.push_back({{"type", "function_call"}, {"call_id", "cx"}, {"name", "joins"}});
  expect_same("a tool call joining the last assistant message");
}

// Random conversations built from a small vocabulary, so that every grouping case and most
// error cases come up.
TEST(EncodeChatRequestBodyTest, RandomConversationsMatchTheDomBuilder) {
  std::mt19937 rng(7);
  const std::vector<std::string> strings = {"",     "a",        "assistant", "user", "tool",
                                            "x\"y", "\xC3\xA9", "\xFF\xFE",  "\n\t", "{\"k\":1}"};
  auto str = [&] { return strings[rng() % strings.size()]; };
  auto value = [&]() -> Json {
    switch (rng() % 6) {
      case 0:
        return nullptr;
      case 1:
        return 42;
      case 2:
        return Json::array({{{"type", "text"}, {"text", str()}}});
      case 3:
        return Json{{"k", str()}};
      default:
        return str();
    }
  };
  int ok = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    ModelRequest r;
    r.model = rng() % 20 ? "model" : "";
    if (rng() % 2) r.instructions = str();
    for (int t = static_cast<int>(rng() % 3); t > 0; --t)
      r.tools.push_back({str(), str(), value()});
    r.items = Json::array();
    for (int n = static_cast<int>(rng() % 8); n > 0; --n) {
      Json item = Json::object();
      switch (rng() % 5) {
        case 0:
          item = {
              {"type", "message"}, {"role", rng() % 2 ? "assistant" : "user"}, {"content", str()}};
          break;
        case 1:
          item = {{"type", "function_call"},
                  {"call_id", str()},
                  {"name", str()},
                  {"arguments", value()}};
          break;
        case 2:
          item = {{"type", "function_call_output"}, {"call_id", str()}, {"output", value()}};
          break;
        case 3:
          item = {{"type", "reasoning"}};
          break;
        default:
          item = {{"type", "message"}, {"role", "assistant"}, {"content", value()}};
          break;
      }
      if (rng() % 25 == 0) item.erase(item.begin());  // a missing field
      r.items.push_back(std::move(item));
    }
    ExpectSameAsReference(r);
    if (HasFatalFailure()) return;
    ok += EncodeChatRequestBody(r, r.items).ok();
  }
  EXPECT_GT(ok, 500);
}

// A long session: mostly tool output, some prose, a few hundred items.
ModelRequest LongConversation(int n_items) {
  ModelRequest r;
  r.model = "gpt-test";
  r.instructions = std::string(2000, 'i');
  const std::string filler =
      "The quick brown fox jumps over the lazy dog; \"quoted\" text\twith tabs\nand lines. ";
  auto text = [&](size_t n) {
    std::string s;
    while (s.size() < n) s += filler;
    s.resize(n);
    return s;
  };
  r.items = Json::array();
  for (int i = 0; static_cast<int>(r.items.size()) < n_items; ++i) {
    std::string id = "call_" + std::to_string(i / 6);
    switch (i % 6) {
      case 0:
        r.items.push_back({{"type", "message"}, {"role", "user"}, {"content", text(300)}});
        break;
      case 1:
        r.items.push_back({{"type", "message"}, {"role", "assistant"}, {"content", text(400)}});
        break;
      case 2:
        r.items.push_back({{"type", "function_call"},
                           {"call_id", id + "a"},
                           {"name", "read_file"},
                           {"arguments", "{\"path\":\"/src/f.cc\"}"}});
        break;
      case 3:
        r.items.push_back({{"type", "function_call"},
                           {"call_id", id + "b"},
                           {"name", "shell"},
                           {"arguments", "{\"cmd\":\"ls -la\"}"}});
        break;
      case 4:
        r.items.push_back(
            {{"type", "function_call_output"}, {"call_id", id + "a"}, {"output", text(1500)}});
        break;
      case 5:
        r.items.push_back(
            {{"type", "function_call_output"}, {"call_id", id + "b"}, {"output", text(800)}});
        break;
    }
  }
  for (int t = 0; t < 8; ++t) {
    r.tools.push_back({"tool" + std::to_string(t), "does things",
                       Json{{"type", "object"}, {"properties", {{"path", {{"type", "string"}}}}}}});
  }
  return r;
}

TEST(EncodeChatRequestBodyTest, A600ItemConversationMatchesTheReference) {
  ExpectSameAsReference(LongConversation(600));
}

}  // namespace
}  // namespace agentd::model::openai_chat

// The MCP client against the fake MCP server (tests/fakes/mcp), a real process over stdio
// and over Streamable HTTP, in every protocol era, well-behaved and hostile.
#include "tools/mcp/mcp_client.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "host_process.h"
#include "tests/support/process.h"
#include "tools/mcp/connection.h"

namespace agentd::tools::mcp {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using testing::HostFactory;
using testing::SpawnCounter;

const std::string kFake = AGENTD_FAKE_MCP_SERVER;

std::string TextOf(const CallResult& r) {
  if (!r.content.is_array() || r.content.empty()) return "";
  return r.content[0].value("text", std::string());
}

ClientOptions FastOptions() {
  ClientOptions o;
  o.server_name = "fake";
  o.connect_timeout = milliseconds(10000);
  o.discover_timeout = milliseconds(3000);
  o.request_timeout = milliseconds(10000);
  return o;
}

// A fake server over HTTP: the process and its endpoint.
struct HttpFake {
  std::unique_ptr<agentd::testing::Process> proc;
  std::string url;
};

HttpFake StartHttpFake(const std::string& era, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {kFake, "--era", era, "--transport", "http"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  std::string log = agentd::testing::TempDir("mcp-fake") + "/fake.log";
  auto p = agentd::testing::Process::Start(argv, {}, log);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  if (!p.ok()) return {};
  auto port = (*p)->WaitForLine("LISTENING (\\d+)", milliseconds(10000));
  EXPECT_TRUE(port.ok()) << port.status().ToString();
  return {std::move(p).value(), "http://127.0.0.1:" + (port.ok() ? *port : "0") + "/mcp"};
}

struct Param {
  std::string era;  // what the fake speaks
  bool http;
};

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  std::string e = info.param.era;
  for (char& c : e) {
    if (c == '-') c = '_';
  }
  return (info.param.http ? "Http_" : "Stdio_") + e;
}

// The same behaviour in every era and on both transports.
class McpEraTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override { Connect(FastOptions()); }

  void Connect(ClientOptions options, std::vector<std::string> extra = {}) {
    client_.reset();
    options.on_tools_changed = [this] {
      std::lock_guard<std::mutex> lock(mu_);
      ++tools_changed_;
      cv_.notify_all();
    };
    if (GetParam().http) {
      if (!fake_.proc) fake_ = StartHttpFake(GetParam().era, extra);
      auto c =
          McpClient::ConnectHttpBlocking(options, HttpTarget{fake_.url, {}, milliseconds(5000), {}, {}});
      ASSERT_TRUE(c.ok()) << c.status().ToString();
      client_ = std::move(c).value();
    } else {
      std::vector<std::string> argv = {kFake, "--era", GetParam().era};
      argv.insert(argv.end(), extra.begin(), extra.end());
      auto c = McpClient::ConnectStdioBlocking(options, HostFactory(argv, spawns_));
      ASSERT_TRUE(c.ok()) << c.status().ToString();
      client_ = std::move(c).value();
    }
  }

  bool Stateless() const { return GetParam().era == kStatelessVersion || GetParam().era == "dual"; }

  Result<CallResult> Call(const std::string& tool, Json args = Json::object(),
                          CallOptions options = {}) {
    return client_->CallToolBlocking(tool, args, options);
  }

  HttpFake fake_;
  std::shared_ptr<SpawnCounter> spawns_ = std::make_shared<SpawnCounter>();
  std::unique_ptr<McpClient> client_;
  std::mutex mu_;
  std::condition_variable cv_;
  int tools_changed_ = 0;
};

TEST_P(McpEraTest, DetectsTheServersEra) {
  if (Stateless()) {
    EXPECT_EQ(client_->era(), Era::kStateless);
    EXPECT_EQ(client_->protocol_version(), kStatelessVersion);
  } else {
    EXPECT_EQ(client_->era(), Era::kHandshake);
    EXPECT_EQ(client_->protocol_version(), GetParam().era);
  }
  EXPECT_EQ(client_->server_info().value("name", std::string()), "fake_mcp_server");
  EXPECT_EQ(client_->instructions(), "a fake server for tests");
  EXPECT_TRUE(client_->server_capabilities()["tools"]["listChanged"].get<bool>());
}

TEST_P(McpEraTest, ListsToolsAcrossPages) {
  auto tools = client_->ListToolsBlocking();
  ASSERT_TRUE(tools.ok()) << tools.status().ToString();
  std::set<std::string> names;
  for (const auto& t : *tools) names.insert(t.name);
  // Five pages of at most four (19 tools); on stateless HTTP without bad_header, whose x-mcp-header
  // annotation is invalid.
  bool drops_bad_header = GetParam().http && Stateless();
  EXPECT_EQ(tools->size(), drops_bad_header ? 19u : 20u);
  EXPECT_EQ(names.count("bad_header"), drops_bad_header ? 0u : 1u);
  EXPECT_TRUE(names.count("echo") && names.count("bad.name") && names.count("forget_session"));
  for (const auto& t : *tools) {
    if (t.name == "add") {
      EXPECT_EQ(t.output_schema["required"], Json::array({"sum"}));
      EXPECT_EQ(t.input_schema["properties"]["a"]["type"], "number");
    }
  }
}

TEST_P(McpEraTest, CallsToolsWithContentStructuredContentAndIsError) {
  auto echo = Call("echo", {{"text", "hello"}});
  ASSERT_TRUE(echo.ok()) << echo.status().ToString();
  EXPECT_EQ(TextOf(*echo), "hello");
  EXPECT_FALSE(echo->is_error);
  EXPECT_TRUE(echo->structured_content.is_null());

  auto add = Call("add", {{"a", 2}, {"b", 3.5}});
  ASSERT_TRUE(add.ok()) << add.status().ToString();
  EXPECT_EQ(add->structured_content["sum"].get<double>(), 5.5);
  EXPECT_EQ(add->content[0]["type"], "text");

  auto fail = Call("fail");
  ASSERT_TRUE(fail.ok()) << fail.status().ToString();
  EXPECT_TRUE(fail->is_error);
  EXPECT_EQ(TextOf(*fail), "it failed");

  auto unknown = Call("no_such_tool");
  EXPECT_EQ(unknown.status().code(), StatusCode::kInvalidArgument) << unknown.status().ToString();
  EXPECT_NE(unknown.status().message().find("Unknown tool"), std::string::npos);
}

TEST_P(McpEraTest, DeliversProgressBeforeTheResult) {
  std::vector<ProgressUpdate> updates;
  CallOptions o;
  o.on_progress = [&](const ProgressUpdate& u) { updates.push_back(u); };
  auto r = Call("progress", {{"steps", 3}}, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(TextOf(*r), "done");
  ASSERT_EQ(updates.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(updates[i].progress, i + 1);
    EXPECT_EQ(updates[i].total, 3);
    EXPECT_EQ(updates[i].message, "step " + std::to_string(i + 1));
  }
}

TEST_P(McpEraTest, CancelsASlowCallWhenTheCallerAborts) {
  auto start = Clock::now();
  CallOptions o;
  o.should_abort = [&] { return Clock::now() - start > milliseconds(200); };
  auto r = Call("slow", {{"ms", 20000}}, o);
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled) << r.status().ToString();
  EXPECT_LT(Clock::now() - start, milliseconds(5000));
  // The server learnt of it: notifications/cancelled (stdio, handshake HTTP) or the closed
  // stream (stateless HTTP).
  std::string count;
  for (int i = 0; i < 100 && count != "1"; ++i) {
    auto c = Call("cancelled_count");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    count = TextOf(*c);
    if (count != "1") std::this_thread::sleep_for(milliseconds(50));
  }
  EXPECT_EQ(count, "1");
}

TEST_P(McpEraTest, TimesOutAServerThatNeverAnswersAndStaysUsable) {
  CallOptions o;
  o.timeout = milliseconds(300);
  auto start = Clock::now();
  auto r = Call("never", Json::object(), o);
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_NE(r.status().message().find("did not answer tools/call in time"), std::string::npos);
  EXPECT_LT(Clock::now() - start, milliseconds(3000));
  auto echo = Call("echo", {{"text", "still here"}});
  ASSERT_TRUE(echo.ok()) << echo.status().ToString();
  EXPECT_EQ(TextOf(*echo), "still here");
}

TEST_P(McpEraTest, RunsConcurrentCallsFromManyThreads) {
  constexpr int kThreads = 8;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      for (int j = 0; j < 5; ++j) {
        std::string text = "t" + std::to_string(i) + "-" + std::to_string(j);
        // Slow calls interleave with fast ones: responses come back out of order.
        if (j % 2 == 0) {
          auto s = Call("slow", {{"ms", 50}});
          if (!s.ok() || TextOf(*s) != "slept") return;
        }
        auto r = Call("echo", {{"text", text}});
        if (r.ok() && TextOf(*r) == text) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * 5);
}

TEST_P(McpEraTest, FetchesToolsAgainAfterListChanged) {
  auto before = client_->ListToolsBlocking();
  ASSERT_TRUE(before.ok()) << before.status().ToString();

  auto r = Call("change_tools");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  bool announced = !(GetParam().http && Stateless());
  if (announced) {
    // Stdio: on the connection (handshake) or the subscriptions/listen stream (stateless);
    // handshake HTTP: on the call's event stream.
    std::unique_lock<std::mutex> lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, std::chrono::seconds(5), [&] { return tools_changed_ > 0; }));
  }
  // Stateless HTTP has no listen stream here: the caller refreshes (or ttlMs runs out).
  auto after = client_->ListToolsBlocking(/*refresh=*/!announced);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->size(), before->size() + 1);
  EXPECT_EQ(after->back().name, "extra");
}

INSTANTIATE_TEST_SUITE_P(AllEras, McpEraTest,
                         ::testing::Values(Param{"2025-06-18", false}, Param{"2025-11-25", false},
                                           Param{"2026-07-28", false}, Param{"dual", false},
                                           Param{"2025-06-18", true}, Param{"2025-11-25", true},
                                           Param{"2026-07-28", true}, Param{"dual", true}),
                         ParamName);

// --- era detection corner cases -------------------------------------------------------------

TEST(McpDetectionTest, SilentLegacyServerIsProbedThenRestartedForInitialize) {
  auto spawns = std::make_shared<SpawnCounter>();
  ClientOptions o = FastOptions();
  o.discover_timeout = milliseconds(400);
  auto start = Clock::now();
  auto c = McpClient::ConnectStdioBlocking(
      o, HostFactory({kFake, "--era", "2025-11-25", "--silent-discover"}, spawns));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_GE(Clock::now() - start, milliseconds(400));
  EXPECT_EQ((*c)->era(), Era::kHandshake);
  EXPECT_EQ(spawns->spawns, 2);  // the probed process was replaced
  auto r = (*c)->CallToolBlocking("echo", {{"text", "x"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // The era is remembered: a restart goes straight to initialize.
  start = Clock::now();
  ASSERT_TRUE((*c)->ReconnectBlocking().ok());
  EXPECT_LT(Clock::now() - start, milliseconds(400));
  EXPECT_EQ(spawns->spawns, 3);
}

TEST(McpDetectionTest, RememberedEraIsProbedAgainWhenInitializeFails) {
  // The first process speaks 2025-11-25, the restarted one only 2026-07-28 (an upgrade).
  auto spawns = std::make_shared<SpawnCounter>();
  auto legacy = HostFactory({kFake, "--era", "2025-11-25"}, spawns);
  auto modern = HostFactory({kFake, "--era", "2026-07-28"}, spawns);
  auto upgraded = std::make_shared<std::atomic<bool>>(false);
  auto c = McpClient::ConnectStdioBlocking(
      FastOptions(), [=]() { return upgraded->load() ? modern() : legacy(); });
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->era(), Era::kHandshake);
  upgraded->store(true);
  ASSERT_TRUE((*c)->ReconnectBlocking().ok());
  EXPECT_EQ((*c)->era(), Era::kStateless);
}

TEST(McpDetectionTest, LegacyServerAnsweringTheProbeWithAnErrorKeepsItsProcess) {
  auto spawns = std::make_shared<SpawnCounter>();
  auto c = McpClient::ConnectStdioBlocking(FastOptions(),
                                           HostFactory({kFake, "--era", "2025-06-18"}, spawns));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->protocol_version(), "2025-06-18");
  EXPECT_EQ(spawns->spawns, 1);
}

TEST(McpShutdownTest, ClosingAStdioClientLetsTheServerExitOnItsOwn) {
  std::string marker = agentd::testing::TempDir("mcp-exit") + "/exited";
  {
    auto c = McpClient::ConnectStdioBlocking(
        FastOptions(), HostFactory({kFake, "--era", "dual", "--exit-file", marker}));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    ASSERT_TRUE((*c)->CallToolBlocking("echo", {{"text", "x"}}).ok());
  }
  // The server read end-of-file and finished (a kill would not have let it write this).
  std::ifstream in(marker);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "stdin closed\n");
}

// Taking a server over (after its sandbox was hibernated and resumed) continues the saved
// session without a handshake; the server must really be in that session.
TEST(McpResumeTest, ContinuesASavedSessionOnlyWhereTheServerHasIt) {
  auto a = McpClient::ConnectStdioBlocking(FastOptions(), HostFactory({kFake, "--era", "dual"}));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE((*a)->CallToolBlocking("echo", {{"text", "x"}}).ok());
  auto saved = (*a)->SaveSession();
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  EXPECT_EQ((*saved)["era"], "stateless");
  EXPECT_EQ((*saved)["protocol_version"], kStatelessVersion);
  EXPECT_GE((*saved)["next_request_id"].get<int64_t>(), 3);  // discover, list, call were sent

  auto factory = HostFactory({kFake, "--era", "dual"});
  // A stateless session needs no handshake, so any server of that era carries it on.
  (*saved)["next_request_id"] = 1000;  // as if the session had sent 999 requests
  auto b = McpClient::ResumeStdioBlocking(FastOptions(), factory, std::move(factory()).value(), *saved);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ((*b)->era(), Era::kStateless);
  auto r = (*b)->CallToolBlocking("counter", Json::object());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->content[0]["text"], "1");
  // Ids go on from where the saved session stopped (tools/list pages, then the call).
  EXPECT_GT((*(*b)->SaveSession())["next_request_id"].get<int64_t>(), 1001);

  // A handshake-era session on a server that never saw its initialize: refused, not
  // silently restarted.
  Json handshake = *saved;
  handshake["era"] = "handshake";
  handshake["protocol_version"] = kVersion20251125;
  auto c = McpClient::ResumeStdioBlocking(FastOptions(), factory, std::move(factory()).value(), handshake);
  EXPECT_FALSE(c.ok());
  // Saved sessions that do not fit the client are refused before anything is sent.
  for (auto [key, value] : std::vector<std::pair<std::string, Json>>{
           {"era", "telepathy"}, {"protocol_version", "1999-01-01"},
           {"protocol_version", kVersion20251125}, {"next_request_id", 0}}) {
    Json bad = *saved;
    bad[key] = value;
    auto d = McpClient::ResumeStdioBlocking(FastOptions(), factory, std::move(factory()).value(), bad);
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << key << " " << value.dump();
  }
  auto http = StartHttpFake("2026-07-28");
  auto h = McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{http.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ((*h)->SaveSession().status().code(), StatusCode::kFailedPrecondition);
}

TEST(McpDetectionTest, HandshakeOnlyClientUsesInitializeWithADualServer) {
  ClientOptions o = FastOptions();
  o.protocol_versions = {kVersion20250618};
  auto c = McpClient::ConnectStdioBlocking(o, HostFactory({kFake, "--era", "dual"}));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->era(), Era::kHandshake);
  EXPECT_EQ((*c)->protocol_version(), "2025-06-18");
}

TEST(McpDetectionTest, StatelessOnlyClientFailsClearlyAgainstALegacyServer) {
  ClientOptions o = FastOptions();
  o.protocol_versions = {kStatelessVersion};
  auto c = McpClient::ConnectStdioBlocking(o, HostFactory({kFake, "--era", "2025-11-25"}));
  EXPECT_EQ(c.status().code(), StatusCode::kFailedPrecondition) << c.status().ToString();
  EXPECT_NE(c.status().message().find("does not speak protocol version 2026-07-28"),
            std::string::npos);
}

TEST(McpDetectionTest, HandshakeOnlyClientFailsClearlyAgainstAStatelessServer) {
  ClientOptions o = FastOptions();
  o.protocol_versions = {kVersion20251125};
  auto c = McpClient::ConnectStdioBlocking(o, HostFactory({kFake, "--era", "2026-07-28"}));
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("2026-07-28 only"), std::string::npos)
      << c.status().ToString();
}

TEST(McpDetectionTest, HttpLegacyServerRejectingTheProbeIsUsedWithInitialize) {
  HttpFake fake = StartHttpFake("2025-11-25");
  auto c =
      McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->era(), Era::kHandshake);
}

// --- stateless-era specifics ----------------------------------------------------------------

TEST(McpStatelessTest, AnswersInputRequiredByDecliningElicitation) {
  for (bool http : {false, true}) {
    HttpFake fake;
    Result<std::unique_ptr<McpClient>> c = InvalidArgument("unset");
    if (http) {
      fake = StartHttpFake("2026-07-28");
      c = McpClient::ConnectHttpBlocking(FastOptions(),
                                         HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
    } else {
      c = McpClient::ConnectStdioBlocking(FastOptions(),
                                          HostFactory({kFake, "--era", "2026-07-28"}));
    }
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    auto r = (*c)->CallToolBlocking("ask_input", Json::object());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(TextOf(*r), "input: decline") << (http ? "http" : "stdio");
  }
}

TEST(McpStatelessTest, MirrorsXMcpHeaderArgumentsIntoHttpHeaders) {
  HttpFake fake = StartHttpFake("2026-07-28");
  auto c =
      McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // Not listed before: the client lists the tools to find the annotations.
  auto r = (*c)->CallToolBlocking("regional", {{"region", "Z\xc3\xbcrich "}, {"count", 3}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(TextOf(*r), "region=Z\xc3\xbcrich  count=3");
  auto plain = (*c)->CallToolBlocking("regional", {{"region", "us-west1"}});
  ASSERT_TRUE(plain.ok()) << plain.status().ToString();
  EXPECT_EQ(TextOf(*plain), "region=us-west1 count=-");
  // The server renames the header; the cached annotation (ttlMs 60 s) is stale, the server
  // answers HeaderMismatch, the client lists again and retries.
  ASSERT_TRUE((*c)->CallToolBlocking("rename_header", Json::object()).ok());
  auto renamed = (*c)->CallToolBlocking("regional", {{"region", "eu-north1"}});
  ASSERT_TRUE(renamed.ok()) << renamed.status().ToString();
  EXPECT_EQ(TextOf(*renamed), "region=eu-north1 count=-");
}

TEST(McpStatelessTest, ChecksXMcpHeaderAnnotations) {
  using internal::CollectHeaderParams;
  auto ok = CollectHeaderParams(
      Json::parse(R"({"type":"object","properties":{"a":{"type":"object","properties":{
        "b":{"type":"string","x-mcp-header":"B"}}},"c":{"type":"boolean","x-mcp-header":"C"}}})"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].path, (std::vector<std::string>{"a", "b"}));
  auto headers = internal::HeaderParamHeaders(*ok, {{"a", {{"b", "x"}}}, {"c", false}});
  EXPECT_EQ(headers, (std::vector<std::pair<std::string, std::string>>{{"Mcp-Param-B", "x"},
                                                                       {"Mcp-Param-C", "false"}}));
  for (
      const char* bad :
      {R"({"properties":{"n":{"type":"number","x-mcp-header":"N"}}})",
       R"({"properties":{"l":{"type":"array","items":{"type":"string","x-mcp-header":"L"}}}})",
       R"({"properties":{"s":{"type":"string","x-mcp-header":"A B"}}})",
       R"({"properties":{"s":{"type":"string","x-mcp-header":""}}})",
       R"({"properties":{"s":{"type":"string","x-mcp-header":"X"},"t":{"type":"string","x-mcp-header":"x"}}})",
       R"({"oneOf":[{"properties":{"s":{"type":"string","x-mcp-header":"S"}}}]})"}) {
    EXPECT_FALSE(CollectHeaderParams(Json::parse(bad)).ok()) << bad;
  }
  EXPECT_EQ(internal::HeaderValue("us-west1"), "us-west1");
  EXPECT_EQ(internal::HeaderValue("Hello, \xe4\xb8\x96\xe7\x95\x8c"),
            "=?base64?SGVsbG8sIOS4lueVjA==?=");
  EXPECT_EQ(internal::HeaderValue(" padded "), "=?base64?IHBhZGRlZCA=?=");
  EXPECT_EQ(internal::HeaderValue("=?base64?literal?="), "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=");
}

// --- server requests ------------------------------------------------------------------------

TEST(McpServerRequestTest, PingIsAnsweredAndUnknownMethodsGetMethodNotFound) {
  for (bool http : {false, true}) {
    HttpFake fake;
    Result<std::unique_ptr<McpClient>> c = InvalidArgument("unset");
    if (http) {
      fake = StartHttpFake("2025-11-25");
      c = McpClient::ConnectHttpBlocking(FastOptions(),
                                         HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
    } else {
      c = McpClient::ConnectStdioBlocking(FastOptions(),
                                          HostFactory({kFake, "--era", "2025-11-25"}));
    }
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    auto r = (*c)->CallToolBlocking("ping_client", Json::object());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE(r->is_error) << TextOf(*r);
    EXPECT_EQ(r->structured_content["ping"], Json::object());
    EXPECT_EQ(r->structured_content["bogus"], -32601);
  }
}

// --- hostile stdio servers ------------------------------------------------------------------

class McpStdioFaultTest : public ::testing::Test {
 protected:
  std::unique_ptr<McpClient> Connect(ClientOptions o = FastOptions(),
                                     std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {kFake, "--era", "2025-11-25"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto c = McpClient::ConnectStdioBlocking(o, HostFactory(argv, spawns_));
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }
  std::shared_ptr<SpawnCounter> spawns_ = std::make_shared<SpawnCounter>();
};

TEST_F(McpStdioFaultTest, GarbageLineFailsTheCallAndTheNextCallReconnects) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  auto r = c->CallToolBlocking("garbage", Json::object());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal) << r.status().ToString();
  EXPECT_NE(r.status().message().find("not a JSON-RPC message: 'this is not json {'"),
            std::string::npos)
      << r.status().ToString();
  auto again = c->CallToolBlocking("echo", {{"text", "back"}});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(TextOf(*again), "back");
  EXPECT_EQ(spawns_->spawns, 2);
}

TEST_F(McpStdioFaultTest, GarbageBannerFailsTheConnect) {
  auto c = McpClient::ConnectStdioBlocking(
      FastOptions(), HostFactory({kFake, "--era", "2025-11-25", "--garbage-banner"}));
  EXPECT_EQ(c.status().code(), StatusCode::kInternal) << c.status().ToString();
  EXPECT_NE(c.status().message().find("fake_mcp_server starting up"), std::string::npos);
}

TEST_F(McpStdioFaultTest, OversizedMessageIsResourceExhausted) {
  ClientOptions o = FastOptions();
  o.max_message_bytes = 1 << 20;
  auto c = Connect(o);
  ASSERT_NE(c, nullptr);
  auto small = c->CallToolBlocking("huge", {{"bytes", 1000}});
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  auto r = c->CallToolBlocking("huge", {{"bytes", 3 << 20}});
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
  EXPECT_NE(r.status().message().find("larger than 1048576 bytes"), std::string::npos);
  auto again = c->CallToolBlocking("echo", {{"text", "ok"}});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
}

TEST_F(McpStdioFaultTest, ServerExitingMidCallIsUnavailableWithItsStderr) {
  ClientOptions o = FastOptions();
  o.auto_reconnect = false;
  auto c = Connect(o);
  ASSERT_NE(c, nullptr);
  auto r = c->CallToolBlocking("exit", Json::object());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  EXPECT_NE(r.status().message().find("exited with code 3"), std::string::npos)
      << r.status().ToString();
  EXPECT_NE(r.status().message().find("exiting in the middle of a call"), std::string::npos)
      << r.status().ToString();
  // Without auto_reconnect the owner decides: calls fail until ReconnectBlocking().
  auto dead = c->CallToolBlocking("echo", {{"text", "x"}});
  EXPECT_EQ(dead.status().code(), StatusCode::kUnavailable);
  ASSERT_TRUE(c->ReconnectBlocking().ok());
  auto again = c->CallToolBlocking("echo", {{"text", "revived"}});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(TextOf(*again), "revived");
  EXPECT_EQ(spawns_->spawns, 2);
}

TEST_F(McpStdioFaultTest, CrashedServerIsRestartedOnTheNextCall) {
  auto c = Connect();
  ASSERT_NE(c, nullptr);
  EXPECT_FALSE(c->CallToolBlocking("exit", Json::object()).ok());
  auto again = c->CallToolBlocking("echo", {{"text", "auto"}});
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(spawns_->spawns, 2);
}

TEST_F(McpStdioFaultTest, ProcessThatCannotStartIsReported) {
  auto c = McpClient::ConnectStdioBlocking(FastOptions(),
                                           HostFactory({"/nonexistent/mcp-server-binary"}));
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
  EXPECT_NE(c.status().message().find("exec /nonexistent/mcp-server-binary"), std::string::npos)
      << c.status().ToString();
}

TEST_F(McpStdioFaultTest, FactoryFailureIsReported) {
  auto c = McpClient::ConnectStdioBlocking(FastOptions(),
                                           []() -> Result<std::unique_ptr<sandbox::Process>> {
                                             return ResourceExhausted("sandbox pids limit");
                                           });
  EXPECT_EQ(c.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("sandbox pids limit"), std::string::npos);
}

// --- hostile HTTP servers -------------------------------------------------------------------

TEST(McpHttpFaultTest, NonJsonBodyIsInternal) {
  HttpFake fake = StartHttpFake("2025-11-25");
  auto c =
      McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->CallToolBlocking("garbage", Json::object());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal) << r.status().ToString();
}

TEST(McpHttpFaultTest, OversizedResponseIsResourceExhausted) {
  HttpFake fake = StartHttpFake("2026-07-28");
  ClientOptions o = FastOptions();
  o.max_message_bytes = 1 << 20;
  auto c = McpClient::ConnectHttpBlocking(o, HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->CallToolBlocking("huge", {{"bytes", 3 << 20}});
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
}

TEST(McpHttpFaultTest, ExpiredSessionIsInitializedAgain) {
  HttpFake fake = StartHttpFake("2025-11-25");
  auto c =
      McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_TRUE((*c)->CallToolBlocking("forget_session", Json::object()).ok());
  auto r = (*c)->CallToolBlocking("echo", {{"text", "new session"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(TextOf(*r), "new session");
}

TEST(McpHttpFaultTest, ServerExitingMidCallFailsClearly) {
  HttpFake fake = StartHttpFake("2025-11-25");
  auto c =
      McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto r = (*c)->CallToolBlocking("exit", Json::object());
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("MCP server 'fake'"), std::string::npos)
      << r.status().ToString();
  auto after = (*c)->CallToolBlocking("echo", {{"text", "x"}});
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable) << after.status().ToString();
}

TEST(McpHttpFaultTest, ResumesAStreamClosedBeforeItsResponse) {
  HttpFake fake = StartHttpFake("2025-11-25");
  auto c =
      McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{fake.url, {}, milliseconds(5000), {}, {}});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto start = Clock::now();
  auto r = (*c)->CallToolBlocking("drop_stream", Json::object());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(TextOf(*r), "resumed");
  EXPECT_GE(Clock::now() - start, milliseconds(200));  // the server's retry
}

// Fresh headers (a token minted per request) replace the target's of the same name on
// every request; a call's own headers replace both, for that call alone.
TEST(McpHttpFaultTest, FreshAndPerCallHeadersReplaceTheTargets) {
  for (const char* era : {"2025-11-25", "2026-07-28"}) {
    HttpFake fake = StartHttpFake(era, {"--require-header", "Authorization: Bearer fresh"});
    HttpTarget target{fake.url, {{"Authorization", "Bearer stale"}}, milliseconds(5000), {}, {}};
    int minted = 0;
    target.fresh_headers = [&minted]() -> std::vector<std::pair<std::string, std::string>> {
      ++minted;
      return {{"authorization", "Bearer fresh"}};
    };
    auto c = McpClient::ConnectHttpBlocking(FastOptions(), target);
    ASSERT_TRUE(c.ok()) << era << ": " << c.status().ToString();
    EXPECT_GE(minted, 1);
    const int before = minted;
    auto r = (*c)->CallToolBlocking("echo", {{"text", "a"}});
    ASSERT_TRUE(r.ok()) << era << ": " << r.status().ToString();
    EXPECT_GT(minted, before);  // asked again for this request
    CallOptions wrong;
    wrong.headers = {{"AUTHORIZATION", "Bearer for-another-call"}};
    auto refused = (*c)->CallToolBlocking("echo", {{"text", "b"}}, wrong);
    EXPECT_FALSE(refused.ok()) << era;
    CallOptions right;
    right.headers = {{"Authorization", "Bearer fresh"}, {"X-Extra", "1"}};
    EXPECT_TRUE((*c)->CallToolBlocking("echo", {{"text", "c"}}, right).ok()) << era;
  }
}

TEST(McpHttpFaultTest, CustomHeadersGoWithEveryRequest) {
  for (const char* era : {"2025-11-25", "2026-07-28"}) {
    HttpFake fake = StartHttpFake(era, {"--require-header", "Authorization: Bearer s3cret"});
    HttpTarget target{fake.url, {{"Authorization", "Bearer s3cret"}}, milliseconds(5000), {}, {}};
    auto c = McpClient::ConnectHttpBlocking(FastOptions(), target);
    ASSERT_TRUE(c.ok()) << era << ": " << c.status().ToString();
    int updates = 0;
    CallOptions o;
    o.on_progress = [&](const ProgressUpdate&) { ++updates; };
    auto r = (*c)->CallToolBlocking("progress", {{"steps", 2}}, o);
    ASSERT_TRUE(r.ok()) << era << ": " << r.status().ToString();
    EXPECT_EQ(updates, 2);
    // Notifications (cancellation on the handshake era) carry them too.
    CallOptions abort;
    auto start = Clock::now();
    abort.should_abort = [&] { return Clock::now() - start > milliseconds(100); };
    EXPECT_EQ((*c)->CallToolBlocking("slow", {{"ms", 5000}}, abort).status().code(),
              StatusCode::kCancelled);

    auto denied = McpClient::ConnectHttpBlocking(FastOptions(), HttpTarget{fake.url, {}, {}, {}, {}});
    EXPECT_EQ(denied.status().code(), StatusCode::kUnauthenticated) << denied.status().ToString();
    EXPECT_NE(denied.status().message().find("HTTP 401"), std::string::npos);
  }
}

TEST(McpHttpFaultTest, NothingListeningIsUnavailable) {
  auto c = McpClient::ConnectHttpBlocking(
      FastOptions(), HttpTarget{"http://127.0.0.1:1/mcp", {}, milliseconds(2000), {}, {}});
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
}

// --- tool names -----------------------------------------------------------------------------

TEST(McpToolNameTest, NamespacesAndSplits) {
  auto n = NamespacedToolName("github", "create_issue");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, "github__create_issue");
  std::string server, tool;
  ASSERT_TRUE(SplitNamespacedToolName(*n, &server, &tool));
  EXPECT_EQ(server, "github");
  EXPECT_EQ(tool, "create_issue");
  ASSERT_TRUE(SplitNamespacedToolName("a__b__c", &server, &tool));
  EXPECT_EQ(tool, "b__c");
  EXPECT_FALSE(SplitNamespacedToolName("plain", &server, &tool));
  EXPECT_FALSE(SplitNamespacedToolName("__x", &server, &tool));
  EXPECT_TRUE(NamespacedToolName("everything", "get-sum").ok());
}

TEST(McpToolNameTest, RejectsNamesThatAreNoFunctionNames) {
  EXPECT_EQ(NamespacedToolName("fake", "bad.name").status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(NamespacedToolName("fake", "bad.name").status().message().find("[a-zA-Z0-9_-]"),
            std::string::npos);
  EXPECT_FALSE(NamespacedToolName("fake", "").ok());
  EXPECT_FALSE(NamespacedToolName("", "x").ok());
  EXPECT_FALSE(NamespacedToolName("my__server", "x").ok());
  EXPECT_FALSE(NamespacedToolName("a b", "x").ok());
  EXPECT_TRUE(NamespacedToolName("s", std::string(61, 'x')).ok());   // 64 in all
  EXPECT_FALSE(NamespacedToolName("s", std::string(62, 'x')).ok());  // 65
  EXPECT_TRUE(IsValidFunctionName("a-b_C9"));
  EXPECT_FALSE(IsValidFunctionName("caf\xc3\xa9"));
}

}  // namespace
}  // namespace agentd::tools::mcp

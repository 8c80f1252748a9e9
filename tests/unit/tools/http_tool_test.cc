// The http tool invoker against the fake tool server, run in-process on a loopback port.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "common/http_client.h"
#include "fakes/tools/fake_tools.h"
#include "tools/tools.h"

namespace agentd::tools {
namespace {

using Kind = ToolOutcome::Kind;
using Clock = std::chrono::steady_clock;

class HttpToolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = fakes::StartFakeTools({});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = std::move(s).value();
  }

  HttpToolSpec Spec(const std::string& path, int64_t timeout_ms = 5000) const {
    return {"t", server_->Url(path), timeout_ms, true, {}};
  }

  ToolOutcome Call(const std::string& path, std::string_view args = "{}",
                   std::string_view key = "key-1", int64_t timeout_ms = 5000) {
    return CallHttpToolBlocking(Spec(path, timeout_ms), args, key, nullptr);
  }

  Json Stats() const { return server_->Stats(); }

  std::unique_ptr<fakes::FakeToolServer> server_;
};

TEST_F(HttpToolTest, Ok2xxReturnsTheBody) {
  ToolOutcome o = Call("/echo", R"({"x":[1,2]})");
  EXPECT_EQ(o.kind, Kind::kOk);
  EXPECT_EQ(o.http_status, 200);
  EXPECT_EQ(o.output, R"({"x":[1,2]})");
  EXPECT_FALSE(o.retry_after.has_value());
}

TEST_F(HttpToolTest, EmptySuccessBodyBecomesEmptyObject) {
  ToolOutcome o = Call("/status/204");
  EXPECT_EQ(o.kind, Kind::kOk);
  EXPECT_EQ(o.http_status, 204);
  EXPECT_EQ(o.output, "{}");
}

TEST_F(HttpToolTest, SendsTheDocumentedHeaders) {
  ToolOutcome o = Call("/headers", "{}", "abc-123");
  ASSERT_EQ(o.kind, Kind::kOk);
  Json h = Json::parse(o.output);
  EXPECT_EQ(h["content-type"], "application/json");
  EXPECT_EQ(h["accept"], "application/json");
  EXPECT_EQ(h["idempotency-key"], "abc-123");
  EXPECT_EQ(h["user-agent"], "agentd/0.1");
  EXPECT_FALSE(h.contains("expect"));
}

TEST_F(HttpToolTest, ClientErrorIsAToolErrorAndNotRetried) {
  ToolOutcome o = Call("/status/404");
  EXPECT_EQ(o.kind, Kind::kToolError);
  EXPECT_EQ(o.http_status, 404);
  EXPECT_EQ(o.output, R"(tool 't' answered HTTP 404: {"status":404})");
  EXPECT_EQ(Stats()["total_requests"], 1);  // one attempt: the engine owns retries
}

TEST_F(HttpToolTest, ErrorBodyIsCutTo1000Bytes) {
  ASSERT_TRUE(
      server_->AddFaults(Json::array({{{"status", 400}, {"body", std::string(5000, 'e')}}})).ok());
  ToolOutcome o = Call("/echo");
  EXPECT_EQ(o.kind, Kind::kToolError);
  EXPECT_EQ(o.output, "tool 't' answered HTTP 400: " + std::string(1000, 'e'));
}

TEST_F(HttpToolTest, ServerErrorIsRetryableWithRetryAfter) {
  ToolOutcome o = Call("/status/503?retry_after=2");
  EXPECT_EQ(o.kind, Kind::kRetryable);
  EXPECT_EQ(o.http_status, 503);
  ASSERT_TRUE(o.retry_after.has_value());
  EXPECT_EQ(*o.retry_after, std::chrono::milliseconds(2000));
  EXPECT_NE(o.output.find("answered HTTP 503"), std::string::npos);

  ToolOutcome plain = Call("/status/500");
  EXPECT_EQ(plain.kind, Kind::kRetryable);
  EXPECT_FALSE(plain.retry_after.has_value());
}

TEST_F(HttpToolTest, TooManyRequestsIsRetryable) {
  ToolOutcome o = Call("/status/429?retry_after=1");
  EXPECT_EQ(o.kind, Kind::kRetryable);
  EXPECT_EQ(o.http_status, 429);
  EXPECT_EQ(o.retry_after, std::chrono::milliseconds(1000));
}

TEST_F(HttpToolTest, FaultedEffectIsNotAppliedAndRetryAppliesOnce) {
  ASSERT_TRUE(server_->AddFaults(Json::parse(R"([{"status":503,"retry_after":"1"}])")).ok());
  ToolOutcome first = Call("/effect", R"({"n":1})", "k-retry");
  EXPECT_EQ(first.kind, Kind::kRetryable);
  EXPECT_EQ(first.retry_after, std::chrono::milliseconds(1000));
  EXPECT_EQ(Stats()["effects_applied"], 0);

  ToolOutcome second = Call("/effect", R"({"n":1})", "k-retry");
  ASSERT_EQ(second.kind, Kind::kOk);
  Json body = Json::parse(second.output);
  EXPECT_EQ(body["applied"], true);
  EXPECT_EQ(body["args"], Json::parse(R"({"n":1})"));
  Json stats = Stats();
  EXPECT_EQ(stats["effects_applied"], 1);
  EXPECT_EQ(stats["per_key"]["k-retry"]["requests"], 2);
  EXPECT_EQ(stats["per_key"]["k-retry"]["applied"], 1);
}

TEST_F(HttpToolTest, SameKeyAppliesOnce) {
  ToolOutcome a = Call("/effect", R"({"n":1})", "same");
  ToolOutcome b = Call("/effect", R"({"n":1})", "same");
  ToolOutcome c = Call("/effect", R"({"n":2})", "other");
  ASSERT_EQ(a.kind, Kind::kOk);
  ASSERT_EQ(b.kind, Kind::kOk);
  Json ja = Json::parse(a.output), jb = Json::parse(b.output), jc = Json::parse(c.output);
  EXPECT_EQ(ja["applied"], true);
  EXPECT_EQ(jb["applied"], false);
  EXPECT_EQ(ja["effect_no"], jb["effect_no"]);
  EXPECT_EQ(jc["effect_no"], 2);
  EXPECT_EQ(Stats()["effects_applied"], 2);
  EXPECT_EQ(Stats()["per_key"]["same"]["applied"], 1);
}

TEST_F(HttpToolTest, DroppedConnectionAfterApplyingIsRetryableAndReplayIsSafe) {
  ASSERT_TRUE(server_->AddFaults(Json::parse(R"([{"close":true,"apply":true}])")).ok());
  ToolOutcome lost = Call("/effect", "{}", "k-lost");
  EXPECT_EQ(lost.kind, Kind::kRetryable);
  EXPECT_NE(lost.output.find("connection broke"), std::string::npos) << lost.output;
  EXPECT_FALSE(lost.not_sent);  // the request went out: its effect is unknown
  EXPECT_EQ(Stats()["effects_applied"], 1);
  ToolOutcome retry = Call("/effect", "{}", "k-lost");
  ASSERT_EQ(retry.kind, Kind::kOk);
  EXPECT_EQ(Json::parse(retry.output)["applied"], false);
  EXPECT_EQ(Stats()["effects_applied"], 1);
}

TEST_F(HttpToolTest, UnsafeAppliesEveryTime) {
  Call("/unsafe", "{}", "u");
  Call("/unsafe", "{}", "u");
  Json stats = Stats();
  EXPECT_EQ(stats["unsafe_applied"], 2);
  EXPECT_EQ(stats["unsafe_per_key"]["u"]["requests"], 2);
  EXPECT_EQ(stats["unsafe_per_key"]["u"]["applied"], 2);
}

TEST_F(HttpToolTest, TimeoutIsRetryable) {
  auto start = Clock::now();
  ToolOutcome o = Call("/slow?ms=3000", "{}", "k", 200);
  EXPECT_EQ(o.kind, Kind::kRetryable);
  EXPECT_EQ(o.output, "tool 't' timed out after 200 ms");
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(2000));
}

TEST_F(HttpToolTest, HangFaultTimesOut) {
  ASSERT_TRUE(server_->AddFaults(Json::parse(R"([{"hang_ms":3000}])")).ok());
  ToolOutcome o = Call("/effect", "{}", "k-hang", 200);
  EXPECT_EQ(o.kind, Kind::kRetryable);
  EXPECT_EQ(o.output, "tool 't' timed out after 200 ms");
  EXPECT_EQ(Stats()["effects_applied"], 0);
}

TEST_F(HttpToolTest, RefusedConnectionIsRetryable) {
  uint16_t port = server_->port();
  server_->Stop();
  HttpToolSpec spec{"t", "http://127.0.0.1:" + std::to_string(port) + "/echo", 2000, true, {}};
  ToolOutcome o = CallHttpToolBlocking(spec, "{}", "k", nullptr);
  EXPECT_EQ(o.kind, Kind::kRetryable);
  EXPECT_EQ(o.output.rfind("tool 't' unreachable: ", 0), 0u) << o.output;
  EXPECT_TRUE(o.not_sent);
  EXPECT_EQ(o.http_status, 0);
}

TEST_F(HttpToolTest, OversizedResponseIsAToolError) {
  ToolOutcome o = Call("/big?bytes=2000000");
  EXPECT_EQ(o.kind, Kind::kToolError);
  EXPECT_EQ(o.output, "tool response larger than 1 MiB");
  ToolOutcome fits = Call("/big?bytes=1048576");
  EXPECT_EQ(fits.kind, Kind::kOk);
  EXPECT_EQ(fits.output.size(), 1048576u);
}

TEST_F(HttpToolTest, GarbageSuccessBodyIsPassedThrough) {
  ToolOutcome o = Call("/garbage");
  EXPECT_EQ(o.kind, Kind::kOk);
  EXPECT_EQ(o.output.rfind("<html>not json", 0), 0u);
}

TEST_F(HttpToolTest, AbortCancelsARunningCall) {
  std::atomic<bool> abort{false};
  std::thread trigger([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    abort = true;
  });
  auto start = Clock::now();
  ToolOutcome o =
      CallHttpToolBlocking(Spec("/slow?ms=10000", 30000), "{}", "k", [&] { return abort.load(); });
  trigger.join();
  EXPECT_EQ(o.kind, Kind::kRetryable);
  EXPECT_EQ(o.output, "cancelled");
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(3000));

  // Already aborted: nothing is sent.
  int64_t before = Stats()["total_requests"];
  ToolOutcome early = CallHttpToolBlocking(Spec("/effect"), "{}", "k", [] { return true; });
  EXPECT_EQ(early.output, "cancelled");
  EXPECT_EQ(Stats()["total_requests"], before);
}

TEST_F(HttpToolTest, BadUrlIsAToolError) {
  HttpToolSpec spec{"t", "ftp://example.invalid/x", 1000, true, {}};
  ToolOutcome o = CallHttpToolBlocking(spec, "{}", "k", nullptr);
  EXPECT_EQ(o.kind, Kind::kToolError);
  EXPECT_NE(o.output.find("tool 't' has an unusable url"), std::string::npos) << o.output;
}

// ---------------------------------------------------------------------------------------
// The fake tool server's own protocol.

TEST_F(HttpToolTest, FakeControlEndpoints) {
  HttpRequest req;
  req.url = server_->Url("/_fake/faults");
  req.body = R"({"faults":[{"status":500},{"hang_ms":1},{"bogus":1}]})";
  auto bad = HttpDoBlocking(req);
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 400);
  EXPECT_NE(bad->body.find("faults[2].bogus"), std::string::npos) << bad->body;

  req.body = R"({"faults":[{"status":500},{"status":502}]})";
  auto ok = HttpDoBlocking(req);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(Stats()["faults_pending"], 2);
  EXPECT_EQ(Call("/echo").http_status, 500);

  req.method = "DELETE";
  req.body.clear();
  ASSERT_TRUE(HttpDoBlocking(req).ok());
  EXPECT_EQ(Stats()["faults_pending"], 0);
  EXPECT_EQ(Call("/echo").kind, Kind::kOk);

  HttpRequest stats;
  stats.method = "GET";
  stats.url = server_->Url("/_fake/stats");
  auto s = HttpDoBlocking(stats);
  ASSERT_TRUE(s.ok());
  Json j = Json::parse(s->body);
  EXPECT_EQ(j["total_requests"], 2);
  for (const char* k : {"effects_applied", "per_key", "unsafe_per_key"}) EXPECT_TRUE(j.contains(k));

  HttpRequest reset;
  reset.url = server_->Url("/_fake/reset");
  ASSERT_TRUE(HttpDoBlocking(reset).ok());
  EXPECT_EQ(Stats()["total_requests"], 0);

  EXPECT_EQ(Call("/effect", "{}", "").kind, Kind::kToolError);  // no key -> 400
  EXPECT_EQ(Call("/effect", "not json", "k").kind, Kind::kToolError);
  EXPECT_EQ(Stats()["effects_applied"], 0);
}

TEST(FakeToolsStateFileTest, EffectsSurviveARestart) {
  std::string path = ::testing::TempDir() + "fake_tools_state_" + std::to_string(getpid());
  std::filesystem::remove(path);
  fakes::FakeToolOptions options;
  options.state_file = path;
  {
    auto s = fakes::StartFakeTools(options);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    HttpToolSpec spec{"t", (*s)->Url("/effect"), 5000, true, {}};
    ASSERT_EQ(CallHttpToolBlocking(spec, R"({"a":1})", "k1", nullptr).kind, Kind::kOk);
    ASSERT_EQ(CallHttpToolBlocking(spec, R"({"a":2})", "k2", nullptr).kind, Kind::kOk);
    spec.url = (*s)->Url("/unsafe");
    ASSERT_EQ(CallHttpToolBlocking(spec, "{}", "u1", nullptr).kind, Kind::kOk);
  }
  // A torn last line, as after a crash mid-append, is ignored.
  FILE* f = std::fopen(path.c_str(), "a");
  ASSERT_NE(f, nullptr);
  std::fputs(R"({"tool":"effect","key":"k3","eff)", f);
  std::fclose(f);

  auto s = fakes::StartFakeTools(options);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  Json stats = (*s)->Stats();
  EXPECT_EQ(stats["effects_applied"], 2);
  EXPECT_EQ(stats["unsafe_applied"], 1);
  EXPECT_EQ(stats["per_key"]["k1"]["applied"], 1);
  HttpToolSpec spec{"t", (*s)->Url("/effect"), 5000, true, {}};
  ToolOutcome replay = CallHttpToolBlocking(spec, R"({"a":1})", "k1", nullptr);
  ASSERT_EQ(replay.kind, Kind::kOk);
  Json body = Json::parse(replay.output);
  EXPECT_EQ(body["applied"], false);
  EXPECT_EQ(body["effect_no"], 1);
  EXPECT_EQ(body["args"], Json::parse(R"({"a":1})"));
  ToolOutcome fresh = CallHttpToolBlocking(spec, "{}", "k3", nullptr);
  EXPECT_EQ(Json::parse(fresh.output)["effect_no"], 3);
  (*s)->Stop();
  std::filesystem::remove(path);
}

TEST(FakeToolsPerfTest, RequestsAreCheap) {
  auto s = fakes::StartFakeTools({});
  ASSERT_TRUE(s.ok());
  HttpToolSpec spec{"t", (*s)->Url("/effect"), 5000, true, {}};
  constexpr int kCalls = 2000;
  auto start = Clock::now();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_EQ(CallHttpToolBlocking(spec, R"({"i":1})", "p" + std::to_string(i), nullptr).kind,
              Kind::kOk);
  }
  auto per_call =
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start) / kCalls;
  // A full round trip over loopback, client included; generous for sanitizer builds.
  EXPECT_LT(per_call.count(), 2000) << per_call.count() << " us per call";
  std::printf("round trip: %lld us per call\n", static_cast<long long>(per_call.count()));
}

}  // namespace
}  // namespace agentd::tools

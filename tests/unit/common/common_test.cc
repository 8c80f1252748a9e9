#include <gtest/gtest.h>

#include <atomic>
#include <set>

#include "api/http/server.h"
#include "common/http_client.h"
#include "common/ids.h"
#include "common/json.h"
#include "common/retry.h"
#include "common/thread_pool.h"

namespace agentd {
namespace {

TEST(IdsTest, PrefixedRandomAndValid) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string id = NewId("ses_");
    EXPECT_TRUE(IsValidId(id, "ses_")) << id;
    EXPECT_TRUE(seen.insert(id).second);
  }
  EXPECT_EQ(NewId("trn_").size(), 4u + 26u);
  EXPECT_FALSE(IsValidId("ses_short", "ses_"));
  EXPECT_FALSE(IsValidId(NewId("agt_"), "ses_"));
  EXPECT_FALSE(IsValidId("ses_ABCDEFGHJKMNPQRSTVWXYZ0123", "ses_"));
}

TEST(JsonTest, ParseErrorsNameTheOffset) {
  auto r = ParseJson("{\"a\": }", "request body");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("request body is not valid JSON (at byte"),
            std::string::npos);
  EXPECT_FALSE(ParseJson("", "x").ok());
  EXPECT_TRUE(ParseJson("[1]", "x").ok());
}

TEST(JsonTest, FieldReaderIsStrict) {
  Json j = Json::parse(R"({"name":"a","n":5,"flag":true,"extra":1,"obj":{"x":"y"}})");
  FieldReader r(j, "");
  std::string name;
  int64_t n = 0;
  bool flag = false;
  EXPECT_TRUE(r.String("name", &name, true).ok());
  EXPECT_TRUE(r.Int("n", &n, true, 0, 10).ok());
  EXPECT_TRUE(r.Bool("flag", &flag, true).ok());
  const Json* obj = nullptr;
  EXPECT_TRUE(r.Value("obj", &obj, true).ok());
  Status unknown = r.NoUnknownKeys();
  EXPECT_EQ(unknown.message(), "unknown field 'extra'");
  FieldReader nested((*obj), "model");
  int64_t x;
  EXPECT_EQ(nested.Int("x", &x, true, 0, 1).message(), "'model.x' must be an integer");
  EXPECT_EQ(nested.String("missing", &name, true).message(), "'model.missing' is required");
  FieldReader range(j, "");
  EXPECT_EQ(range.Int("n", &n, true, 0, 3).message(), "'n' must be between 0 and 3");
  FieldReader notobj(Json::array(), "");
  EXPECT_FALSE(notobj.CheckObject().ok());
}

TEST(RetryTest, BackoffGrowsCapsAndHonoursRetryAfter) {
  RetryPolicy p{5, 100, 2.0, 1000};
  EXPECT_EQ(BackoffFor(p, 2, std::nullopt).count(), 100);
  EXPECT_EQ(BackoffFor(p, 3, std::nullopt).count(), 200);
  EXPECT_EQ(BackoffFor(p, 6, std::nullopt).count(), 1000);
  EXPECT_EQ(BackoffFor(p, 2, std::chrono::milliseconds(700)).count(), 700);
  EXPECT_EQ(BackoffFor(p, 2, std::chrono::milliseconds(5000)).count(), 1000);
}

TEST(RetryTest, ParseRetryAfter) {
  EXPECT_EQ(ParseRetryAfter("2")->count(), 2000);
  EXPECT_EQ(ParseRetryAfter(" 0")->count(), 0);
  EXPECT_FALSE(ParseRetryAfter("soon").has_value());
  EXPECT_FALSE(ParseRetryAfter("").has_value());
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT")->count(), 0);  // in the past
}

TEST(ThreadPoolTest, RunsEverythingAndGrowsOnDemand) {
  std::atomic<int> n{0};
  {
    ThreadPool pool("test", 0, 8, std::chrono::milliseconds(50));
    for (int i = 0; i < 100; ++i) pool.Submit([&] { n++; });
    pool.Shutdown();
    EXPECT_EQ(pool.ThreadCount(), 0u);
  }
  EXPECT_EQ(n.load(), 100);
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    http::ServerOptions o;
    o.max_body_bytes = 1024;
    server_ = std::make_unique<http::Server>(o, [](const http::Request& r, http::Exchange& ex) {
      if (r.path == "/stream") {
        ex.StartStream(200, "text/event-stream", {});
        for (int i = 0; i < 3; ++i) ex.Write("data: " + std::to_string(i) + "\n\n");
        ex.EndStream();
        return;
      }
      std::string q = r.Query("q") ? *r.Query("q") : "";
      ex.Respond({200, "text/plain", r.method + " " + r.path + " q=" + q + " " + r.body, {}});
    });
    ASSERT_TRUE(server_->Start().ok());
    base_ = "http://127.0.0.1:" + std::to_string(server_->port());
  }
  std::unique_ptr<http::Server> server_;
  std::string base_;
};

TEST_F(HttpServerTest, RoutesDecodedPathAndQuery) {
  HttpRequest req;
  req.url = base_ + "/a%20b?q=x%2By+z";
  req.body = "hello";
  auto r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "POST /a b q=x+y z hello");
}

TEST_F(HttpServerTest, OversizedBodyIs413ProblemJson) {
  HttpRequest req;
  req.url = base_ + "/x";
  req.body = std::string(4096, 'a');
  auto r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(r->Header("content-type"), "application/problem+json");
  EXPECT_NE(r->body.find("larger than 1024 bytes"), std::string::npos);
}

TEST_F(HttpServerTest, BadPercentEncodingIs400) {
  HttpRequest req;
  req.method = "GET";
  req.url = base_ + "/bad%zz";
  auto r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400);
}

TEST_F(HttpServerTest, StreamsChunks) {
  HttpRequest req;
  req.method = "GET";
  req.url = base_ + "/stream";
  std::string got;
  req.on_body = [&](std::string_view c) {
    got.append(c);
    return true;
  };
  auto r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(got, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

TEST(HttpClientTest, RefusedConnectionIsUnavailable) {
  HttpRequest req;
  req.url = "http://127.0.0.1:1/";
  auto r = HttpDoBlocking(req);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace agentd

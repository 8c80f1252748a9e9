#include <gtest/gtest.h>

#include <atomic>
#include <set>

#include "api/http/server.h"
#include "common/base64.h"
#include "common/clock.h"
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

TEST(HttpServerLimitTest, EachRouteHasItsBodyLimitWithContentLengthOrChunked) {
  http::ServerOptions o;
  o.max_body_bytes = 1024;
  o.body_limit_for = [](std::string_view method, std::string_view target) -> size_t {
    return method == "POST" && target.substr(0, 4) == "/big" ? 8192 : 1024;
  };
  http::Server server(o, [](const http::Request& r, http::Exchange& ex) {
    ex.Respond({200, "text/plain", std::to_string(r.body.size()), {}});
  });
  ASSERT_TRUE(server.Start().ok());
  std::string base = "http://127.0.0.1:" + std::to_string(server.port());
  for (bool chunked : {false, true}) {
    auto post = [&](const std::string& path, size_t n) {
      HttpRequest req;
      req.url = base + path;
      req.body = std::string(n, 'a');
      if (chunked) req.headers.emplace_back("Transfer-Encoding", "chunked");
      auto r = HttpDoBlocking(req);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      return r.ok() ? std::make_pair(r->status, r->body) : std::make_pair(0, std::string());
    };
    SCOPED_TRACE(chunked ? "chunked" : "content-length");
    EXPECT_EQ(post("/big?x=1", 6000), std::make_pair(200, std::string("6000")));
    auto over = post("/big", 9000);
    EXPECT_EQ(over.first, 413);
    EXPECT_NE(over.second.find("larger than 8192 bytes"), std::string::npos) << over.second;
    auto small = post("/other", 2000);
    EXPECT_EQ(small.first, 413);
    EXPECT_NE(small.second.find("larger than 1024 bytes"), std::string::npos) << small.second;
    EXPECT_EQ(post("/other", 1000).first, 200);
  }
}

TEST(ClockTest, ParsesRfc3339) {
  EXPECT_EQ(ParseRfc3339("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(ParseRfc3339(FormatRfc3339(1796000000123)), 1796000000123);
  EXPECT_EQ(ParseRfc3339("2026-11-29T10:00:00.5+01:00"), ParseRfc3339("2026-11-29T09:00:00.500Z"));
  EXPECT_EQ(ParseRfc3339("2026-11-29t09:00:00.123456z"), ParseRfc3339("2026-11-29T09:00:00.123Z"));
  EXPECT_EQ(ParseRfc3339("2024-02-29T00:00:00-00:30"), ParseRfc3339("2024-02-29T00:30:00Z"));
  for (const char* bad : {"", "2026-11-29", "2026-11-29T09:00:00", "2026-13-01T00:00:00Z",
                          "2025-02-29T00:00:00Z", "2026-11-29T24:00:00Z", "2026-11-29T09:00:00.Z",
                          "2026-11-29T09:00:00Zjunk", "2026-11-29 09:00:00Z", "yesterday",
                          "2026-11-29T09:00:00+0100"}) {
    EXPECT_FALSE(ParseRfc3339(bad).has_value()) << bad;
  }
}

TEST(Base64Test, RoundTripsAndRefusesWhatIsNotBase64) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes += static_cast<char>(i);
  for (size_t n : {0, 1, 2, 3, 4, 255, 256}) {
    std::string in = bytes.substr(0, n);
    for (auto v : {Base64Variant::kStandard, Base64Variant::kUrlNoPadding}) {
      auto out = Base64Decode(Base64Encode(in, v), v);
      ASSERT_TRUE(out.ok());
      EXPECT_EQ(*out, in);
    }
  }
  EXPECT_EQ(Base64Encode("hi?>"), "aGk/Pg==");
  EXPECT_EQ(Base64Encode("hi?>", Base64Variant::kUrlNoPadding), "aGk_Pg");
  for (const char* bad : {"@@@@", "aGk", "aGk/Pg=", "aGk/Pg== ", "aGk_Pg=="}) {
    EXPECT_FALSE(Base64Decode(bad).ok()) << bad;
  }
}

// connect_address pins where the connection goes, whatever the name resolves to (here, to
// nothing at all); the Host header stays the URL's.
TEST_F(HttpServerTest, ConnectAddressOverridesTheNamesResolution) {
  std::string port = base_.substr(base_.rfind(':') + 1);
  HttpRequest req;
  req.url = "http://mcp.example.invalid:" + port + "/pinned";
  req.body = "x";
  auto unpinned = HttpDoBlocking(req);
  EXPECT_FALSE(unpinned.ok());
  req.connect_address = "127.0.0.1";
  auto r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "POST /pinned q= x");
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

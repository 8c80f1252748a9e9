// The egress proxy over real sockets: a client end handed to Serve as a sandbox's supervisor
// would hand it, and real upstream servers on 127.0.0.1 (listed explicitly, since loopback
// is refused otherwise). The last tests drive the proxy with the real curl.
#include "sandbox/egress/egress_proxy.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

namespace agentd::sandbox::egress {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Open sockets, pipes and eventfds: what the proxy opens. (Sanitizer runtimes open and close
// files of their own at any time, so not every descriptor is counted.)
int OpenFds() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d)) {
      char target[256] = {};
      std::string path = std::string("/proc/self/fd/") + e->d_name;
      if (readlink(path.c_str(), target, sizeof(target) - 1) <= 0) continue;
      std::string_view t(target);
      if (t.rfind("socket:", 0) == 0 || t.rfind("pipe:", 0) == 0 ||
          t.rfind("anon_inode:[eventfd]", 0) == 0) {
        ++n;
      }
    }
    closedir(d);
  }
  return n;
}

// Waits for the open descriptors to come back to `n` (upstream servers close their ends a
// moment after the proxy closes its own).
int OpenFdsSettledTo(int n) {
  Clock::time_point deadline = Clock::now() + 5s;
  while (OpenFds() != n && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
  return OpenFds();
}

// A listening TCP socket on 127.0.0.1 and a thread that hands each accepted connection to
// `on_accept`, until destroyed.
class Listener {
 public:
  explicit Listener(std::function<void(int)> on_accept) : on_accept_(std::move(on_accept)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(fd_, 128), 0);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    EXPECT_EQ(pipe2(stop_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { Loop(); });
  }
  ~Listener() {
    (void)!write(stop_[1], "x", 1);
    thread_.join();
    for (auto& t : workers_) t.join();
    close(fd_);
    close(stop_[0]);
    close(stop_[1]);
  }
  uint16_t port() const { return port_; }
  // Runs `fn` on a thread joined when the listener is destroyed.
  void Spawn(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    workers_.emplace_back(std::move(fn));
  }
  int stop_fd() const { return stop_[0]; }

 private:
  void Loop() {
    for (;;) {
      pollfd p[2] = {{fd_, POLLIN, 0}, {stop_[0], POLLIN, 0}};
      if (poll(p, 2, -1) < 0) continue;
      if (p[1].revents) return;
      int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) on_accept_(c);
    }
  }
  std::function<void(int)> on_accept_;
  int fd_ = -1;
  uint16_t port_ = 0;
  int stop_[2] = {-1, -1};
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::thread> workers_;
};

// Reads what arrives until EOF, `until` is seen, or the timeout.
std::string ReadUntil(int fd, std::chrono::milliseconds timeout, std::string_view until = {},
                      size_t max = 64 << 20) {
  std::string out;
  Clock::time_point deadline = Clock::now() + timeout;
  char buf[65536];
  while (out.size() < max) {
    if (!until.empty() && out.find(until) != std::string::npos) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    ssize_t n = read(fd, buf, std::min(sizeof(buf), max - out.size()));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// True when the peer closed: a read returns EOF (or an error) within the timeout.
bool ClosedWithin(int fd, std::chrono::milliseconds timeout) {
  Clock::time_point deadline = Clock::now() + timeout;
  char buf[4096];
  while (Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) return true;
  }
  return false;
}

// An upstream that echoes every byte back, on a thread per connection.
class EchoServer {
 public:
  EchoServer()
      : listener_([this](int c) {
          listener_.Spawn([c, stop = listener_.stop_fd(), this] {
            ++connections_;
            char buf[65536];
            for (;;) {
              pollfd p[2] = {{c, POLLIN, 0}, {stop, POLLIN, 0}};
              if (poll(p, 2, -1) <= 0 || p[1].revents) break;
              ssize_t n = read(c, buf, sizeof(buf));
              if (n <= 0 || !WriteAll(c, std::string_view(buf, static_cast<size_t>(n)))) break;
            }
            close(c);
          });
        }) {}
  uint16_t port() const { return listener_.port(); }
  int connections() const { return connections_; }

 private:
  std::atomic<int> connections_{0};
  Listener listener_;
};

// An origin server: reads one request (head and Content-Length body), records it, answers
// 200 with a body naming the path and the body length, and closes.
class HttpServer {
 public:
  HttpServer()
      : listener_([this](int c) {
          listener_.Spawn([c, this] {
            std::string req = ReadUntil(c, 5s, "\r\n\r\n");
            size_t end = req.find("\r\n\r\n");
            size_t length = 0;
            if (size_t cl = req.find("Content-Length: "); cl != std::string::npos && cl < end) {
              length = std::stoul(req.substr(cl + 16));
            }
            if (end != std::string::npos && req.size() < end + 4 + length) {
              req += ReadUntil(c, 5s, {}, end + 4 + length - req.size());
            }
            std::string head = req.substr(0, end + 4);
            std::string path = head.substr(head.find(' ') + 1);
            path = path.substr(0, path.find(' '));
            std::string body = "hello from the origin, path " + path + ", body " +
                               std::to_string(end == std::string::npos ? 0 : req.size() - end - 4) +
                               "\n";
            WriteAll(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                            std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body);
            {
              std::lock_guard<std::mutex> lock(mu_);
              heads_.push_back(head);
            }
            close(c);
          });
        }) {}
  uint16_t port() const { return listener_.port(); }
  std::vector<std::string> heads() {
    std::lock_guard<std::mutex> lock(mu_);
    return heads_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> heads_;
  Listener listener_;
};

// Collects the proxy's events.
class Events {
 public:
  EgressCallback callback() {
    return [this](const EgressEvent& e) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(e);
      cv_.notify_all();
    };
  }
  // Waits for `n` events in all; returns them.
  std::vector<EgressEvent> Wait(size_t n, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return events_.size() >= n; });
    return events_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<EgressEvent> events_;
};

EgressPolicy Policy(const std::vector<std::string>& entries) {
  Result<EgressPolicy> p = EgressPolicy::Parse(entries);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? *p : EgressPolicy();
}

std::string Listed(uint16_t port) { return "127.0.0.1:" + std::to_string(port); }

// A connected pair: the proxy gets one end (as the supervisor would hand it), the test the
// other. `tcp` makes it a loopback TCP connection instead of a socketpair.
struct ClientPair {
  int proxy_end = -1;
  int client = -1;
  explicit ClientPair(bool tcp = false) {
    if (!tcp) {
      int sv[2];
      EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
      client = sv[0], proxy_end = sv[1];
      return;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    listen(l, 1);
    socklen_t len = sizeof(a);
    getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
    client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_EQ(connect(client, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    proxy_end = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    close(l);
  }
  ~ClientPair() {
    if (client >= 0) close(client);
  }
  // Hands the proxy end over (ownership passes to the proxy).
  int Give() {
    int fd = proxy_end;
    proxy_end = -1;
    return fd;
  }
};

// Sends `request` through a fresh connection and returns everything the proxy answers.
std::string Exchange(EgressProxy& proxy, const EgressPolicy& policy, Events& events,
                     std::string_view request, std::chrono::milliseconds timeout = 5s) {
  ClientPair c;
  proxy.Serve(c.Give(), policy, events.callback());
  WriteAll(c.client, request);
  return ReadUntil(c.client, timeout);
}

std::string Connect(uint16_t port, std::string_view host = "127.0.0.1") {
  return "CONNECT " + std::string(host) + ":" + std::to_string(port) +
         " HTTP/1.1\r\nHost: " + std::string(host) + ":" + std::to_string(port) + "\r\n\r\n";
}

constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";

TEST(EgressProxy, ConnectAllowedCarriesBytesBothWays) {
  EchoServer echo;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  ClientPair c(/*tcp=*/true);
  proxy.Serve(c.Give(), Policy({Listed(echo.port())}), events.callback());
  // Bytes sent right behind the CONNECT head (a TLS hello sent eagerly) are not lost.
  ASSERT_TRUE(WriteAll(c.client, Connect(echo.port()) + "early"));
  EXPECT_EQ(ReadUntil(c.client, 5s, "early"), std::string(kEstablished) + "early");
  std::string big(1 << 20, 'x');
  for (size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + i % 26);
  std::thread writer([&] { WriteAll(c.client, big); });
  std::string back = ReadUntil(c.client, 10s, {}, big.size());
  writer.join();
  EXPECT_EQ(back.size(), big.size());
  EXPECT_TRUE(back == big);
  shutdown(c.client, SHUT_WR);
  EXPECT_TRUE(ClosedWithin(c.client, 5s));  // the half-close went through and back

  std::vector<EgressEvent> ev = events.Wait(2);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].phase, EgressEvent::Phase::kDecided);
  EXPECT_TRUE(ev[0].allowed);
  EXPECT_EQ(ev[0].method, "CONNECT");
  EXPECT_EQ(ev[0].host, "127.0.0.1");
  EXPECT_EQ(ev[0].port, echo.port());
  EXPECT_EQ(ev[0].address, Listed(echo.port()));
  EXPECT_EQ(ev[1].phase, EgressEvent::Phase::kClosed);
  EXPECT_TRUE(ev[1].allowed);
  EXPECT_EQ(ev[1].status, 200);
  EXPECT_EQ(ev[1].reason, "");
  EXPECT_EQ(ev[1].bytes_up, big.size() + 5);
  EXPECT_EQ(ev[1].bytes_down, big.size() + 5);
  EXPECT_EQ(ev[1].address, Listed(echo.port()));
}

TEST(EgressProxy, ConnectNotListedIsRefusedWithTheReason) {
  EchoServer echo;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  std::string answer = Exchange(proxy, Policy({"example.com:443"}), events, Connect(echo.port()));
  EXPECT_EQ(answer.rfind("HTTP/1.1 403 Forbidden\r\n", 0), 0u) << answer;
  std::string reason = "egress to " + Listed(echo.port()) +
                       " is not allowed: not in the sandbox's egress allow-list";
  EXPECT_NE(answer.find("\r\n\r\n" + reason + "\n"), std::string::npos) << answer;
  std::vector<EgressEvent> ev = events.Wait(1);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].phase, EgressEvent::Phase::kDecided);
  EXPECT_FALSE(ev[0].allowed);
  EXPECT_EQ(ev[0].reason, reason);
  EXPECT_EQ(ev[0].status, 403);
  EXPECT_EQ(echo.connections(), 0);
}

TEST(EgressProxy, LoopbackByNameIsRefusedEvenWhenTheNameIsListed) {
  EchoServer echo;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  std::string entry = "localhost:" + std::to_string(echo.port());
  std::string answer = Exchange(proxy, Policy({entry}), events, Connect(echo.port(), "localhost"));
  EXPECT_EQ(answer.rfind("HTTP/1.1 403 ", 0), 0u) << answer;
  EXPECT_NE(answer.find("egress to " + entry + " ("), std::string::npos) << answer;
  EXPECT_NE(answer.find(") is not allowed: loopback address"), std::string::npos) << answer;
  std::vector<EgressEvent> ev = events.Wait(1);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_FALSE(ev[0].allowed);
  EXPECT_EQ(ev[0].host, "localhost");
  EXPECT_NE(ev[0].address.find(std::to_string(echo.port())), std::string::npos);
  EXPECT_EQ(echo.connections(), 0);
}

TEST(EgressProxy, AddressForms) {
  EchoServer echo;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  // The IPv4-mapped form of a loopback address is loopback: refused unless listed.
  std::string answer = Exchange(proxy, Policy({"example.com:443"}), events,
                                Connect(echo.port(), "[::ffff:127.0.0.1]"));
  EXPECT_EQ(answer.rfind("HTTP/1.1 403 ", 0), 0u) << answer;
  // ...and reaches the listed address when it is listed.
  answer = Exchange(proxy, Policy({Listed(echo.port())}), events,
                    Connect(echo.port(), "[::ffff:127.0.0.1]"), 1s);
  EXPECT_EQ(answer.rfind(std::string(kEstablished), 0), 0u) << answer;
  // A listed private range covers the address.
  answer = Exchange(proxy, Policy({"127.0.0.0/8:" + std::to_string(echo.port())}), events,
                    Connect(echo.port()), 1s);
  EXPECT_EQ(answer.rfind(std::string(kEstablished), 0), 0u) << answer;
  // IPv6 loopback, where the host has it: refused unless listed, and reached when listed.
  int v6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 lo6{};
  lo6.sin6_family = AF_INET6;
  lo6.sin6_addr = in6addr_loopback;
  bool has_v6 = v6 >= 0 && bind(v6, reinterpret_cast<sockaddr*>(&lo6), sizeof(lo6)) == 0 &&
                listen(v6, 4) == 0;
  if (has_v6) {
    socklen_t len = sizeof(lo6);
    getsockname(v6, reinterpret_cast<sockaddr*>(&lo6), &len);
    uint16_t port6 = ntohs(lo6.sin6_port);
    answer = Exchange(proxy, Policy({Listed(port6)}), events, Connect(port6, "[::1]"));
    EXPECT_NE(answer.find("egress to [::1]:" + std::to_string(port6) +
                          " is not allowed: not in the sandbox's egress allow-list"),
              std::string::npos)
        << answer;
    answer = Exchange(proxy, Policy({"[::1]:" + std::to_string(port6)}), events,
                      Connect(port6, "[::1]"), 500ms);
    EXPECT_EQ(answer.rfind(std::string(kEstablished), 0), 0u) << answer;
  }
  if (v6 >= 0) close(v6);
  // The cloud metadata address.
  answer = Exchange(proxy, Policy({"example.com:80"}), events,
                    "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n");
  EXPECT_NE(answer.find("egress to 169.254.169.254:80 is not allowed"), std::string::npos)
      << answer;
}

// A resolver standing in for DNS an attacker controls: the injected function is the only
// pretend part, the sockets are real.
TEST(EgressProxy, NamesResolvingToInternalAddressesAreRefused) {
  EgressProxyOptions options;
  options.resolver = [](const std::string& host) -> Result<std::vector<IpAddress>> {
    if (host == "rebind.example.com") {
      return std::vector<IpAddress>{*IpAddress::Parse("93.184.216.34"),
                                    *IpAddress::Parse("10.0.0.7")};
    }
    if (host == "metadata.example.com") {
      return std::vector<IpAddress>{*IpAddress::Parse("169.254.169.254")};
    }
    if (host == "cgnat.example.com") {
      return std::vector<IpAddress>{*IpAddress::Parse("100.64.3.4")};
    }
    if (host == "mapped.example.com") {
      return std::vector<IpAddress>{*IpAddress::Parse("::ffff:127.0.0.1")};
    }
    return NotFound("Name or service not known");
  };
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy(options);
  EgressPolicy policy = Policy({"*.example.com:80"});
  struct Case {
    const char* host;
    const char* reason;
  };
  const Case cases[] = {
      {"rebind.example.com",
       "egress to rebind.example.com:80 (10.0.0.7) is not allowed: private address"},
      {"metadata.example.com",
       "egress to metadata.example.com:80 (169.254.169.254) is not allowed: link-local address"},
      {"cgnat.example.com",
       "egress to cgnat.example.com:80 (100.64.3.4) is not allowed: shared (CGNAT) address"},
      {"mapped.example.com",
       "egress to mapped.example.com:80 (127.0.0.1) is not allowed: loopback address"},
  };
  for (const Case& c : cases) {
    std::string answer =
        Exchange(proxy, policy, events, "GET http://" + std::string(c.host) + "/ HTTP/1.1\r\n\r\n");
    EXPECT_EQ(answer.rfind("HTTP/1.1 403 ", 0), 0u) << answer;
    EXPECT_NE(answer.find(c.reason), std::string::npos) << answer;
  }
  std::string answer =
      Exchange(proxy, policy, events, "GET http://gone.example.com/ HTTP/1.1\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 502 Bad Gateway\r\n", 0), 0u) << answer;
  EXPECT_NE(answer.find("cannot resolve gone.example.com"), std::string::npos) << answer;
  std::vector<EgressEvent> ev = events.Wait(5);
  ASSERT_EQ(ev.size(), 5u);
  for (const auto& e : ev) EXPECT_FALSE(e.allowed);
  EXPECT_EQ(ev[0].address, "10.0.0.7:80");
  EXPECT_EQ(ev[4].status, 502);
}

// agentd's own connections on a session's behalf (MCP over HTTP) are decided the same way,
// and get the addresses to connect to.
TEST(EgressProxy, CheckDestinationDecidesAsTheProxyDoes) {
  EgressProxyOptions options;
  options.resolver = [](const std::string& host) -> Result<std::vector<IpAddress>> {
    if (host == "public.example.com") {
      return std::vector<IpAddress>{*IpAddress::Parse("93.184.216.34")};
    }
    if (host == "rebind.example.com") {
      return std::vector<IpAddress>{*IpAddress::Parse("93.184.216.34"),
                                    *IpAddress::Parse("127.0.0.1")};
    }
    return NotFound("Name or service not known");
  };
  EgressProxy proxy(options);
  EgressPolicy policy = Policy({"*.example.com:443", "10.1.2.3:443"});
  auto ok = proxy.CheckDestination(policy, "public.example.com", 443);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(*ok, std::vector<IpAddress>{*IpAddress::Parse("93.184.216.34")});
  auto rebind = proxy.CheckDestination(policy, "rebind.example.com", 443);
  EXPECT_EQ(rebind.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(rebind.status().message().find("127.0.0.1"), std::string::npos)
      << rebind.status().message();
  EXPECT_NE(rebind.status().message().find("loopback"), std::string::npos);
  EXPECT_EQ(proxy.CheckDestination(policy, "gone.example.com", 443).status().code(),
            StatusCode::kNotFound);
  // A private address is reachable only because an address entry lists it.
  EXPECT_TRUE(proxy.CheckDestination(policy, "10.1.2.3", 443).ok());
  EXPECT_EQ(proxy.CheckDestination(policy, "10.1.2.4", 443).status().code(),
            StatusCode::kPermissionDenied);
}

TEST(EgressProxy, PlainHttpIsForwardedInOriginFormWithoutProxyHeaders) {
  HttpServer origin;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  std::string authority = Listed(origin.port());
  std::string answer = Exchange(proxy, Policy({authority}), events,
                                "GET http://" + authority +
                                    "/path/x?token=s3cret HTTP/1.1\r\n"
                                    "Host: elsewhere.example.com\r\n"
                                    "Proxy-Authorization: Basic c2VjcmV0\r\n"
                                    "Proxy-Connection: keep-alive\r\n"
                                    "Connection: keep-alive, X-Hop\r\n"
                                    "X-Hop: 1\r\n"
                                    "Keep-Alive: timeout=5\r\n"
                                    "X-Keep: 2\r\n"
                                    "\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << answer;
  EXPECT_NE(answer.find("hello from the origin, path /path/x?token=s3cret, body 0"),
            std::string::npos);
  std::vector<std::string> heads = origin.heads();
  ASSERT_EQ(heads.size(), 1u);
  const std::string& h = heads[0];
  EXPECT_EQ(h.rfind("GET /path/x?token=s3cret HTTP/1.1\r\n", 0), 0u) << h;
  EXPECT_NE(h.find("\r\nHost: " + authority + "\r\n"), std::string::npos) << h;
  EXPECT_NE(h.find("\r\nConnection: close\r\n"), std::string::npos) << h;
  EXPECT_NE(h.find("\r\nX-Keep: 2\r\n"), std::string::npos) << h;
  for (const char* gone : {"Proxy-", "X-Hop", "Keep-Alive", "keep-alive", "elsewhere"}) {
    EXPECT_EQ(h.find(gone), std::string::npos) << gone << " in " << h;
  }
  std::vector<EgressEvent> ev = events.Wait(2);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_TRUE(ev[0].allowed);
  EXPECT_EQ(ev[0].method, "GET");
  EXPECT_EQ(ev[1].phase, EgressEvent::Phase::kClosed);
  EXPECT_EQ(ev[1].status, 0);
  EXPECT_EQ(ev[1].bytes_down, answer.size());
  EXPECT_GT(ev[1].bytes_up, 0u);
  // Events carry no path, query or header: they may hold secrets.
  for (const auto& e : ev) {
    for (const std::string* s : {&e.host, &e.reason, &e.address, &e.method}) {
      EXPECT_EQ(s->find("s3cret"), std::string::npos);
      EXPECT_EQ(s->find("c2VjcmV0"), std::string::npos);
    }
  }
}

TEST(EgressProxy, PlainHttpBodyIsForwardedByContentLength) {
  HttpServer origin;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  std::string body(100000, 'b');
  std::string answer = Exchange(
      proxy, Policy({Listed(origin.port())}), events,
      "POST http://" + Listed(origin.port()) +
          "/upload HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
  EXPECT_NE(answer.find("path /upload, body 100000\n"), std::string::npos) << answer;
  // A chunked body is refused: the proxy would not know where it ends.
  answer = Exchange(proxy, Policy({Listed(origin.port())}), events,
                    "POST http://" + Listed(origin.port()) +
                        "/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 411 Length Required\r\n", 0), 0u) << answer;
}

constexpr char kNulHeader[] = "GET http://example.com/ HTTP/1.1\r\nX: a\0b\r\n\r\n";

TEST(EgressProxy, PlainHttpEndsWithTheClientEvenIfTheOriginKeepsTheConnection) {
  // An origin that answers and then keeps the connection open despite "Connection: close".
  std::atomic<int> origin_saw_close{0};
  Listener origin([&](int c) {
    origin.Spawn([c, stop = origin.stop_fd(), &origin_saw_close] {
      ReadUntil(c, 5s, "\r\n\r\n");
      WriteAll(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      pollfd p[2] = {{c, POLLIN, 0}, {stop, POLLIN, 0}};
      if (poll(p, 2, 10000) > 0 && p[0].revents) ++origin_saw_close;
      close(c);
    });
  });
  EgressProxyOptions options;
  options.idle_timeout = 30s;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy(options);
  EgressPolicy policy = Policy({Listed(origin.port())});
  std::string request = "GET http://" + Listed(origin.port()) + "/ HTTP/1.1\r\n\r\n";
  {
    ClientPair c;
    proxy.Serve(c.Give(), policy, events.callback());
    WriteAll(c.client, request);
    EXPECT_NE(ReadUntil(c.client, 5s, "\r\n\r\nok").find("\r\n\r\nok"), std::string::npos);
  }  // the client closes once it has its answer
  std::vector<EgressEvent> ev = events.Wait(2, 3s);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].phase, EgressEvent::Phase::kClosed);
  EXPECT_LT(ev[1].duration, 3s);
  // A client that half-closes after its request still gets the answer.
  ClientPair c;
  proxy.Serve(c.Give(), policy, events.callback());
  WriteAll(c.client, request);
  shutdown(c.client, SHUT_WR);
  EXPECT_NE(ReadUntil(c.client, 5s, "\r\n\r\nok").find("\r\n\r\nok"), std::string::npos);
}

TEST(EgressProxy, MalformedRequestsAre400) {
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  EgressPolicy policy = Policy({"example.com"});
  const std::string cases[] = {
      std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x11\x22\x33\x44\x55\x66", 17),
      "hello there\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
      "GET http://example.com/ HTTP/2.0\r\n\r\n",
      "GET  http://example.com/ HTTP/1.1\r\n\r\n",
      "GET http://example.com/ HTTP/1.1\r\n folded: header\r\n\r\n",
      "GET http://example.com/ HTTP/1.1\r\nBad Header : x\r\n\r\n",
      "GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n",
      "GET ftp://example.com/ HTTP/1.1\r\n\r\n",
      "GET https://example.com/ HTTP/1.1\r\n\r\n",
      "CONNECT example.com HTTP/1.1\r\n\r\n",
      "CONNECT example.com:99999 HTTP/1.1\r\n\r\n",
      "CONNECT [::1 HTTP/1.1\r\n\r\n",
      "CONNECT exa mple.com:443 HTTP/1.1\r\n\r\n",
      "GET http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      std::string(kNulHeader, sizeof(kNulHeader) - 1),
  };
  for (const std::string& c : cases) {
    std::string answer = Exchange(proxy, policy, events, c);
    EXPECT_EQ(answer.rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u)
        << "request: " << c << "\nanswer: " << answer;
  }
  std::vector<EgressEvent> ev = events.Wait(std::size(cases));
  ASSERT_EQ(ev.size(), std::size(cases));
  for (const auto& e : ev) {
    EXPECT_FALSE(e.allowed);
    EXPECT_EQ(e.status, 400);
  }
}

TEST(EgressProxy, OversizedHeaderIs431) {
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  std::string req = "GET http://example.com/ HTTP/1.1\r\nX-Big: " + std::string(20000, 'a');
  std::string answer = Exchange(proxy, Policy({"example.com"}), events, req);
  EXPECT_EQ(answer.rfind("HTTP/1.1 431 ", 0), 0u) << answer.substr(0, 200);
  ASSERT_EQ(events.Wait(1).size(), 1u);
}

TEST(EgressProxy, PortZeroIsRefused) {
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  std::string answer =
      Exchange(proxy, Policy({"example.com"}), events, "CONNECT example.com:0 HTTP/1.1\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 403 ", 0), 0u) << answer;
}

TEST(EgressProxy, UpstreamRefusingIs502) {
  uint16_t port;
  {
    EchoServer gone;  // a port that was just free: nothing listens there afterwards
    port = gone.port();
  }
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  std::string answer = Exchange(proxy, Policy({Listed(port)}), events, Connect(port));
  EXPECT_EQ(answer.rfind("HTTP/1.1 502 Bad Gateway\r\n", 0), 0u) << answer;
  EXPECT_NE(answer.find("upstream connect failed: Connection refused"), std::string::npos);
  std::vector<EgressEvent> ev = events.Wait(2);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_TRUE(ev[0].allowed);
  EXPECT_EQ(ev[1].phase, EgressEvent::Phase::kClosed);
  EXPECT_EQ(ev[1].status, 502);
  EXPECT_EQ(ev[1].address, "");
  EXPECT_EQ(ev[1].reason, "upstream connect failed: Connection refused");
}

TEST(EgressProxy, SlowResolutionIs504AndSlowHeadIs408) {
  EgressProxyOptions options;
  options.resolve_timeout = 100ms;
  options.header_timeout = 300ms;
  options.resolver = [](const std::string&) -> Result<std::vector<IpAddress>> {
    std::this_thread::sleep_for(1s);
    return NotFound("too late");
  };
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy(options);
  EgressPolicy policy = Policy({"slow.example.com"});
  int fds_before = OpenFds();
  Clock::time_point start = Clock::now();
  std::string answer =
      Exchange(proxy, policy, events, "GET http://slow.example.com/ HTTP/1.1\r\n\r\n");
  EXPECT_EQ(answer.rfind("HTTP/1.1 504 Gateway Timeout\r\n", 0), 0u) << answer;
  EXPECT_LT(Clock::now() - start, 900ms);
  answer = Exchange(proxy, policy, events, "CONNECT slow.exa");
  EXPECT_EQ(answer.rfind("HTTP/1.1 408 ", 0), 0u) << answer;
  // The abandoned lookup's thread ends by itself and frees what it held.
  EXPECT_EQ(OpenFdsSettledTo(fds_before), fds_before);
}

TEST(EgressProxy, IdleTunnelIsClosed) {
  EchoServer echo;
  EgressProxyOptions options;
  options.idle_timeout = 300ms;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy(options);
  ClientPair c;
  proxy.Serve(c.Give(), Policy({Listed(echo.port())}), events.callback());
  WriteAll(c.client, Connect(echo.port()));
  EXPECT_EQ(ReadUntil(c.client, 5s, kEstablished), kEstablished);
  WriteAll(c.client, "a");
  EXPECT_EQ(ReadUntil(c.client, 5s, "a"), "a");
  Clock::time_point start = Clock::now();
  EXPECT_TRUE(ClosedWithin(c.client, 5s));
  EXPECT_GE(Clock::now() - start, 250ms);
  std::vector<EgressEvent> ev = events.Wait(2);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].reason, "idle timeout");
  EXPECT_EQ(ev[1].bytes_up, 1u);
  EXPECT_EQ(ev[1].bytes_down, 1u);
}

TEST(EgressProxy, ManyConcurrentConnectionsLeaveNoFdsOrThreads) {
  EchoServer echo;
  int fds_before = OpenFds();
  {
    Events events;  // outlives the proxy, whose threads call it
    EgressProxy proxy;
    EgressPolicy policy = Policy({Listed(echo.port())});
    constexpr int kClients = 48;
    constexpr int kRounds = 3;
    for (int round = 0; round < kRounds; ++round) {
      std::vector<std::thread> clients;
      std::atomic<int> ok{0};
      for (int i = 0; i < kClients; ++i) {
        clients.emplace_back([&, i] {
          ClientPair c(i % 2 == 0);
          proxy.Serve(c.Give(), policy, events.callback());
          std::string msg = "message " + std::to_string(i) + "\n";
          WriteAll(c.client, Connect(echo.port()) + msg);
          if (ReadUntil(c.client, 10s, msg) == std::string(kEstablished) + msg) ++ok;
        });
      }
      for (auto& t : clients) t.join();
      EXPECT_EQ(ok, kClients);
    }
    std::vector<EgressEvent> ev = events.Wait(2 * kClients * kRounds, 10s);
    EXPECT_EQ(ev.size(), 2u * kClients * kRounds);
    Clock::time_point deadline = Clock::now() + 5s;
    while (proxy.active_connections() > 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(proxy.active_connections(), 0u);
  }
  EXPECT_EQ(OpenFdsSettledTo(fds_before), fds_before);
}

TEST(EgressProxy, ConnectionsOverTheLimitAre503) {
  EchoServer echo;
  EgressProxyOptions options;
  options.max_connections = 2;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy(options);
  EgressPolicy policy = Policy({Listed(echo.port())});
  ClientPair a, b;
  proxy.Serve(a.Give(), policy, events.callback());
  proxy.Serve(b.Give(), policy, events.callback());
  std::string answer = Exchange(proxy, policy, events, Connect(echo.port()));
  EXPECT_EQ(answer.rfind("HTTP/1.1 503 Service Unavailable\r\n", 0), 0u) << answer;
  EXPECT_NE(answer.find("too many connections (at most 2)"), std::string::npos);
  std::vector<EgressEvent> ev = events.Wait(1);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_FALSE(ev[0].allowed);
  EXPECT_EQ(ev[0].status, 503);
}

TEST(EgressProxy, OneOwnerCannotTakeEveryConnection) {
  EchoServer echo;
  EgressProxyOptions options;
  options.max_connections_per_owner = 2;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy(options);
  EgressPolicy policy = Policy({Listed(echo.port())});
  ClientPair a1, a2;
  proxy.Serve(a1.Give(), policy, events.callback(), "session-a");
  proxy.Serve(a2.Give(), policy, events.callback(), "session-a");
  // The refusal is reported, but not on the thread that called Serve (a driver's thread,
  // which the callback's locks might wait for).
  std::thread::id reported_on;
  std::mutex mu;
  ClientPair a3;
  proxy.Serve(
      a3.Give(), policy,
      [&](const EgressEvent& e) {
        std::lock_guard<std::mutex> lock(mu);
        reported_on = std::this_thread::get_id();
        events.callback()(e);
      },
      "session-a");
  std::string answer = ReadUntil(a3.client, 5s);
  EXPECT_EQ(answer.rfind("HTTP/1.1 503 ", 0), 0u) << answer;
  EXPECT_NE(answer.find("too many connections from this sandbox (at most 2)"), std::string::npos);
  ASSERT_EQ(events.Wait(1).size(), 1u);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_NE(reported_on, std::this_thread::get_id());
  }
  // Another owner is served.
  ClientPair b;
  proxy.Serve(b.Give(), policy, events.callback(), "session-b");
  WriteAll(b.client, Connect(echo.port()));
  EXPECT_EQ(ReadUntil(b.client, 5s, kEstablished), kEstablished);
  // A slot comes back when a connection ends.
  close(a1.client);
  a1.client = -1;
  Clock::time_point deadline = Clock::now() + 5s;
  while (proxy.active_connections() > 2 && Clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  ClientPair a4;
  proxy.Serve(a4.Give(), policy, events.callback(), "session-a");
  WriteAll(a4.client, Connect(echo.port()));
  EXPECT_EQ(ReadUntil(a4.client, 5s, kEstablished), kEstablished);
}

TEST(EgressProxy, ShutdownWithOpenConnectionsReturnsPromptly) {
  EchoServer echo;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  int fds_before = OpenFds();
  EgressPolicy policy = Policy({Listed(echo.port())});
  std::vector<std::unique_ptr<ClientPair>> tunnels, waiting;
  for (int i = 0; i < 10; ++i) {
    tunnels.push_back(std::make_unique<ClientPair>(true));
    proxy.Serve(tunnels.back()->Give(), policy, events.callback());
    WriteAll(tunnels.back()->client, Connect(echo.port()));
    EXPECT_EQ(ReadUntil(tunnels.back()->client, 5s, kEstablished), kEstablished);
    // And some that never send their request.
    waiting.push_back(std::make_unique<ClientPair>());
    proxy.Serve(waiting.back()->Give(), policy, events.callback());
  }
  EXPECT_EQ(proxy.active_connections(), 20u);
  Clock::time_point start = Clock::now();
  proxy.Shutdown();
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_EQ(proxy.active_connections(), 0u);
  for (auto& t : tunnels) EXPECT_TRUE(ClosedWithin(t->client, 1s));
  for (auto& t : waiting) EXPECT_TRUE(ClosedWithin(t->client, 1s));
  std::vector<EgressEvent> ev = events.Wait(20);
  ASSERT_EQ(ev.size(), 20u);  // decided and closed for each tunnel; nothing for the silent
  int closed = 0;
  for (const auto& e : ev) {
    if (e.phase != EgressEvent::Phase::kClosed) continue;
    ++closed;
    EXPECT_EQ(e.reason, "the egress proxy shut down");
  }
  EXPECT_EQ(closed, 10);
  // Later connections are answered 503.
  std::string answer = Exchange(proxy, policy, events, Connect(echo.port()));
  EXPECT_EQ(answer.rfind("HTTP/1.1 503 ", 0), 0u) << answer;
  tunnels.clear();
  waiting.clear();
  EXPECT_EQ(OpenFdsSettledTo(fds_before), fds_before);
}

// The real curl, talking to the proxy through a listening socket whose accept loop hands
// each connection to Serve, as agentd will with the connections its supervisor passes.
class EgressProxyCurl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/curl", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/curl";
  }

  // Runs curl with `args` (and the proxy); returns its stdout, its exit code in `code`.
  std::string Curl(uint16_t proxy_port, const std::vector<std::string>& args, int* code) {
    std::vector<std::string> argv = {"/usr/bin/curl",
                                     "--silent",
                                     "--show-error",
                                     "--max-time",
                                     "10",
                                     "--noproxy",
                                     "",
                                     "--proxy",
                                     "http://127.0.0.1:" + std::to_string(proxy_port)};
    argv.insert(argv.end(), args.begin(), args.end());
    int out[2];
    EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
    pid_t pid = fork();
    if (pid == 0) {
      dup2(out[1], 1);
      std::vector<char*> a;
      for (auto& s : argv) a.push_back(s.data());
      a.push_back(nullptr);
      char* env[] = {nullptr};
      execve(a[0], a.data(), env);
      _exit(127);
    }
    close(out[1]);
    std::string text = ReadUntil(out[0], 15s);
    close(out[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return text;
  }
};

TEST_F(EgressProxyCurl, HttpUrlAndConnectTunnel) {
  HttpServer origin;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  EgressPolicy policy = Policy({Listed(origin.port())});
  Listener front([&](int c) { proxy.Serve(c, policy, events.callback()); });
  std::string url = "http://" + Listed(origin.port()) + "/via/curl";
  int code = -1;
  // Plain HTTP: curl sends the absolute URL to the proxy.
  std::string out = Curl(front.port(), {url}, &code);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(out, "hello from the origin, path /via/curl, body 0\n");
  // Through a CONNECT tunnel (what https:// URLs use), forced with --proxytunnel.
  out = Curl(front.port(), {"--proxytunnel", url + "?tunnel"}, &code);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(out, "hello from the origin, path /via/curl?tunnel, body 0\n");
  // A POST with a body.
  out = Curl(front.port(), {"--data-binary", "0123456789", url}, &code);
  EXPECT_EQ(code, 0);
  EXPECT_EQ(out, "hello from the origin, path /via/curl, body 10\n");
  std::vector<EgressEvent> ev = events.Wait(6);
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[0].method, "GET");
  EXPECT_EQ(ev[2].method, "CONNECT");
  EXPECT_EQ(ev[4].method, "POST");
  for (const auto& e : ev) EXPECT_TRUE(e.allowed);
}

TEST_F(EgressProxyCurl, RefusalsReachCurl) {
  HttpServer origin;
  Events events;  // outlives the proxy, whose threads call it
  EgressProxy proxy;
  EgressPolicy policy = Policy({"localhost:" + std::to_string(origin.port())});
  Listener front([&](int c) { proxy.Serve(c, policy, events.callback()); });
  std::string url = "http://localhost:" + std::to_string(origin.port()) + "/";
  int code = -1;
  std::string out = Curl(front.port(), {"--write-out", "%{http_code}", url}, &code);
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.find("is not allowed: loopback address\n403"), std::string::npos) << out;
  out = Curl(front.port(), {"--proxytunnel", url}, &code);
  EXPECT_EQ(code, 56);  // CONNECT answered with an error status
  EXPECT_TRUE(origin.heads().empty());
  std::vector<EgressEvent> ev = events.Wait(2);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_FALSE(ev[0].allowed);
  EXPECT_FALSE(ev[1].allowed);
}

}  // namespace
}  // namespace agentd::sandbox::egress

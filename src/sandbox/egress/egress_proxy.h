// The host side of sandbox network egress: an HTTP proxy that serves connections a sandbox's
// programs opened to the proxy address inside the sandbox (127.0.0.1:3128), whose file
// descriptors the sandbox's supervisor handed to agentd. Each connection carries one request:
//
//   CONNECT host:port HTTP/1.1          a tunnel: "200 Connection established", then bytes
//                                       both ways until both sides have closed or it idles
//   GET http://host[:port]/path HTTP/1.1   (any method) forwarded to the origin in origin
//                                       form with hop-by-hop and Proxy-* headers removed and
//                                       "Connection: close"; the origin's answer is relayed
//
// Every request is checked against the sandbox's EgressPolicy (egress_policy.h): the host
// must match an entry, it is resolved here on the host, every address it resolves to must
// pass EgressPolicy::CheckAddress, and the proxy connects to those checked addresses (it does
// not resolve the name again). The proxy's own answers: 403 refused by policy (the body says
// why), 400 malformed, 411 chunked request body, 431 header too large, 408 request head too
// slow, 502 unresolvable host or failed connection, 503 too many connections or shutting
// down, 504 resolution or connection timed out. README.md here says what it does not cover.
//
// What is reported: for every connection that sent a request, one EgressEvent of phase
// kDecided (allowed or not); for an allowed one, later one of phase kClosed with the byte
// counts. Events name the method, host and port, never the path, query or headers, which may
// carry secrets.
//
// Thread-safe. Each connection runs on its own thread; Shutdown (or the destructor) ends
// every connection and joins every thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "sandbox/egress/egress_policy.h"

namespace agentd::sandbox::egress {

struct EgressEvent {
  enum class Phase {
    kDecided,  // the policy decision: once per request, allowed or not
    kClosed,   // an allowed connection ended (also when its upstream could not be reached)
  };
  Phase phase = Phase::kDecided;
  std::string method;  // "CONNECT", "GET", ...; empty when the request could not be read
  std::string host;    // as requested (lower case), or the IP literal; empty if unknown
  uint16_t port = 0;
  // kDecided: the address refused, or when allowed the first address to be tried.
  // kClosed: the address connected to; empty if none was.
  std::string address;
  bool allowed = false;  // kClosed: always true
  // kDecided, refused: why ("egress to 169.254.169.254:80 is not allowed: link-local
  // address"). kClosed: why it ended, when not by a side closing ("idle timeout",
  // "upstream connect failed: Connection refused"); empty otherwise.
  std::string reason;
  // The status the proxy answered itself: 200 for an established tunnel, 4xx/5xx for a
  // refusal or failure, 0 when the origin answered a forwarded request.
  int status = 0;
  uint64_t bytes_up = 0;                  // kClosed: bytes from the sandbox to the upstream
  uint64_t bytes_down = 0;                // kClosed: bytes from the upstream to the sandbox
  std::chrono::milliseconds duration{0};  // since Serve was called
};

// Called on a thread of the proxy (the connection's own, or for a connection Serve refused
// at once, the proxy's reporter thread), never on Serve's caller's. It must not block for
// long and must not call Shutdown.
using EgressCallback = std::function<void(const EgressEvent&)>;

// Resolves a host name to addresses; blocking. The default uses getaddrinfo.
using Resolver = std::function<Result<std::vector<IpAddress>>(const std::string& host)>;

// The addresses of this machine's interfaces; the default uses getifaddrs.
using HostAddresses = std::function<std::vector<IpAddress>()>;

struct EgressProxyOptions {
  // Connections served at once; more are answered 503.
  size_t max_connections = 64;
  // Connections served at once for one owner (see Serve); more are answered 503, so that
  // one sandbox cannot take every connection of a proxy that serves many. 0: no such limit.
  size_t max_connections_per_owner = 0;
  // Request line and headers together; more is answered 431.
  size_t max_header_bytes = 16 * 1024;
  // For the whole request head to arrive.
  std::chrono::milliseconds header_timeout{10000};
  // For the host name to resolve.
  std::chrono::milliseconds resolve_timeout{10000};
  // For the TCP connection to the upstream (each address tried).
  std::chrono::milliseconds connect_timeout{10000};
  // A connection with no bytes either way for this long is closed.
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  // Empty: getaddrinfo. Tests may inject one to simulate a name resolving somewhere.
  Resolver resolver;
  // Empty: getifaddrs. The host's own addresses are refused like private ones.
  HostAddresses host_addresses;
};

class EgressProxy {
 public:
  explicit EgressProxy(EgressProxyOptions options = {});
  // Shutdown().
  ~EgressProxy();
  EgressProxy(const EgressProxy&) = delete;
  EgressProxy& operator=(const EgressProxy&) = delete;

  // Serves one client connection (a connected stream socket; Serve takes ownership of it)
  // under `policy`, reporting to `callback` (may be empty). Returns at once, never blocks
  // and never calls `callback` itself. Over a connection limit, or after Shutdown, the
  // client is answered 503 and closed here; that refusal is reported from a thread of the
  // proxy (not at all after Shutdown). `owner` names whose connection it is (a session id)
  // for max_connections_per_owner.
  void Serve(int client_fd, const EgressPolicy& policy, EgressCallback callback,
             const std::string& owner);
  void Serve(int client_fd, const EgressPolicy& policy, EgressCallback callback);

  // Closes every connection and joins every thread; later Serve calls answer 503. Blocking
  // for as long as a callback runs. A name resolution in progress is abandoned, not waited
  // for: its thread ends by itself when the resolver returns and touches nothing of the
  // proxy.
  void Shutdown();

  // The addresses `host:port` is reached at under `policy`, decided as a connection through
  // the proxy would be: the name resolved here, every address it has checked (an internal
  // one among public ones refuses the whole name). PermissionDenied naming the address and
  // the rule; NotFound or Unavailable when the name does not resolve. For agentd's own
  // connections on a session's behalf (MCP over HTTP), which then connect to exactly these
  // addresses. Blocking.
  Result<std::vector<IpAddress>> CheckDestination(const EgressPolicy& policy,
                                                  const std::string& host, uint16_t port) const;

  // Connections being served now.
  size_t active_connections() const;

  struct Connection;

 private:
  void Reap(std::unique_lock<std::mutex>& lock);
  void ReportLoop();

  const EgressProxyOptions options_;
  int stop_fd_ = -1;  // an eventfd, readable once Shutdown has begun; polled by connections
  // Name lookups running, shared with their threads, which may outlive the proxy.
  std::shared_ptr<std::atomic<size_t>> lookups_;

  mutable std::mutex mu_;
  bool stopping_ = false;                               // GUARDED_BY(mu_)
  size_t active_ = 0;                                   // GUARDED_BY(mu_)
  std::list<std::thread> threads_;                      // GUARDED_BY(mu_)
  std::vector<std::list<std::thread>::iterator> done_;  // GUARDED_BY(mu_): to join
  std::map<std::string, size_t> owners_;                // GUARDED_BY(mu_): connections
  // Refusals by Serve, reported by `reporter_` (started with the first).
  std::deque<std::pair<EgressCallback, EgressEvent>> reports_;  // GUARDED_BY(mu_)
  std::condition_variable reports_cv_;
  std::thread reporter_;  // GUARDED_BY(mu_)
};

}  // namespace agentd::sandbox::egress

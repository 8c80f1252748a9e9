#include "sandbox/egress/egress_proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>

namespace agentd::sandbox::egress {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kRelayBuffer = 64 * 1024;
// How long a refused client gets to read its answer before the socket is closed.
constexpr milliseconds kLinger{500};
// Refusals by Serve waiting for the reporter thread; more are not reported.
constexpr size_t kMaxQueuedReports = 1024;

// Headers that describe one hop, not the request, and so are not forwarded (RFC 9110 7.6.1),
// together with every Proxy-* header (credentials meant for us).
constexpr const char* kHopByHop[] = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "host"};

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

bool IsTokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTokenChar);
}

const char* StatusText(int status) {
  switch (status) {
    case 200:
      return "Connection established";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 431:
      return "Request Header Fields Too Large";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Error";
  }
}

std::string ErrorResponse(int status, const std::string& text) {
  std::string body = text + "\n";
  return fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      status, StatusText(status), body.size(), body);
}

Result<std::vector<IpAddress>> GetAddrInfo(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0) {
    std::string why = rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc);
    if (rc == EAI_NONAME || rc == EAI_NODATA) return NotFound(why);
    return Unavailable(why);
  }
  std::vector<IpAddress> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    std::optional<IpAddress> a = IpAddress::FromSockaddr(ai->ai_addr);
    if (a && std::find(out.begin(), out.end(), *a) == out.end()) out.push_back(*a);
  }
  freeaddrinfo(res);
  if (out.empty()) return NotFound("no address");
  return out;
}

std::vector<IpAddress> GetIfAddrs() {
  std::vector<IpAddress> out;
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return out;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (std::optional<IpAddress> a = IpAddress::FromSockaddr(i->ifa_addr)) out.push_back(*a);
  }
  freeifaddrs(list);
  return out;
}

// A name resolution on its own thread, so that a slow resolver neither holds a connection
// past its deadline nor Shutdown: the thread owns this state with the waiter, and whichever
// finishes last frees it.
struct Lookup {
  std::mutex mu;
  bool done = false;                                                 // GUARDED_BY(mu)
  Result<std::vector<IpAddress>> result = Internal("not resolved");  // GUARDED_BY(mu)
  int pipe[2] = {-1, -1};  // the thread writes a byte to [1] when done
  ~Lookup() {
    for (int fd : pipe) {
      if (fd >= 0) close(fd);
    }
  }
};

// A request head as read from the client.
struct Request {
  std::string method;
  std::string version;  // "HTTP/1.1"
  std::string host;     // lower case; an IPv6 literal without brackets
  uint16_t port = 0;
  std::string authority;  // host[:port] as forwarded in Host
  std::string path;       // origin form, for forwarded requests
  std::vector<std::pair<std::string, std::string>> headers;
  uint64_t content_length = 0;
  bool connect = false;
};

struct HttpError {
  int status;
  std::string text;
};

// Parses "host:port" or "[v6]:port" (port required unless `default_port`).
std::optional<HttpError> ParseAuthority(std::string_view a, uint16_t default_port, Request* r) {
  HttpError bad{400, "malformed request: invalid host or port"};
  std::string_view host, port;
  if (!a.empty() && a[0] == '[') {
    size_t close = a.find(']');
    if (close == std::string_view::npos) return bad;
    host = a.substr(1, close - 1);
    std::string_view rest = a.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return bad;
      port = rest.substr(1);
    }
    std::optional<IpAddress> ip = IpAddress::Parse(host);
    if (!ip || host.find('%') != std::string_view::npos) return bad;
  } else {
    size_t colon = a.rfind(':');
    host = a.substr(0, colon);
    if (colon != std::string_view::npos) port = a.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return bad;
  }
  if (host.empty()) return bad;
  if (port.empty()) {
    if (default_port == 0 || (!a.empty() && a.back() == ':')) return bad;
    r->port = default_port;
  } else {
    if (port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return bad;
    }
    int p = std::stoi(std::string(port));
    if (p > 65535) return bad;
    r->port = static_cast<uint16_t>(p);
  }
  if (std::optional<IpAddress> ip = IpAddress::Parse(host)) {
    r->host = ip->ToString();
  } else if (std::optional<std::string> name = NormalizeHostName(host)) {
    r->host = *name;
  } else {
    return bad;
  }
  std::string shown = r->host.find(':') != std::string::npos ? "[" + r->host + "]" : r->host;
  r->authority = (port.empty() || r->port == default_port) && !r->connect
                     ? shown
                     : fmt::format("{}:{}", shown, r->port);
  return std::nullopt;
}

std::optional<HttpError> ParseRequest(std::string_view head, Request* r) {
  HttpError bad{400, "malformed request"};
  std::vector<std::string_view> lines;
  while (!head.empty()) {
    size_t nl = head.find('\n');
    std::string_view line = head.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (nl == std::string_view::npos) break;
    head.remove_prefix(nl + 1);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.empty()) return bad;
  for (std::string_view line : lines) {
    for (char c : line) {
      if ((static_cast<unsigned char>(c) < 0x20 && c != '\t') || c == 0x7f) return bad;
    }
  }
  // Request line: METHOD SP target SP HTTP/1.x
  std::string_view rl = lines[0];
  size_t sp1 = rl.find(' ');
  size_t sp2 = sp1 == std::string_view::npos ? sp1 : rl.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || rl.find(' ', sp2 + 1) != std::string_view::npos) {
    return bad;
  }
  std::string_view method = rl.substr(0, sp1);
  std::string_view target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = rl.substr(sp2 + 1);
  if (!IsToken(method) || target.empty() || (version != "HTTP/1.1" && version != "HTTP/1.0")) {
    return bad;
  }
  r->method = std::string(method);
  r->version = std::string(version);
  for (size_t i = 1; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    size_t colon = line.find(':');
    // No obsolete line folding, no space before the colon (RFC 9112 5.1, 5.2).
    if (colon == std::string_view::npos || !IsToken(line.substr(0, colon))) return bad;
    r->headers.emplace_back(std::string(line.substr(0, colon)), Trim(line.substr(colon + 1)));
  }
  if (method == "CONNECT") {
    r->connect = true;
    return ParseAuthority(target, 0, r);
  }
  if (target[0] == '/' || target == "*") {
    return HttpError{400, "malformed request: a proxy needs an absolute URL (http://host/path)"};
  }
  std::string scheme = Lower(target.substr(0, std::min<size_t>(target.size(), 8)));
  if (scheme.rfind("https://", 0) == 0) {
    return HttpError{400, "malformed request: https:// URLs go through CONNECT"};
  }
  if (scheme.rfind("http://", 0) != 0) {
    return HttpError{400, "malformed request: only http:// URLs are proxied"};
  }
  std::string_view rest = target.substr(7);
  size_t end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  if (authority.find('@') != std::string_view::npos) {
    return HttpError{400, "malformed request: credentials in the URL are not supported"};
  }
  if (auto err = ParseAuthority(authority, 80, r)) return err;
  std::string_view path = end == std::string_view::npos ? "" : rest.substr(end);
  if (size_t hash = path.find('#'); hash != std::string_view::npos) path = path.substr(0, hash);
  r->path = path.empty() || path[0] != '/' ? "/" + std::string(path) : std::string(path);

  // Body framing: only Content-Length. A chunked body would need decoding here to know where
  // it ends, and forwarding bytes past the end would let a second request reach the same
  // server under another Host.
  std::optional<uint64_t> length;
  for (const auto& [name, value] : r->headers) {
    std::string n = Lower(name);
    if (n == "transfer-encoding") {
      return HttpError{411,
                       "request bodies must have a Content-Length (chunked bodies are "
                       "not supported by the egress proxy)"};
    }
    if (n != "content-length") continue;
    if (value.empty() || value.size() > 18 ||
        !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return bad;
    }
    uint64_t v = std::stoull(value);
    if (length && *length != v) return bad;
    length = v;
  }
  r->content_length = length.value_or(0);
  return std::nullopt;
}

std::string ForwardedHead(const Request& r) {
  std::vector<std::string> drop(std::begin(kHopByHop), std::end(kHopByHop));
  for (const auto& [name, value] : r.headers) {
    if (Lower(name) != "connection") continue;
    size_t start = 0;
    while (start <= value.size()) {
      size_t comma = value.find(',', start);
      std::string opt = Lower(Trim(std::string_view(value).substr(start, comma - start)));
      if (!opt.empty()) drop.push_back(opt);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  std::string out =
      fmt::format("{} {} {}\r\nHost: {}\r\n", r.method, r.path, r.version, r.authority);
  for (const auto& [name, value] : r.headers) {
    std::string n = Lower(name);
    if (n.rfind("proxy-", 0) == 0) continue;
    if (std::find(drop.begin(), drop.end(), n) != drop.end()) continue;
    out += name + ": " + value + "\r\n";
  }
  out += "Connection: close\r\n\r\n";
  return out;
}

// False when the start of `buf` cannot begin an HTTP/1 request line ("METHOD target
// HTTP/1.x"), so that binary garbage (a TLS handshake sent to the proxy) is answered at once.
bool PlausibleRequestLine(std::string_view buf) {
  size_t nl = buf.find('\n');
  std::string_view line = buf.substr(0, nl);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t sp = line.find(' ');
  std::string_view method = line.substr(0, sp);
  if (sp == std::string_view::npos) {
    return nl == std::string_view::npos && line.size() <= 32 &&
           std::all_of(method.begin(), method.end(), IsTokenChar);
  }
  if (!IsToken(method)) return false;
  if (nl == std::string_view::npos) return true;
  size_t sp2 = line.rfind(' ');
  return sp2 > sp && line.substr(sp2 + 1).rfind("HTTP/1.", 0) == 0;
}

enum class Wait { kReady, kTimeout, kStopped };

}  // namespace

struct EgressProxy::Connection {
  Connection(const EgressProxyOptions& o, int stop, std::shared_ptr<std::atomic<size_t>> l, int fd,
             EgressPolicy p, EgressCallback cb, Clock::time_point t)
      : options(o),
        stop_fd(stop),
        lookups(std::move(l)),
        client(fd),
        policy(std::move(p)),
        callback(std::move(cb)),
        start(t) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  const EgressProxyOptions& options;
  int stop_fd;
  std::shared_ptr<std::atomic<size_t>> lookups;
  int client;
  EgressPolicy policy;
  EgressCallback callback;
  Clock::time_point start;

  int upstream = -1;
  EgressEvent event;

  ~Connection() {
    if (upstream >= 0) close(upstream);
    if (client >= 0) close(client);
  }

  void Report(EgressEvent::Phase phase) {
    event.phase = phase;
    event.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
    if (callback) callback(event);
  }

  // Polls `fd` for `events` and the stop eventfd until `deadline`.
  Wait WaitFor(int fd, short events, Clock::time_point deadline, short* revents = nullptr) {
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Wait::kTimeout;
      pollfd p[2] = {{fd, events, 0}, {stop_fd, POLLIN, 0}};
      int n = poll(p, 2, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
      if (n < 0 && errno == EINTR) continue;
      if (p[1].revents & POLLIN) return Wait::kStopped;
      if (n > 0) {
        if (revents) *revents = p[0].revents;
        return Wait::kReady;
      }
    }
  }

  // Writes all of `data` to a socket; false on error, timeout or shutdown.
  bool SendAll(int fd, std::string_view data, milliseconds timeout) {
    Clock::time_point deadline = Clock::now() + timeout;
    while (!data.empty()) {
      ssize_t n = send(fd, data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        data.remove_prefix(static_cast<size_t>(n));
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (WaitFor(fd, POLLOUT, deadline) != Wait::kReady) return false;
      } else {
        return false;
      }
    }
    return true;
  }

  // Answers the client itself and lets it read the answer before the socket closes.
  void Answer(int status, const std::string& text) {
    event.status = status;
    if (!SendAll(client, ErrorResponse(status, text), kLinger)) return;
    shutdown(client, SHUT_WR);
    Clock::time_point deadline = Clock::now() + kLinger;
    char buf[4096];
    while (WaitFor(client, POLLIN, deadline) == Wait::kReady) {
      ssize_t n = recv(client, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    }
  }

  void Refuse(int status, const std::string& reason) {
    event.allowed = false;
    event.reason = reason;
    Answer(status, reason);
    Report(EgressEvent::Phase::kDecided);
  }

  // Reads the request head into `head` and any bytes after it into `rest`. nullopt with an
  // empty head when the client went away or the proxy is stopping (nobody to answer).
  std::optional<HttpError> ReadHead(std::string* head, std::string* rest) {
    Clock::time_point deadline = Clock::now() + options.header_timeout;
    std::string buf;
    char chunk[4096];
    size_t scanned = 0;
    for (;;) {
      // The head ends at an empty line (CRLF CRLF; a bare LF is accepted, RFC 9112 2.2).
      for (size_t i = scanned; i < buf.size(); ++i) {
        if (buf[i] != '\n') continue;
        size_t end = 0;
        if (i + 1 < buf.size() && buf[i + 1] == '\n') end = i + 2;
        if (i + 2 < buf.size() && buf[i + 1] == '\r' && buf[i + 2] == '\n') end = i + 3;
        if (end == 0) continue;
        if (end > options.max_header_bytes) break;
        *head = buf.substr(0, end);
        *rest = buf.substr(end);
        return std::nullopt;
      }
      scanned = buf.size() >= 2 ? buf.size() - 2 : 0;
      if (buf.size() > options.max_header_bytes) {
        return HttpError{
            431, fmt::format("request header larger than {} bytes", options.max_header_bytes)};
      }
      // Whatever is not an HTTP request is refused as soon as its first line says so.
      if (!PlausibleRequestLine(buf)) return HttpError{400, "malformed request"};
      Wait w = WaitFor(client, POLLIN, deadline);
      if (w == Wait::kStopped) return std::nullopt;
      if (w == Wait::kTimeout) {
        if (buf.empty()) return std::nullopt;
        return HttpError{408, "the request head did not arrive in time"};
      }
      ssize_t n = recv(client, chunk, sizeof(chunk), MSG_DONTWAIT);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) return std::nullopt;
      buf.append(chunk, static_cast<size_t>(n));
    }
  }

  // Resolves `host` on a thread of its own. kStopped when the proxy is stopping.
  Wait Resolve(const std::string& host, Result<std::vector<IpAddress>>* out) {
    auto lookup = std::make_shared<Lookup>();
    if (pipe2(lookup->pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      *out = Unavailable(strerror(errno));
      return Wait::kReady;
    }
    if (lookups->fetch_add(1) >= options.max_connections) {
      lookups->fetch_sub(1);
      *out = ResourceExhausted("too many name lookups in progress");
      return Wait::kReady;
    }
    try {
      std::thread([lookup, host, resolver = options.resolver, counter = lookups] {
        Result<std::vector<IpAddress>> r = resolver ? resolver(host) : GetAddrInfo(host);
        {
          std::lock_guard<std::mutex> lock(lookup->mu);
          lookup->result = std::move(r);
          lookup->done = true;
        }
        (void)!write(lookup->pipe[1], "x", 1);
        counter->fetch_sub(1);
      }).detach();
    } catch (const std::system_error& e) {
      lookups->fetch_sub(1);
      *out = Unavailable(e.what());
      return Wait::kReady;
    }
    Wait w = WaitFor(lookup->pipe[0], POLLIN, Clock::now() + options.resolve_timeout);
    if (w != Wait::kReady) return w;
    std::lock_guard<std::mutex> lock(lookup->mu);
    *out = std::move(lookup->result);
    return Wait::kReady;
  }

  // Connects to the first address that answers. Returns the error of the last attempt.
  std::optional<HttpError> ConnectUpstream(const std::vector<IpAddress>& addrs, uint16_t port) {
    std::string last = "no address";
    bool timed_out = false;
    for (const IpAddress& a : addrs) {
      sockaddr_storage ss{};
      socklen_t len;
      if (a.v6) {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        std::memcpy(&s6->sin6_addr, a.bytes.data(), 16);
        len = sizeof(sockaddr_in6);
      } else {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        std::memcpy(&s4->sin_addr, a.bytes.data(), 4);
        len = sizeof(sockaddr_in);
      }
      int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        last = strerror(errno);
        continue;
      }
      int rc = connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
      if (rc != 0 && errno == EINPROGRESS) {
        Wait w = WaitFor(fd, POLLOUT, Clock::now() + options.connect_timeout);
        if (w == Wait::kStopped) {
          close(fd);
          return HttpError{503, "the egress proxy is shutting down"};
        }
        if (w == Wait::kTimeout) {
          close(fd);
          timed_out = true;
          last = "timed out";
          continue;
        }
        int err = 0;
        socklen_t elen = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        rc = err == 0 ? 0 : -1;
        errno = err;
      }
      if (rc != 0) {
        last = strerror(errno);
        timed_out = false;
        close(fd);
        continue;
      }
      upstream = fd;
      event.address = a.ToString(port);
      return std::nullopt;
    }
    event.address.clear();
    if (timed_out) return HttpError{504, "upstream connect timed out"};
    return HttpError{502, "upstream connect failed: " + last};
  }

  // Moves bytes both ways until both sides are done (a tunnel) or the upstream is done (a
  // forwarded request, whose client may send at most `up_limit` bytes).
  void Relay(std::string pending_up, bool tunnel, uint64_t up_limit) {
    struct Dir {
      int from, to;
      std::string buf;
      size_t off = 0;
      bool eof = false;
      bool shut = false;
      uint64_t limit;
      uint64_t* count;
    };
    Dir up{client, upstream, std::move(pending_up), 0, false, false, up_limit, &event.bytes_up};
    Dir down{upstream, client, {}, 0, false, false, UINT64_MAX, &event.bytes_down};
    if (up.buf.size() > up.limit) up.buf.resize(up.limit);
    up.limit -= up.buf.size();
    Clock::time_point idle_deadline = Clock::now() + options.idle_timeout;
    std::vector<char> chunk(kRelayBuffer);
    auto finished = [&](const Dir& d) { return (d.eof || d.limit == 0) && d.off == d.buf.size(); };
    for (;;) {
      for (Dir* d : {&up, &down}) {
        if (d->eof && d->off == d->buf.size() && !d->shut && tunnel) {
          shutdown(d->to, SHUT_WR);
          d->shut = true;
        }
      }
      if (tunnel ? finished(up) && finished(down) : finished(down)) return;
      pollfd p[3];
      int n = 0;
      int idx[2][2] = {{-1, -1}, {-1, -1}};  // [dir][0 read, 1 write]
      Dir* dirs[2] = {&up, &down};
      for (int i = 0; i < 2; ++i) {
        Dir* d = dirs[i];
        if (d->off < d->buf.size()) {
          idx[i][1] = n;
          p[n++] = {d->to, POLLOUT, 0};
        } else if (!d->eof && (d->limit > 0 || (!tunnel && d == &up))) {
          // A forwarded request's client is still read once its body is sent, to notice it
          // going away (an origin that keeps the connection open would hold it otherwise).
          idx[i][0] = n;
          p[n++] = {d->from, POLLIN, 0};
        }
      }
      p[n++] = {stop_fd, POLLIN, 0};
      auto left = std::chrono::duration_cast<milliseconds>(idle_deadline - Clock::now()).count();
      if (left <= 0) {
        event.reason = "idle timeout";
        return;
      }
      int rc = poll(p, n, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
      if (rc < 0 && errno == EINTR) continue;
      if (p[n - 1].revents & POLLIN) {
        event.reason = "the egress proxy shut down";
        return;
      }
      if (rc <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        Dir* d = dirs[i];
        if (idx[i][1] >= 0 && p[idx[i][1]].revents) {
          ssize_t w = send(d->to, d->buf.data() + d->off, d->buf.size() - d->off,
                           MSG_DONTWAIT | MSG_NOSIGNAL);
          if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
          if (w < 0) {
            event.reason = d == &up ? "upstream closed the connection" : "client went away";
            return;
          }
          d->off += static_cast<size_t>(w);
          *d->count += static_cast<uint64_t>(w);
          if (d->off == d->buf.size()) d->buf.clear(), d->off = 0;
          idle_deadline = Clock::now() + options.idle_timeout;
        }
        if (idx[i][0] >= 0 && p[idx[i][0]].revents) {
          bool discard = d->limit == 0;  // bytes past a forwarded request's body
          size_t want = discard ? chunk.size()
                                : static_cast<size_t>(std::min<uint64_t>(chunk.size(), d->limit));
          ssize_t r = recv(d->from, chunk.data(), want, MSG_DONTWAIT);
          if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
          if (r < 0) {
            event.reason =
                d == &up ? "client reset the connection" : "upstream reset the connection";
            return;
          }
          if (r == 0) {
            d->eof = true;
            // A forwarded request's client that closes once the answer has begun is done with
            // it; before that, it may only have half-closed and still wait for the answer.
            if (!tunnel && d == &up && event.bytes_down > 0) return;
            continue;
          }
          if (discard) continue;
          d->buf.assign(chunk.data(), static_cast<size_t>(r));
          d->off = 0;
          d->limit -= static_cast<uint64_t>(r);
          idle_deadline = Clock::now() + options.idle_timeout;
        }
      }
    }
  }

  void Run() {
    std::string head, rest;
    if (std::optional<HttpError> err = ReadHead(&head, &rest)) {
      return Refuse(err->status, err->text);
    }
    if (head.empty()) return;  // nobody asked anything
    Request req;
    if (std::optional<HttpError> err = ParseRequest(head, &req)) {
      event.method = req.method;
      event.host = req.host;
      event.port = req.port;
      return Refuse(err->status, err->text);
    }
    event.method = req.method;
    event.host = req.host;
    event.port = req.port;
    std::string target = req.host.find(':') != std::string::npos
                             ? fmt::format("[{}]:{}", req.host, req.port)
                             : fmt::format("{}:{}", req.host, req.port);
    auto not_allowed = [&](const std::string& why) {
      return fmt::format("egress to {} is not allowed: {}", target, why);
    };
    if (req.port == 0) return Refuse(403, not_allowed("port 0"));
    if (policy.Match(req.host, req.port) == nullptr) {
      return Refuse(403, not_allowed("not in the sandbox's egress allow-list"));
    }
    std::vector<IpAddress> addrs;
    bool literal = false;
    if (std::optional<IpAddress> ip = IpAddress::Parse(req.host)) {
      addrs.push_back(*ip);
      literal = true;
    } else {
      Result<std::vector<IpAddress>> resolved = Internal("not resolved");
      Wait w = Resolve(req.host, &resolved);
      if (w == Wait::kStopped) return Refuse(503, "the egress proxy is shutting down");
      if (w == Wait::kTimeout) {
        return Refuse(504, fmt::format("resolving {} timed out", req.host));
      }
      if (!resolved.ok()) {
        if (resolved.status().code() == StatusCode::kResourceExhausted) {
          return Refuse(503, resolved.status().message());
        }
        return Refuse(502,
                      fmt::format("cannot resolve {}: {}", req.host, resolved.status().message()));
      }
      addrs = std::move(resolved).value();
    }
    std::vector<IpAddress> mine = options.host_addresses ? options.host_addresses() : GetIfAddrs();
    // Every address is checked, not only the first: a name that resolves to an internal
    // address among public ones is refused as a whole, and reported.
    for (const IpAddress& a : addrs) {
      if (std::optional<std::string> why = policy.CheckAddress(a, req.port, mine)) {
        event.address = a.ToString(req.port);
        std::string where = literal ? target : fmt::format("{} ({})", target, a.ToString());
        return Refuse(403, fmt::format("egress to {} is not allowed: {}", where, *why));
      }
    }
    event.allowed = true;
    event.address = addrs.front().ToString(req.port);
    Report(EgressEvent::Phase::kDecided);

    if (std::optional<HttpError> err = ConnectUpstream(addrs, req.port)) {
      event.reason = err->text;
      Answer(err->status, err->text);
      return Report(EgressEvent::Phase::kClosed);
    }
    if (req.connect) {
      event.status = 200;
      if (!SendAll(client, "HTTP/1.1 200 Connection established\r\n\r\n", options.idle_timeout)) {
        event.reason = "client went away";
        return Report(EgressEvent::Phase::kClosed);
      }
      Relay(std::move(rest), true, UINT64_MAX);
    } else {
      event.status = 0;
      std::string fwd = ForwardedHead(req);
      if (!SendAll(upstream, fwd, options.idle_timeout)) {
        event.reason = "upstream closed the connection";
        Answer(502, "upstream closed the connection");
        return Report(EgressEvent::Phase::kClosed);
      }
      event.bytes_up += fwd.size();
      Relay(std::move(rest), false, req.content_length);
    }
    Report(EgressEvent::Phase::kClosed);
  }
};

EgressProxy::EgressProxy(EgressProxyOptions options)
    : options_(std::move(options)),
      stop_fd_(eventfd(0, EFD_CLOEXEC)),
      lookups_(std::make_shared<std::atomic<size_t>>(0)) {}

EgressProxy::~EgressProxy() {
  Shutdown();
  if (stop_fd_ >= 0) close(stop_fd_);
}

void EgressProxy::Serve(int client_fd, const EgressPolicy& policy, EgressCallback callback) {
  Serve(client_fd, policy, std::move(callback), std::string());
}

void EgressProxy::Serve(int client_fd, const EgressPolicy& policy, EgressCallback callback,
                        const std::string& owner) {
  Clock::time_point start = Clock::now();
  if (client_fd < 0) return;
  fcntl(client_fd, F_SETFD, FD_CLOEXEC);
  std::unique_lock<std::mutex> lock(mu_);
  Reap(lock);
  std::string why;
  if (stopping_ || stop_fd_ < 0) {
    why = "the egress proxy is shutting down";
  } else if (active_ >= options_.max_connections) {
    why = fmt::format("too many connections (at most {})", options_.max_connections);
  } else if (options_.max_connections_per_owner > 0 &&
             owners_[owner] >= options_.max_connections_per_owner) {
    why = fmt::format("too many connections from this sandbox (at most {})",
                      options_.max_connections_per_owner);
  }
  if (!why.empty()) {
    if (owners_.count(owner) && owners_[owner] == 0) owners_.erase(owner);
    // Reported by the reporter thread, never on the caller's: the caller (a driver's
    // thread) may be one the callback's locks wait for.
    if (callback && !stopping_ && reports_.size() < kMaxQueuedReports) {
      EgressEvent e;
      e.reason = why;
      e.status = 503;
      e.duration = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
      reports_.emplace_back(std::move(callback), std::move(e));
      if (!reporter_.joinable()) {
        try {
          reporter_ = std::thread([this] { ReportLoop(); });
        } catch (const std::system_error&) {
          reports_.clear();
        }
      }
      reports_cv_.notify_one();
    }
    lock.unlock();
    // The answer fits a socket buffer; a client that is not reading loses it.
    std::string answer = ErrorResponse(503, why);
    (void)!send(client_fd, answer.data(), answer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    shutdown(client_fd, SHUT_WR);
    close(client_fd);
    return;
  }
  auto conn = std::make_unique<Connection>(options_, stop_fd_, lookups_, client_fd, policy,
                                           std::move(callback), start);
  ++active_;
  ++owners_[owner];
  threads_.emplace_back();
  auto it = std::prev(threads_.end());
  try {
    *it = std::thread([this, it, owner, conn = std::move(conn)]() mutable {
      conn->Run();
      conn.reset();  // closes the sockets before the slot is given back
      std::lock_guard<std::mutex> guard(mu_);
      --active_;
      if (--owners_[owner] == 0) owners_.erase(owner);
      done_.push_back(it);
    });
  } catch (const std::system_error&) {
    // No thread: the lambda (and the connection with the client socket) is gone already.
    threads_.erase(it);
    --active_;
    if (--owners_[owner] == 0) owners_.erase(owner);
  }
}

void EgressProxy::ReportLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    reports_cv_.wait(lock, [&] { return stopping_ || !reports_.empty(); });
    if (reports_.empty()) return;  // stopping, and nothing left to report
    auto [callback, event] = std::move(reports_.front());
    reports_.pop_front();
    lock.unlock();
    callback(event);
    lock.lock();
  }
}

void EgressProxy::Reap(std::unique_lock<std::mutex>& lock) {
  (void)lock;
  for (auto it : done_) {
    it->join();  // the thread is past its last use of the proxy
    threads_.erase(it);
  }
  done_.clear();
}

void EgressProxy::Shutdown() {
  std::list<std::thread> threads;
  std::thread reporter;
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    if (stop_fd_ >= 0) {
      uint64_t one = 1;
      (void)!write(stop_fd_, &one, sizeof(one));
    }
    threads = std::move(threads_);
    threads_.clear();
    reporter = std::move(reporter_);
    reports_cv_.notify_all();
  }
  for (auto& t : threads) {
    if (t.joinable()) t.join();
  }
  if (reporter.joinable()) reporter.join();  // after it reported what was queued
  std::lock_guard<std::mutex> lock(mu_);
  done_.clear();  // iterators into `threads`, all joined
}

Result<std::vector<IpAddress>> EgressProxy::CheckDestination(const EgressPolicy& policy,
                                                             const std::string& host,
                                                             uint16_t port) const {
  const EgressProxyOptions& o = options_;
  std::vector<IpAddress> addrs;
  if (std::optional<IpAddress> ip = IpAddress::Parse(host)) {
    addrs.push_back(*ip);
  } else {
    ASSIGN_OR_RETURN(addrs, o.resolver ? o.resolver(host) : GetAddrInfo(host));
  }
  std::vector<IpAddress> mine = o.host_addresses ? o.host_addresses() : GetIfAddrs();
  for (const IpAddress& a : addrs) {
    if (std::optional<std::string> why = policy.CheckAddress(a, port, mine)) {
      return PermissionDenied(
          fmt::format("{}:{} ({}) is not allowed: {}", host, port, a.ToString(), *why));
    }
  }
  return addrs;
}

size_t EgressProxy::active_connections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return active_;
}

}  // namespace agentd::sandbox::egress

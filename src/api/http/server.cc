#include "api/http/server.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <thread>

#include "common/thread_pool.h"

namespace agentd::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

std::string Request::Header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

const std::string* Request::Query(const std::string& name) const {
  auto it = query.find(name);
  return it == query.end() ? nullptr : &it->second;
}

bool PercentDecode(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;
      auto hex = [](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        if (h >= 'A' && h <= 'F') return h - 'A' + 10;
        return -1;
      };
      int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out->push_back(c);
    }
  }
  return true;
}

namespace {

// The same shape as the API's problems (api/api.cc): type, title, status, detail, code.
std::string ProblemBody(int status, std::string_view code, std::string_view title,
                        std::string_view detail) {
  // Built by hand: this layer does not depend on the JSON library's types.
  auto esc = [](std::string_view s) {
    std::string o;
    for (char c : s) {
      if (c == '"' || c == '\\') o.push_back('\\');
      if (static_cast<unsigned char>(c) < 0x20) continue;
      o.push_back(c);
    }
    return o;
  };
  return fmt::format(
      R"({{"type":"urn:agentd:problem:{}","title":"{}","status":{},"detail":"{}","code":"{}"}})",
      code, esc(title), status, esc(detail), code);
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  Handler handler;
  net::io_context ioc;
  tcp::acceptor acceptor{ioc};
  std::vector<std::thread> io_threads;
  std::unique_ptr<ThreadPool> pool;
  std::atomic<bool> stopping{false};
  uint16_t bound_port = 0;
  std::unique_ptr<net::executor_work_guard<net::io_context::executor_type>> work;

  Impl(ServerOptions o, Handler h) : options(std::move(o)), handler(std::move(h)) {}
  void DoAccept();
};

namespace {

class Connection : public std::enable_shared_from_this<Connection>, public Exchange {
 public:
  Connection(tcp::socket socket, Server::Impl* server)
      : stream_(std::move(socket)), server_(server) {
    // Beast reads at most the buffer's free capacity (512 bytes when it is empty): without
    // room, a 20 KiB request body would take forty reads.
    buffer_.reserve(kReadBufferBytes);
    struct timeval tv{30, 0};  // a stuck client must not hold a handler thread forever
    setsockopt(stream_.socket().native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(stream_.socket().native_handle(), IPPROTO_TCP, 1 /*TCP_NODELAY*/, &one,
               sizeof(one));
  }

  void Start() { DoRead(); }

  // Exchange:
  void Respond(Response r) override {
    if (responded_) return;
    responded_ = true;
    bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(r.status), version_};
    if (!r.content_type.empty()) res.set(bhttp::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) res.set(k, v);
    res.keep_alive(keep_alive_);
    res.body() = std::move(r.body);
    res.prepare_payload();
    beast::error_code ec;
    bhttp::write(stream_.socket(), res, ec);
    if (ec) keep_alive_ = false;
  }

  bool StartStream(int status, std::string content_type,
                   std::vector<std::pair<std::string, std::string>> headers) override {
    if (responded_) return false;
    responded_ = true;
    streaming_ = true;
    bhttp::response<bhttp::empty_body> res{static_cast<bhttp::status>(status), version_};
    res.set(bhttp::field::content_type, content_type);
    res.set(bhttp::field::cache_control, "no-cache");
    for (auto& [k, v] : headers) res.set(k, v);
    res.chunked(true);
    res.keep_alive(keep_alive_);
    bhttp::response_serializer<bhttp::empty_body> sr{res};
    beast::error_code ec;
    bhttp::write_header(stream_.socket(), sr, ec);
    if (ec) {
      peer_gone_ = true;
      keep_alive_ = false;
    }
    return !peer_gone_;
  }

  bool Write(std::string_view chunk) override {
    if (peer_gone_ || chunk.empty()) return !peer_gone_;
    beast::error_code ec;
    net::write(stream_.socket(), bhttp::make_chunk(net::const_buffer(chunk.data(), chunk.size())),
               ec);
    if (ec) {
      peer_gone_ = true;
      keep_alive_ = false;
    }
    return !peer_gone_;
  }

  void EndStream() override {
    if (!streaming_ || peer_gone_) return;
    beast::error_code ec;
    net::write(stream_.socket(), bhttp::make_chunk_last(), ec);
    if (ec) keep_alive_ = false;
    stream_ended_ = !ec;
  }

  bool Stopping() const override { return server_->stopping.load(); }

 private:
  void DoRead() {
    parser_.emplace();
    body_limit_ = server_->options.max_body_bytes;
    parser_->body_limit(body_limit_);
    parser_->header_limit(64 * 1024);
    stream_.expires_after(std::chrono::seconds(75));
    if (!server_->options.body_limit_for) {
      bhttp::async_read(stream_, buffer_, *parser_,
                        beast::bind_front_handler(&Connection::OnRead, shared_from_this()));
      return;
    }
    // The route decides how large a body may be: read the header first (a Content-Length is
    // checked against the limit when the header is parsed, so none applies until then).
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    bhttp::async_read_header(
        stream_, buffer_, *parser_,
        beast::bind_front_handler(&Connection::OnHeader, shared_from_this()));
  }

  void OnHeader(beast::error_code ec, size_t) {
    if (ec) return OnRead(ec, 0);
    const auto& h = parser_->get();
    body_limit_ = server_->options.body_limit_for(
        std::string_view(h.method_string().data(), h.method_string().size()),
        std::string_view(h.target().data(), h.target().size()));
    if (auto length = parser_->content_length(); length && *length > body_limit_) {
      return OnRead(bhttp::error::body_limit, 0);
    }
    parser_->body_limit(body_limit_);
    bhttp::async_read(stream_, buffer_, *parser_,
                      beast::bind_front_handler(&Connection::OnRead, shared_from_this()));
  }

  void OnRead(beast::error_code ec, size_t) {
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::operation_aborted || ec == net::error::eof ||
        ec == net::error::connection_reset) {
      Close();
      return;
    }
    stream_.expires_never();
    if (ec) {
      int status = ec == bhttp::error::body_limit ? 413 : 400;
      std::string detail =
          status == 413 ? fmt::format("request body larger than {} bytes", body_limit_)
                        : fmt::format("malformed HTTP request: {}", ec.message());
      bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(status), 11};
      res.set(bhttp::field::content_type, "application/problem+json");
      res.body() = ProblemBody(status, status == 413 ? "payload_too_large" : "invalid_argument",
                               status == 413 ? "Payload Too Large" : "Bad Request", detail);
      res.keep_alive(false);
      res.prepare_payload();
      beast::error_code wec;
      bhttp::write(stream_.socket(), res, wec);
      Close();
      return;
    }
    auto self = shared_from_this();
    server_->pool->Submit([self] { self->Handle(); });
  }

  void Handle() {
    auto msg = parser_->release();
    version_ = msg.version();
    keep_alive_ = msg.keep_alive();
    responded_ = streaming_ = stream_ended_ = peer_gone_ = false;
    Request req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    std::string_view target(req.target);
    auto qpos = target.find('?');
    bool ok = PercentDecode(target.substr(0, qpos), &req.path);
    if (ok && qpos != std::string_view::npos) {
      std::string_view q = target.substr(qpos + 1);
      while (!q.empty()) {
        auto amp = q.find('&');
        std::string_view kv = q.substr(0, amp);
        auto eq = kv.find('=');
        std::string k, v;
        std::string rawv(eq == std::string_view::npos ? "" : kv.substr(eq + 1));
        for (auto& ch : rawv) if (ch == '+') ch = ' ';
        if (!PercentDecode(kv.substr(0, eq), &k) || !PercentDecode(rawv, &v)) {
          ok = false;
          break;
        }
        if (!k.empty()) req.query[k] = v;
        if (amp == std::string_view::npos) break;
        q.remove_prefix(amp + 1);
      }
    }
    for (const auto& f : msg) {
      std::string name(f.name_string());
      for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      req.headers[name] = std::string(f.value());
    }
    req.body = std::move(msg.body());
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) req.remote = ep.address().to_string();

    if (!ok) {
      Respond({400, "application/problem+json",
               ProblemBody(400, "invalid_argument", "Bad Request",
                           "malformed percent-encoding in the URL"), {}});
    } else {
      try {
        server_->handler(req, *this);
      } catch (const std::exception& e) {
        spdlog::error("handler threw: {}", e.what());
        Respond({500, "application/problem+json",
                 ProblemBody(500, "internal", "Internal Server Error", "internal error"), {}});
      }
      if (!responded_) {
        Respond({500, "application/problem+json",
                 ProblemBody(500, "internal", "Internal Server Error",
                             "handler sent no response"), {}});
      }
    }
    // A stream that was ended with its last chunk leaves the connection reusable; one the
    // handler abandoned midway does not.
    if (streaming_ && !stream_ended_) keep_alive_ = false;
    if (!keep_alive_ || server_->stopping.load()) {
      Close();
      return;
    }
    auto self = shared_from_this();
    net::post(stream_.get_executor(), [self] { self->DoRead(); });
  }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  beast::tcp_stream stream_;
  static constexpr size_t kReadBufferBytes = 16 * 1024;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  size_t body_limit_ = 0;  // of the request being read
  Server::Impl* server_;
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool responded_ = false;
  bool streaming_ = false;
  bool stream_ended_ = false;
  bool peer_gone_ = false;
};

}  // namespace

void Server::Impl::DoAccept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      spdlog::warn("accept failed: {}", ec.message());
    } else {
      std::make_shared<Connection>(std::move(socket), this)->Start();
    }
    if (acceptor.is_open()) DoAccept();
  });
}

Server::Server(ServerOptions options, Handler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}

Server::~Server() { Stop(); }

Status Server::Start() {
  auto& o = impl_->options;
  beast::error_code ec;
  auto addr = net::ip::make_address(o.host, ec);
  if (ec) return InvalidArgument(fmt::format("listen address '{}' is not an IP address", o.host));
  tcp::endpoint ep(addr, o.port);
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) {
    return Unavailable(fmt::format("cannot listen on {}:{}: {}", o.host, o.port, ec.message()));
  }
  impl_->bound_port = impl_->acceptor.local_endpoint().port();
  impl_->pool = std::make_unique<ThreadPool>(o.pool_name, 0, o.max_handler_threads);
  impl_->work = std::make_unique<net::executor_work_guard<net::io_context::executor_type>>(
      impl_->ioc.get_executor());
  impl_->DoAccept();
  for (int i = 0; i < std::max(1, o.io_threads); ++i) {
    impl_->io_threads.emplace_back([this] { impl_->ioc.run(); });
  }
  return Status::OK();
}

uint16_t Server::port() const { return impl_->bound_port; }

void Server::StopAccepting() {
  net::post(impl_->ioc, [this] {
    beast::error_code ec;
    impl_->acceptor.close(ec);
  });
}

void Server::Stop() {
  if (impl_->io_threads.empty()) return;
  impl_->stopping = true;
  StopAccepting();
  if (impl_->pool) impl_->pool->Shutdown();
  impl_->work.reset();
  impl_->ioc.stop();
  for (auto& t : impl_->io_threads) t.join();
  impl_->io_threads.clear();
  // The io threads are gone, so the acceptor can be closed here even if the posted close
  // never ran.
  beast::error_code ec;
  impl_->acceptor.close(ec);
}

}  // namespace agentd::http

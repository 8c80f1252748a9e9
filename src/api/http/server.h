// A small HTTP/1.1 server on Boost.Beast, shared by the API and the test fakes.
//
// Threading (docs/threading.md): `io_threads` threads run the Asio event loop and only
// accept, read requests and wait on idle keep-alive connections. Each parsed request is
// handed to the "http" blocking pool, whose thread runs the Handler and writes the response
// synchronously on the socket (no other operation is outstanding on it then), so handlers
// may block (SQLite reads, waiting for a turn, streaming Server-Sent Events).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace agentd::http {

struct Request {
  std::string method;
  std::string target;  // as sent: path plus query
  std::string path;    // percent-decoded path without the query
  std::map<std::string, std::string> query;    // decoded
  std::map<std::string, std::string> headers;  // keys lower-cased
  std::string body;
  std::string remote;

  std::string Header(const std::string& lower_name) const;
  const std::string* Query(const std::string& name) const;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// The reply side of one request. Used only from the thread running the handler.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual void Respond(Response response) = 0;
  // Starts a chunked response; Write() sends one chunk and returns false once the peer is
  // gone. EndStream() sends the last chunk.
  virtual bool StartStream(int status, std::string content_type,
                           std::vector<std::pair<std::string, std::string>> headers) = 0;
  virtual bool Write(std::string_view chunk) = 0;
  virtual void EndStream() = 0;
  // True once the server is shutting down: long-running handlers should finish.
  virtual bool Stopping() const = 0;
};

using Handler = std::function<void(const Request&, Exchange&)>;

struct ServerOptions {
  std::string host = "127.0.0.1";  // loopback unless configured otherwise
  uint16_t port = 0;               // 0 picks a free port (see port())
  int io_threads = 2;              // event-loop threads
  size_t max_body_bytes = 1u << 20;  // larger request bodies get 413
  // When set, the body limit of a request from its method and target (path and query),
  // instead of max_body_bytes.
  std::function<size_t(std::string_view method, std::string_view target)> body_limit_for;
  size_t max_handler_threads = 1024;  // upper bound of the handler pool
  std::string pool_name = "http";
};

class Server {
 public:
  Server(ServerOptions options, Handler handler);
  ~Server();

  // Binds and starts the event loop. Fails when the address cannot be bound.
  Status Start();
  // The bound port (after Start()).
  uint16_t port() const;
  // Stops accepting new connections; requests already read still run.
  void StopAccepting();
  // Stops accepting, tells streaming handlers to finish, waits for handlers, closes all.
  void Stop();

  struct Impl;  // public so the connection code in server.cc can reach it

 private:
  std::unique_ptr<Impl> impl_;
};

// Percent-decodes a URL component; '+' is kept as is. Returns false on a bad escape.
bool PercentDecode(std::string_view in, std::string* out);

}  // namespace agentd::http

// The sandbox layer: where a session's tools run (ARCHITECTURE.md, "Isolation").
//
// A SandboxDriver makes Sandboxes; a Sandbox belongs to one session and runs that session's
// commands and long-lived tool processes (MCP stdio servers) confined to its workspace, a
// host directory that only this sandbox may write. Drivers live in subfolders (bwrap/,
// gvisor/); the interface does not assume namespaces, so a microVM driver can implement it
// (a VM with a virtio-fs workspace and a vsock agent: docs/security.md).
//
// Thread-safe: one Sandbox may run several commands at once.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace agentd::sandbox {

// Per-sandbox resource limits. 0 means "the driver's default".
struct Limits {
  int64_t memory_mb = 0;   // memory of every process in the sandbox together
  double cpus = 0;         // CPU time per wall second (1.5 = one and a half cores)
  int64_t pids = 0;        // processes and threads together
  int64_t disk_mb = 0;     // workspace size
  int64_t timeout_ms = 0;  // wall clock per command
};

// What a driver can enforce on this host, found at start-up; reported in /readyz and logs.
struct Capabilities {
  std::string driver;
  bool available = false;
  std::string unavailable_reason;  // when !available
  // Each enforced mechanism by name ("user_namespace", "seccomp", "landlock",
  // "memory:cgroup_v1", "disk:tmpfs", ...) and each missing one with its reason.
  std::vector<std::string> enforced;
  std::map<std::string, std::string> not_enforced;

  bool Enforces(std::string_view mechanism) const {
    return std::find(enforced.begin(), enforced.end(), mechanism) != enforced.end();
  }
};

struct ExecRequest {
  std::string command;  // run by /bin/sh -c, with the workspace as working directory
  std::string stdin_data;
  std::map<std::string, std::string> env;  // added to the command's environment
  std::chrono::milliseconds timeout{0};  // 0: the sandbox's limit
  size_t max_output_bytes = 64 * 1024;   // per stream; the rest is dropped
  // Polled while the command runs; returning true kills it (ExecResult.cancelled).
  std::function<bool()> should_abort;
};

struct ExecResult {
  std::string stdout_data;
  std::string stderr_data;
  int exit_code = 0;       // 128 + signal when killed by one
  bool timed_out = false;  // killed at the wall-clock limit
  bool truncated = false;  // an output stream went over max_output_bytes
  bool oom_killed = false; // killed at the memory limit
  bool cancelled = false;  // killed because should_abort said so
};

// A long-lived process inside the sandbox (an MCP stdio server). Its stdin/stdout belong to
// the caller; closing or destroying the handle kills the process.
class Process {
 public:
  virtual ~Process() = default;
  virtual int stdin_fd() const = 0;   // write end; the caller writes requests
  virtual int stdout_fd() const = 0;  // read end; the caller reads responses
  // Whatever the process wrote to stderr so far (bounded); for error messages.
  virtual std::string StderrTail() const = 0;
  // True while running; when it has exited, `exit_code` says how (128 + signal if killed).
  virtual bool Running(int* exit_code) = 0;
  virtual void Kill() = 0;
  // Closes the process's stdin, so that it reads end-of-file (how an MCP client asks a
  // stdio server to exit). stdin_fd() is -1 afterwards; idempotent.
  virtual void CloseStdin() = 0;
};

struct SpawnRequest {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
};

class Sandbox {
 public:
  virtual ~Sandbox() = default;
  // The host directory that is the sandbox's workspace (files tools open with openat2).
  virtual const std::string& workspace() const = 0;
  // The workspace as seen inside the sandbox ("/workspace").
  static constexpr const char* kInsidePath = "/workspace";
  // Runs one command to completion. Blocking. A command that breaks a limit is stopped and
  // reported in ExecResult; a non-OK Status means the sandbox itself failed.
  virtual Result<ExecResult> Exec(const ExecRequest& req) = 0;
  virtual Result<std::unique_ptr<Process>> Spawn(const SpawnRequest& req) = 0;
  // Stops every process in the sandbox (the workspace stays).
  virtual void Shutdown() = 0;
  // How many times the memory limit killed a process in this sandbox so far.
  virtual int64_t OomKills() const = 0;
};

struct SandboxSpec {
  std::string id;  // unique per sandbox; names cgroups
  // A host folder the driver owns for this sandbox, created by the caller: the driver may
  // mount the workspace's filesystem on it, and the workspace is `root/workspace`. A root
  // left by an earlier run (agentd was killed) is taken over with its files.
  std::string root;
  Limits limits;
  // Host paths made visible read-only inside the sandbox at the same path (npm packages of
  // MCP servers, say).
  std::vector<std::string> read_only_paths;
  // When set, programs in the sandbox reach the network through an HTTP proxy at
  // 127.0.0.1:3128 inside it (HTTP_PROXY, HTTPS_PROXY and ALL_PROXY say so), and each
  // connection to that address is handed here (the callee owns the descriptor), to be served
  // outside the sandbox under the agent's egress policy. Unset: no network at all. Called on
  // a driver thread; it must not block.
  std::function<void(int fd)> on_egress_connection;
};

// Where programs in a sandbox find the egress proxy.
inline constexpr int kEgressProxyPort = 3128;

class SandboxDriver {
 public:
  virtual ~SandboxDriver() = default;
  virtual const Capabilities& capabilities() const = 0;
  // Prepares the sandbox's root and workspace; its processes start with the first Exec or
  // Spawn, so the caller may fill the workspace (a restore) in between.
  virtual Result<std::unique_ptr<Sandbox>> Create(const SandboxSpec& spec) = 0;
  // Removes a sandbox's root and everything in it, including a filesystem the driver
  // mounted there. The sandbox must be destroyed first; its files are gone afterwards.
  virtual Status Discard(const std::string& root) = 0;

  // Checkpoints, for drivers whose capabilities() list "checkpoint" (the others answer
  // FailedPrecondition): a sandbox's live processes kept across its stop and start.
  //
  // Saves running sandbox `box` (made by this driver) into the folder `image_dir` and stops
  // it; its processes live on in the image, and its Process handles report them killed.
  virtual Status Hibernate(Sandbox& box, const std::string& image_dir);
  // Starts a sandbox from an image Hibernate wrote, on `spec` (whose root holds the files
  // the sandbox had). Its live processes keep running, detached until Reattach.
  virtual Result<std::unique_ptr<Sandbox>> Resume(const SandboxSpec& spec,
                                                  const std::string& image_dir);
  // A handle on live process `id` of a resumed sandbox (an id ProcessId gave before the
  // sandbox was hibernated).
  virtual Result<std::unique_ptr<Process>> Reattach(Sandbox& box, int64_t id);
  // The id of a process this driver spawned, stable across Hibernate and Resume; -1 when
  // the driver has none.
  virtual int64_t ProcessId(const Process& process) const;
};

}  // namespace agentd::sandbox

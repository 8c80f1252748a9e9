// The wire between a driver (in agentd) and the supervisor inside a sandbox
// (init/sandbox_init.cc): one SOCK_SEQPACKET socket, one JSON object per message, and file
// descriptors passed alongside with SCM_RIGHTS.
//
// driver -> supervisor
//   {"op":"spawn","id":N,"argv":[...],"env":{...}}  -> {"op":"spawned","id":N} + fds
//        [stdin (write end), stdout (read end), stderr (read end)], or {"op":"error",...}
//   {"op":"kill","id":N}   stops the process and everything it started
// supervisor -> driver
//   {"op":"ready","landlock":ABI}           once, after start-up (ABI 0: not enforced)
//   {"op":"exit","id":N,"code":C}           C = exit status, or 128 + signal
//   {"op":"connection","id":0} + fd         a program connected to the egress proxy address
//
// When a spawned process exits, everything it started is killed too, so no stray process
// outlives its command or keeps its pipes open. When the socket closes (agentd went away),
// the supervisor kills everything and exits, which ends the sandbox.
//
// Only the C library is used here, so the supervisor stays small.
#pragma once

#include <string>
#include <vector>

namespace agentd::sandbox {

inline constexpr size_t kMaxSupervisorMessage = 256 * 1024;
inline constexpr int kMaxPassedFds = 3;

// Sends one message with `fds` (may be empty). Returns false and sets errno on failure.
bool SendMessage(int sock, const std::string& text, const std::vector<int>& fds);
// Receives one message; the received fds are owned by the caller. Returns false on EOF
// (errno 0) or error (errno set). Messages over the limit are an error (EMSGSIZE).
bool ReceiveMessage(int sock, std::string* text, std::vector<int>* fds);

}  // namespace agentd::sandbox

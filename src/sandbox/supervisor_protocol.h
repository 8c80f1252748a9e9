// The wire between a driver (in agentd) and the supervisor inside a sandbox
// (init/sandbox_init.cc): one SOCK_SEQPACKET socket, one JSON object per message, and file
// descriptors passed alongside with SCM_RIGHTS.
//
// driver -> supervisor
//   {"op":"spawn","id":N,"argv":[...],"env":{...}}  -> {"op":"spawned","id":N} + fds
//        [stdin (write end), stdout (read end), stderr (read end)], or {"op":"error",...}
//   {"op":"kill","id":N}   stops the process and everything it started
//   {"op":"attach","id":N,"proxy"?:PORT}    first and only once, to a supervisor started
//        with --attach, after the workspace is mounted -> {"op":"attached","id":N,
//        "landlock":ABI}, or "fatal"
// supervisor -> driver
//   {"op":"ready","landlock":ABI}           once, after start-up (ABI 0: not enforced)
//   {"op":"ready","attach":true} + fd       instead, with --attach: the fd is the sandbox's
//        mount namespace, where the driver mounts the workspace before "attach"
//   {"op":"exit","id":N,"code":C}           C = exit status, or 128 + signal
//   {"op":"connection","id":0} + fd         a program connected to the egress proxy address
//
// When a spawned process exits, everything it started is killed too, so no stray process
// outlives its command or keeps its pipes open. When the socket closes (agentd went away),
// the supervisor kills everything and exits, which ends the sandbox.
//
// A second mode ("stdio", used by the gvisor driver, whose sandbox cannot receive host
// descriptors) carries everything over one byte stream each way, the supervisor's stdin and
// stdout: frames of a 16-byte header (u32 payload length, u32 kind, i64 process id; little
// endian) and the payload. Pipes of spawned processes stay inside the sandbox; their bytes
// travel in kStdin/kStdout/kStderr frames under a credit window per process and direction
// (kStdioWindow unacknowledged bytes), so a process that does not read its input, or a
// caller that does not read its output, stalls only that process.
//
// driver -> supervisor
//   kSpawn  {"argv":[...],"env":{...}}   -> kSpawned, or kError "message"
//   kStdin  bytes (at most the window)   -> kAckIn u64 once written to the process
//   kStdinEof, kKill                     close the process's stdin; stop it and its tree
//   kAckOut u64                          the driver took that many output bytes
//   kResync                              after a restore: the supervisor forgets the old
//        stream, answers with the kSync marker, then kReady listing the live processes;
//        their output is dropped until the driver sends kAttach for them
// supervisor -> driver
//   kReady  {"landlock":ABI,"seccomp":bool,"live":[ids]}   after start-up and each resync
//   kStdout, kStderr bytes; kEof u8 (1 stdout, 2 stderr); kExit i32 (status or 128+signal)
//   kFatal "message" (start-up failed)
//   kConnection  a program connected to the egress proxy address (--proxy PORT); the
//        connection then travels like a process with that (negative) id: kStdout/kEof for
//        its bytes out, kStdin/kStdinEof for the bytes the driver sends back
//
// Only the C library is used here, so the supervisor stays small.
#pragma once

#include <stdint.h>

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

// The stdio mode.
enum FrameKind : uint32_t {
  kSpawn = 1, kStdin, kStdinEof, kKill, kAckOut, kResync, kAttach,
  kReady = 64, kSpawned, kError, kStdout, kStderr, kEof, kExit, kAckIn, kSync, kFatal, kConnection,
};
inline constexpr size_t kFrameHeader = 16;
inline constexpr size_t kMaxFramePayload = 256 * 1024;
inline constexpr size_t kStdioWindow = 256 * 1024;
inline constexpr size_t kMaxDataChunk = 32 * 1024;
// The whole kSync frame; a driver resynchronising after a restore skips to just after it.
inline constexpr char kSyncPayload[] = "agentd-stdio-resync-7f3c9a1e";

struct Frame {
  uint32_t kind = 0;
  int64_t id = 0;
  std::string payload;
};

// Appends one encoded frame to `out`.
void AppendFrame(std::string* out, uint32_t kind, int64_t id, const char* data, size_t size);
inline void AppendFrame(std::string* out, uint32_t kind, int64_t id, const std::string& data = {}) {
  AppendFrame(out, kind, id, data.data(), data.size());
}
// Takes one whole frame off the front of `in`. Returns 1 with a frame, 0 when `in` holds
// only part of one, -1 when the stream is corrupt (a length over the limit).
int TakeFrame(std::string* in, Frame* frame);
std::string EncodeU64(uint64_t v);
uint64_t DecodeU64(const std::string& payload);  // 0 when too short

}  // namespace agentd::sandbox

// How a bwrap sandbox's first process comes to be: the steps between fork and `exec bwrap`,
// shared by the two ways the driver starts one.
//
// - Directly: the driver forks, the child joins the sandbox's cgroups, then ExecBwrap.
// - From a spare (spare_pool.h): a process the driver forked earlier, which joined a fresh
//   set of cgroups then and became `agentd-sandbox-init --launch FD` (RunSpare), waits on
//   a SOCK_SEQPACKET socket. Joining a cgroup is the slow part of a start (the kernel waits
//   for an RCU grace period, ~15 ms, when cgroups have not been written to for a while), so
//   a spare takes it off the path. The driver sends the spare one order (SendOrder): bwrap's
//   argv and environment, the uid to become, and bwrap's descriptors; the spare then does
//   the same ExecBwrap as the direct child. A warm spare (as root) gets its order at once,
//   for a sandbox with no workspace yet, and waits as a started sandbox instead.
//
// The order is one message: the text "<uid or ->\0<argc>\0<argv...>\0<env...>\0" and the
// kBwrapFds descriptors (SCM_RIGHTS) in BwrapFd order. The spare answers nothing but one
// byte ("r") once it is ready for orders.
//
// Uses only the C library, so agentd-sandbox-init can carry it.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace agentd::sandbox {

// bwrap's descriptors, in the order of the numbers they take in bwrap (see ExecBwrap).
enum BwrapFd { kSupervisorFd, kSeccompFd, kWorkspaceFd, kInitFd, kEtcFd, kStderrFd, kBwrapFds };

// Exit statuses of a child that failed before bwrap ran.
inline constexpr int kExitCgroup = 120, kExitUid = 121, kExitFds = 122, kExitDevNull = 123,
                     kExitExec = 124, kExitOrder = 125;

// Resets every signal to its default action and unblocks all, so that what bwrap starts (and
// every command in the sandbox) does not inherit what agentd ignores or blocks (agentd
// ignores SIGPIPE). Async-signal-safe.
void ResetSignals();

// Moves the calling process into each group by writing "0" to its cgroup.procs.
// Async-signal-safe (for use between fork and exec). Returns false on the first failure.
bool JoinCgroups(const std::vector<std::string>& procs_files);

// Becomes bwrap: switches to `uid` (its own group too, no supplementary groups) unless it is
// -1, lays out the descriptors (fds[kSupervisorFd..kEtcFd] become 3..7, fds[kStderrFd]
// becomes 2, /dev/null is 0 and 1, everything else is closed), resets signals and execs
// argv[0] with `envp`. Async-signal-safe. Never returns: exits with a kExit* status on
// failure.
[[noreturn]] void ExecBwrap(const int fds[kBwrapFds], long uid, char* const argv[],
                            char* const envp[]);

// The order's text (see above).
std::string EncodeOrder(long uid, const std::vector<std::string>& argv, char* const envp[]);
// Sends an order with its descriptors. Returns false (errno set) when the spare is gone.
bool SendOrder(int sock, const std::string& order, const int fds[kBwrapFds]);

// `agentd-sandbox-init --launch FD`: says it is ready on FD, waits for one order and carries
// it out (does not return then). Returns 0 when the driver closes the socket instead, and
// kExitOrder when the order is malformed.
int RunSpare(int sock);

}  // namespace agentd::sandbox

// Event types of the session journal: agentd's public state format, version 1.
// The format is documented in docs/state-format.md; keep the two in step.
#pragma once

#include <string_view>

namespace agentd::journal {

inline constexpr int kStateFormatVersion = 1;

namespace ev {
inline constexpr std::string_view kSessionCreated = "session.created";
inline constexpr std::string_view kTurnQueued = "turn.queued";
inline constexpr std::string_view kTurnStarted = "turn.started";
inline constexpr std::string_view kModelCallStarted = "model_call.started";
inline constexpr std::string_view kModelCallCompleted = "model_call.completed";
inline constexpr std::string_view kModelCallFailed = "model_call.failed";
inline constexpr std::string_view kToolCallStarted = "tool_call.started";
inline constexpr std::string_view kToolCallCompleted = "tool_call.completed";
inline constexpr std::string_view kToolCallFailed = "tool_call.failed";
// A running tool reported progress (MCP notifications/progress). Changes no state.
inline constexpr std::string_view kToolCallProgress = "tool_call.progress";
inline constexpr std::string_view kTurnRequiresAction = "turn.requires_action";
// Policy wants a person to approve a tool call before it runs: the turn waits for
// POST .../approvals, whose answer is journaled as tool_call.approval_decided.
inline constexpr std::string_view kToolCallApprovalRequested = "tool_call.approval_requested";
inline constexpr std::string_view kToolCallApprovalDecided = "tool_call.approval_decided";
inline constexpr std::string_view kSessionNeedsAttention = "session.needs_attention";
inline constexpr std::string_view kTurnCompleted = "turn.completed";
inline constexpr std::string_view kTurnFailed = "turn.failed";
inline constexpr std::string_view kTurnCancelled = "turn.cancelled";
// The session's workspace files as the turn leaves them: a snapshot in the store.
inline constexpr std::string_view kWorkspaceSnapshot = "workspace.snapshot";
// A program in the session's sandbox asked the egress proxy for a connection: allowed or
// refused by the agent's egress list. Changes no state.
inline constexpr std::string_view kEgressConnection = "egress.connection";
// The session's sandbox started again from a checkpoint (its live processes kept) or, when
// that was not possible, from its workspace alone. Changes no state.
inline constexpr std::string_view kSandboxResumed = "sandbox.resumed";
}  // namespace ev

// True for the events that end a turn.
inline bool IsTurnTerminal(std::string_view type) {
  return type == ev::kTurnCompleted || type == ev::kTurnFailed || type == ev::kTurnCancelled;
}

}  // namespace agentd::journal

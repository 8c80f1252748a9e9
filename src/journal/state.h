// SessionState: a session folded from its journal (docs/state-format.md).
//
// Apply() is the only way state changes, and it is a pure function of the previous state and
// one event, so replaying a journal (or a snapshot plus its tail) always gives the same state.
// DecideNext() reads a state and says what the engine must do next; together they make resume
// after a crash the same code path as normal progress. Not thread-safe: one owner at a time.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/status.h"
#include "store/store.h"

namespace agentd::journal {

struct Usage {
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t total_tokens = 0;
};

// A tool call asked for by the model in the turn's latest model answer.
struct ToolCallState {
  std::string call_id;
  std::string name;
  std::string arguments;
  // pending: not started; started: intent journaled, no result; done: result journaled.
  std::string status = "pending";
  std::string idempotency_key;  // fixed at the first tool_call.started
  int attempts = 0;  // failed attempts so far (a crash is not an attempt)
  // "" (none asked), requested, approved or denied: the policy's approval of the call.
  std::string approval;
  std::string approval_note;  // who decided and why (for the model when denied)
};

struct TurnState {
  std::string id;
  int64_t ordinal = 0;
  std::string status = "queued";  // queued|running|requires_action|completed|failed|cancelled
  Json input = Json::array();
  std::string idempotency_key;
  std::string principal_id;  // who submitted it ("" before identities were journaled)
  int64_t created_ms = 0;
  int64_t completed_ms = 0;
  std::string output_text;
  Json output = Json::array();  // items this turn added to the conversation
  Json error;                   // null or {code, message}
  Usage usage;
  int64_t model_calls = 0;       // completed model calls
  // Budget accounting (engine::Budget), all folded from the journal so a restart neither
  // loses nor repeats a count.
  int64_t started_ms = 0;  // time of turn.started
  int64_t tool_calls = 0;  // calls started (a call's retries and recovery are not new calls)
  double cost_usd = 0;     // sum of model_call.completed cost_usd
  // The latest started call as "<name>\n<canonical arguments>", and how many started calls
  // in a row (this turn) had it: loop detection.
  std::string last_call;
  int64_t repeats = 0;
  int model_attempt = 0;         // failed attempts of the current model call
  bool model_in_flight = false;  // model_call.started without result
  bool answered = false;         // latest model answer had no tool calls
  std::vector<ToolCallState> calls;  // of the latest model answer
  Json pending_action;  // requires_action: [{call_id, name, arguments, reason}]
};

struct SessionState {
  std::string id;
  std::string agent_id;
  int64_t agent_version = 0;
  Json metadata = Json::object();
  Json budget = Json::object();  // the session's own limits, from session.created
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  int64_t last_seq = 0;
  Json items = Json::array();  // the whole conversation, canonical items
  std::vector<std::string> queue;  // queued turn ids, oldest first
  std::map<std::string, TurnState> open_turns;  // turns not yet ended
  std::string current_turn;  // the started, unfinished turn ("" when none)
  int64_t turn_count = 0;
  std::map<std::string, std::string> idempotency;  // Idempotency-Key -> turn id
  bool needs_attention = false;
  // Hash of the latest workspace snapshot's manifest ("" when none was taken).
  std::string workspace_manifest;

  std::string Status() const;  // idle|running|requires_action|needs_attention
  bool Active() const { return !current_turn.empty() || !queue.empty(); }
  TurnState* Current();
};

// What applying one event changed, for the projections the engine writes with it.
// The key loop detection compares: the tool's name and its arguments in canonical JSON (keys
// sorted, no spaces), or as they are when they are not JSON.
std::string ToolCallSignature(const std::string& name, const std::string& arguments);

struct ApplyEffect {
  const TurnState* turn = nullptr;  // the turn the event touched (valid until the next Apply)
  std::optional<TurnState> ended;   // a copy of the turn that this event ended
};

// Folds one event into `s`. Fails (leaving `s` unusable) on an event that does not fit the
// state, such as a seq that is not last_seq + 1: that is a corrupt or foreign journal.
Status Apply(SessionState& s, const store::EventRecord& e, ApplyEffect* effect = nullptr);
// The same, for a caller that holds `e.data` already parsed (it must be what e.data says).
Status Apply(SessionState& s, const store::EventRecord& e, const Json& data,
             ApplyEffect* effect = nullptr);

// The API's turn object.
Json TurnObject(const std::string& session_id, const TurnState& t);
// The turn's row in the store: its object and the columns it is looked up by.
store::TurnRow TurnRowOf(const std::string& session_id, const TurnState& t);

// An event as the API and export files show it: {seq, type, turn_id (null for session
// events), time (RFC 3339), data}.
Json EventToJson(const store::EventRecord& e);
// The inverse, for an event of session `session_id` read from a file: checks the shape of
// every field (not whether the event fits the journal; Apply does that).
Result<store::EventRecord> EventFromJson(const Json& j, const std::string& session_id);

Json StateToJson(const SessionState& s);
// The snapshot text, StateToJson(s) serialised. The conversation is moved into the document
// for the dump and back rather than copied (it is most of a long session's state), so `s`
// must not be read by anyone else meanwhile; it is unchanged afterwards.
std::string StateToText(SessionState& s);
// Takes `j` by value so that the conversation and other large values are moved, not copied.
Result<SessionState> StateFromJson(Json j);

enum class NextKind {
  kIdle,          // nothing to do
  kStartTurn,     // the queue's head can start
  kCallModel,     // the current turn needs a model answer
  kRunTool,       // `call` is pending
  kRecoverTool,   // `call` was started but its result is not journaled (after a crash)
  kAwaitClient,   // every remaining call is a client tool: the turn must stop for the client
  kCompleteTurn,  // the model answered without tool calls
  kWait,          // requires_action or needs_attention: a human or client acts next
};

struct NextAction {
  NextKind kind = NextKind::kIdle;
  std::string turn_id;
  const ToolCallState* call = nullptr;
};

// `is_client_tool(name)` tells which tools the client runs.
template <typename IsClient>
NextAction DecideNext(SessionState& s, IsClient is_client_tool) {
  if (s.needs_attention) return {NextKind::kWait, s.current_turn, nullptr};
  TurnState* t = s.Current();
  if (t == nullptr) {
    if (s.queue.empty()) return {};
    return {NextKind::kStartTurn, s.queue.front(), nullptr};
  }
  if (t->status == "requires_action") return {NextKind::kWait, t->id, nullptr};
  bool client_pending = false;
  for (const auto& c : t->calls) {
    if (c.status == "started") return {NextKind::kRecoverTool, t->id, &c};
  }
  for (const auto& c : t->calls) {
    if (c.status != "pending") continue;
    if (is_client_tool(c.name)) {
      client_pending = true;
      continue;
    }
    return {NextKind::kRunTool, t->id, &c};
  }
  if (client_pending) return {NextKind::kAwaitClient, t->id, nullptr};
  if (t->answered) return {NextKind::kCompleteTurn, t->id, nullptr};
  return {NextKind::kCallModel, t->id, nullptr};
}

}  // namespace agentd::journal

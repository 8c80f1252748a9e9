#include "journal/state.h"

#include <fmt/format.h>

#include "common/clock.h"
#include "journal/events.h"

namespace agentd::journal {

std::string SessionState::Status() const {
  if (needs_attention) return "needs_attention";
  auto it = open_turns.find(current_turn);
  if (it != open_turns.end() && it->second.status == "requires_action") return "requires_action";
  if (Active()) return "running";
  return "idle";
}

TurnState* SessionState::Current() {
  if (current_turn.empty()) return nullptr;
  auto it = open_turns.find(current_turn);
  return it == open_turns.end() ? nullptr : &it->second;
}

namespace {

Status Bad(const store::EventRecord& e, std::string_view why) {
  return InvalidArgument(fmt::format("journal of {} at seq {} ({}): {}", e.session_id, e.seq,
                                     e.type, why));
}

std::string Str(const Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

int64_t Int(const Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

void AddItem(SessionState& s, TurnState& t, Json item) {
  t.output.push_back(item);
  s.items.push_back(std::move(item));
}

// Gives every call without a result a synthetic one, so that the conversation stays
// well-formed (each function_call followed by its output) when a turn ends early.
void CloseOpenCalls(SessionState& s, TurnState& t, std::string_view why) {
  for (auto& c : t.calls) {
    if (c.status == "done") continue;
    c.status = "done";
    AddItem(s, t, Json{{"type", "function_call_output"}, {"call_id", c.call_id},
                       {"output", fmt::format("error: {}", why)}});
  }
}

ToolCallState* FindCall(TurnState& t, const std::string& call_id) {
  for (auto& c : t.calls) {
    if (c.call_id == call_id) return &c;
  }
  return nullptr;
}

}  // namespace

std::string ToolCallSignature(const std::string& name, const std::string& arguments) {
  std::string canonical = arguments;
  try {
    canonical = DumpJson(Json::parse(arguments));
  } catch (const std::exception&) {
  }
  return name + "\n" + canonical;
}

Status Apply(SessionState& s, const store::EventRecord& e, ApplyEffect* effect) {
  Json d;
  try {
    d = Json::parse(e.data);
  } catch (const std::exception&) {
    return Bad(e, "data is not JSON");
  }
  return Apply(s, e, d, effect);
}

Status Apply(SessionState& s, const store::EventRecord& e, const Json& d, ApplyEffect* effect) {
  if (e.seq != s.last_seq + 1) {
    return Bad(e, fmt::format("expected seq {}", s.last_seq + 1));
  }
  if (!d.is_object()) return Bad(e, "data is not an object");
  s.last_seq = e.seq;
  s.updated_ms = e.time_ms;
  const std::string& type = e.type;

  if (type == ev::kSessionCreated) {
    if (e.seq != 1) return Bad(e, "session.created must be the first event");
    s.id = e.session_id;
    s.agent_id = Str(d, "agent_id");
    s.agent_version = Int(d, "agent_version");
    s.metadata = d.value("metadata", Json::object());
    s.budget = d.value("budget", Json::object());
    s.created_ms = e.time_ms;
    return Status::OK();
  }
  if (s.id.empty()) return Bad(e, "journal does not start with session.created");

  TurnState* t = nullptr;
  if (type == ev::kTurnQueued) {
    if (s.open_turns.count(e.turn_id)) return Bad(e, "turn queued twice");
    TurnState nt;
    nt.id = e.turn_id;
    nt.ordinal = ++s.turn_count;
    nt.input = d.value("input", Json::array());
    nt.idempotency_key = Str(d, "idempotency_key");
    nt.principal_id = Str(d, "principal_id");
    nt.created_ms = e.time_ms;
    if (!nt.idempotency_key.empty()) s.idempotency[nt.idempotency_key] = nt.id;
    s.queue.push_back(nt.id);
    t = &s.open_turns.emplace(nt.id, std::move(nt)).first->second;
  } else {
    auto it = s.open_turns.find(e.turn_id);
    if (it == s.open_turns.end()) return Bad(e, "event for a turn that is not open");
    t = &it->second;
  }

  if (type == ev::kTurnQueued) {
    // done above
  } else if (type == ev::kTurnStarted) {
    if (!s.current_turn.empty()) return Bad(e, "a turn is already running");
    if (s.queue.empty() || s.queue.front() != t->id) return Bad(e, "turn is not next in queue");
    s.queue.erase(s.queue.begin());
    s.current_turn = t->id;
    t->status = "running";
    t->started_ms = e.time_ms;
    for (const auto& item : t->input) s.items.push_back(item);
  } else if (type == ev::kModelCallStarted) {
    t->model_in_flight = true;
  } else if (type == ev::kModelCallFailed) {
    t->model_in_flight = false;
    ++t->model_attempt;
  } else if (type == ev::kModelCallCompleted) {
    t->model_in_flight = false;
    t->model_attempt = 0;
    ++t->model_calls;
    const Json& u = d.value("usage", Json::object());
    t->usage.input_tokens += Int(u, "input_tokens");
    t->usage.output_tokens += Int(u, "output_tokens");
    t->usage.total_tokens += Int(u, "total_tokens");
    if (auto cost = d.find("cost_usd"); cost != d.end() && cost->is_number()) {
      t->cost_usd += cost->get<double>();
    }
    std::string text = Str(d, "text");
    if (!text.empty()) {
      AddItem(s, *t, Json{{"type", "message"}, {"role", "assistant"}, {"content", text}});
      t->output_text = text;
    }
    t->calls.clear();
    for (const auto& c : d.value("tool_calls", Json::array())) {
      ToolCallState cs;
      cs.call_id = Str(c, "call_id");
      cs.name = Str(c, "name");
      cs.arguments = Str(c, "arguments");
      AddItem(s, *t, Json{{"type", "function_call"}, {"call_id", cs.call_id},
                          {"name", cs.name}, {"arguments", cs.arguments}});
      t->calls.push_back(std::move(cs));
    }
    t->answered = t->calls.empty();
  } else if (type == ev::kToolCallStarted) {
    ToolCallState* c = FindCall(*t, Str(d, "call_id"));
    if (c == nullptr) return Bad(e, "tool_call.started for an unknown call");
    if (c->idempotency_key.empty()) {
      // The call's first start: a new call (a retry or a recovery starts it again).
      ++t->tool_calls;
      std::string sig = ToolCallSignature(c->name, c->arguments);
      t->repeats = sig == t->last_call ? t->repeats + 1 : 1;
      t->last_call = std::move(sig);
    }
    c->status = "started";
    if (c->idempotency_key.empty()) c->idempotency_key = Str(d, "idempotency_key");
  } else if (type == ev::kToolCallFailed) {
    ToolCallState* c = FindCall(*t, Str(d, "call_id"));
    if (c == nullptr) return Bad(e, "tool_call.failed for an unknown call");
    // A failed attempt has a known outcome: the call can be attempted again.
    if (c->status == "started") c->status = "pending";
    ++c->attempts;
  } else if (type == ev::kToolCallCompleted) {
    ToolCallState* c = FindCall(*t, Str(d, "call_id"));
    if (c == nullptr) return Bad(e, "tool_call.completed for an unknown call");
    if (c->status == "done") return Bad(e, "tool call completed twice");
    c->status = "done";
    AddItem(s, *t, Json{{"type", "function_call_output"}, {"call_id", c->call_id},
                        {"output", Str(d, "output")}});
    if (t->status == "requires_action") {
      bool all = true;
      for (const auto& p : t->pending_action) {
        const ToolCallState* pc = FindCall(*t, p.value("call_id", ""));
        if (pc && pc->status != "done") all = false;
      }
      if (all) {
        t->status = "running";
        t->pending_action = Json();
        s.needs_attention = false;
      }
    }
  } else if (type == ev::kToolCallApprovalRequested) {
    ToolCallState* c = FindCall(*t, Str(d, "call_id"));
    if (c == nullptr) return Bad(e, "tool_call.approval_requested for an unknown call");
    c->approval = "requested";
    t->status = "requires_action";
    t->pending_action = Json::array({{{"call_id", c->call_id}, {"name", c->name},
                                      {"arguments", c->arguments}, {"reason", "approval"},
                                      {"statement", d.value("statement", "")}}});
  } else if (type == ev::kToolCallApprovalDecided) {
    ToolCallState* c = FindCall(*t, Str(d, "call_id"));
    if (c == nullptr) return Bad(e, "tool_call.approval_decided for an unknown call");
    c->approval = Str(d, "decision") == "approve" ? "approved" : "denied";
    c->approval_note = fmt::format("{} by {}{}", c->approval, Str(d, "principal_id"),
                                   Str(d, "reason").empty() ? "" : ": " + Str(d, "reason"));
    if (t->status == "requires_action") {
      t->status = "running";
      t->pending_action = Json();
    }
  } else if (type == ev::kWorkspaceSnapshot) {
    s.workspace_manifest = Str(d, "manifest");
  } else if (type == ev::kTurnRequiresAction) {
    t->status = "requires_action";
    t->pending_action = d.value("pending", Json::array());
  } else if (type == ev::kSessionNeedsAttention) {
    s.needs_attention = true;
    t->status = "requires_action";
    t->pending_action = d.value("pending", Json::array());
  } else if (IsTurnTerminal(type)) {
    if (type == ev::kTurnCompleted) {
      t->status = "completed";
    } else if (type == ev::kTurnFailed) {
      t->status = "failed";
      t->error = d.value("error", Json());
      CloseOpenCalls(s, *t, "the turn failed before this call finished");
    } else {
      t->status = "cancelled";
      t->error = Json{{"code", "cancelled"}, {"message", d.value("reason", "cancelled")}};
      CloseOpenCalls(s, *t, "the turn was cancelled before this call finished");
    }
    t->completed_ms = e.time_ms;
    t->model_in_flight = false;
    t->pending_action = Json();
    if (s.current_turn == t->id) {
      s.current_turn.clear();
      s.needs_attention = false;
    } else {
      // A queued turn can end without starting (cancelled while queued).
      for (auto qi = s.queue.begin(); qi != s.queue.end(); ++qi) {
        if (*qi == t->id) {
          s.queue.erase(qi);
          break;
        }
      }
    }
    if (effect) {
      effect->ended = std::move(*t);
      effect->turn = &*effect->ended;
    }
    s.open_turns.erase(e.turn_id);
    return Status::OK();
  } else {
    // Unknown event types from a newer minor version are skipped, by the format's rule.
  }
  if (effect) effect->turn = t;
  return Status::OK();
}

store::TurnRow TurnRowOf(const std::string& session_id, const TurnState& t) {
  return {session_id, t.id, t.ordinal, t.status, t.idempotency_key,
          DumpJson(TurnObject(session_id, t))};
}

Json EventToJson(const store::EventRecord& e) {
  Json data;
  try {
    data = Json::parse(e.data);
  } catch (const std::exception&) {
    data = Json::object();
  }
  return {{"seq", e.seq},
          {"type", e.type},
          {"turn_id", e.turn_id.empty() ? Json() : Json(e.turn_id)},
          {"time", FormatRfc3339(e.time_ms)},
          {"data", std::move(data)}};
}

Result<store::EventRecord> EventFromJson(const Json& j, const std::string& session_id) {
  if (!j.is_object()) return InvalidArgument("an event must be an object");
  store::EventRecord e;
  e.session_id = session_id;
  const Json& seq = j.contains("seq") ? j["seq"] : Json();
  if (!seq.is_number_integer() || seq.get<int64_t>() < 1) {
    return InvalidArgument("event 'seq' must be a positive integer");
  }
  e.seq = seq.get<int64_t>();
  auto where = [&](std::string_view field) { return fmt::format("event {} '{}'", e.seq, field); };
  const Json& type = j.contains("type") ? j["type"] : Json();
  if (!type.is_string() || type.get_ref<const std::string&>().empty() ||
      type.get_ref<const std::string&>().size() > 128) {
    return InvalidArgument(where("type") + " must be a string of 1 to 128 characters");
  }
  e.type = type.get<std::string>();
  const Json& turn = j.contains("turn_id") ? j["turn_id"] : Json();
  if (turn.is_string()) {
    e.turn_id = turn.get<std::string>();
    if (e.turn_id.empty() || e.turn_id.size() > 64) {
      return InvalidArgument(where("turn_id") + " must be null or a turn id");
    }
  } else if (!turn.is_null()) {
    return InvalidArgument(where("turn_id") + " must be null or a turn id");
  }
  const Json& time = j.contains("time") ? j["time"] : Json();
  std::optional<int64_t> ms;
  if (time.is_string()) ms = ParseRfc3339(time.get_ref<const std::string&>());
  if (!ms) return InvalidArgument(where("time") + " must be an RFC 3339 date-time");
  e.time_ms = *ms;
  const Json& data = j.contains("data") ? j["data"] : Json();
  if (!data.is_object()) return InvalidArgument(where("data") + " must be an object");
  e.data = DumpJson(data);
  return e;  // other fields are a later version's additions: ignored
}

Json TurnObject(const std::string& session_id, const TurnState& t) {
  Json j = {
      {"object", "turn"},
      {"id", t.id},
      {"session_id", session_id},
      {"status", t.status},
      {"input", t.input},
      {"output_text", t.output_text},
      {"output", t.output},
      {"error", t.error},
      {"usage",
       {{"input_tokens", t.usage.input_tokens},
        {"output_tokens", t.usage.output_tokens},
        {"total_tokens", t.usage.total_tokens}}},
      {"model_calls", t.model_calls},
      {"tool_calls", t.tool_calls},
      {"cost_usd", t.cost_usd},
      {"created_at", FormatRfc3339(t.created_ms)},
      {"completed_at", t.completed_ms ? Json(FormatRfc3339(t.completed_ms)) : Json()},
  };
  if (!t.pending_action.is_null()) j["pending_tool_calls"] = t.pending_action;
  return j;
}

namespace {

Json CallToJson(const ToolCallState& c) {
  Json j = {{"call_id", c.call_id}, {"name", c.name},     {"arguments", c.arguments},
            {"status", c.status},   {"idempotency_key", c.idempotency_key}, {"attempts", c.attempts}};
  if (!c.approval.empty()) {
    j["approval"] = c.approval;
    j["approval_note"] = c.approval_note;
  }
  return j;
}

Json TurnToJson(const TurnState& t) {
  Json calls = Json::array();
  for (const auto& c : t.calls) calls.push_back(CallToJson(c));
  return {{"id", t.id},
          {"ordinal", t.ordinal},
          {"status", t.status},
          {"input", t.input},
          {"idempotency_key", t.idempotency_key},
          {"principal_id", t.principal_id},
          {"created_ms", t.created_ms},
          {"output_text", t.output_text},
          {"output", t.output},
          {"error", t.error},
          {"usage", {t.usage.input_tokens, t.usage.output_tokens, t.usage.total_tokens}},
          {"model_calls", t.model_calls},
          {"started_ms", t.started_ms},
          {"tool_calls", t.tool_calls},
          {"cost_usd", t.cost_usd},
          {"last_call", t.last_call},
          {"repeats", t.repeats},
          {"model_attempt", t.model_attempt},
          {"model_in_flight", t.model_in_flight},
          {"answered", t.answered},
          {"calls", calls},
          {"pending_action", t.pending_action}};
}

}  // namespace

Json StateToJson(const SessionState& s) {
  Json turns = Json::array();
  for (const auto& [id, t] : s.open_turns) turns.push_back(TurnToJson(t));
  return {{"format_version", kStateFormatVersion},
          {"id", s.id},
          {"agent_id", s.agent_id},
          {"agent_version", s.agent_version},
          {"metadata", s.metadata},
          {"budget", s.budget},
          {"created_ms", s.created_ms},
          {"updated_ms", s.updated_ms},
          {"last_seq", s.last_seq},
          {"items", s.items},
          {"queue", s.queue},
          {"open_turns", turns},
          {"current_turn", s.current_turn},
          {"turn_count", s.turn_count},
          {"idempotency", s.idempotency},
          {"needs_attention", s.needs_attention},
          {"workspace_manifest", s.workspace_manifest}};
}

std::string StateToText(SessionState& s) {
  Json items = std::move(s.items);
  s.items = Json::array();
  Json j = StateToJson(s);
  j["items"] = std::move(items);
  std::string text = DumpJson(j);
  s.items = std::move(j["items"]);
  return text;
}

Result<SessionState> StateFromJson(Json j) {
  try {
    if (j.at("format_version").get<int>() > kStateFormatVersion) {
      return FailedPrecondition("snapshot has a newer state format version");
    }
    SessionState s;
    s.id = j.at("id").get<std::string>();
    s.agent_id = j.at("agent_id").get<std::string>();
    s.agent_version = j.at("agent_version").get<int64_t>();
    s.metadata = std::move(j.at("metadata"));
    s.budget = j.value("budget", Json::object());
    s.created_ms = j.at("created_ms").get<int64_t>();
    s.updated_ms = j.at("updated_ms").get<int64_t>();
    s.last_seq = j.at("last_seq").get<int64_t>();
    s.items = std::move(j.at("items"));
    if (!s.items.is_array()) return InvalidArgument("snapshot is malformed: 'items' is not an array");
    s.queue = j.at("queue").get<std::vector<std::string>>();
    s.current_turn = j.at("current_turn").get<std::string>();
    s.turn_count = j.at("turn_count").get<int64_t>();
    s.idempotency = j.at("idempotency").get<std::map<std::string, std::string>>();
    s.needs_attention = j.at("needs_attention").get<bool>();
    s.workspace_manifest = j.value("workspace_manifest", "");
    for (auto& tj : j.at("open_turns")) {
      TurnState t;
      t.id = tj.at("id").get<std::string>();
      t.ordinal = tj.at("ordinal").get<int64_t>();
      t.status = tj.at("status").get<std::string>();
      t.input = std::move(tj.at("input"));
      t.idempotency_key = tj.at("idempotency_key").get<std::string>();
      t.principal_id = tj.value("principal_id", "");
      t.created_ms = tj.at("created_ms").get<int64_t>();
      t.output_text = tj.at("output_text").get<std::string>();
      t.output = std::move(tj.at("output"));
      t.error = std::move(tj.at("error"));
      const auto& u = tj.at("usage");
      t.usage = {u.at(0).get<int64_t>(), u.at(1).get<int64_t>(), u.at(2).get<int64_t>()};
      t.model_calls = tj.at("model_calls").get<int64_t>();
      // Added within version 1: a snapshot without them is one from before budgets.
      t.started_ms = tj.value("started_ms", t.created_ms);
      t.tool_calls = tj.value("tool_calls", int64_t{0});
      t.cost_usd = tj.value("cost_usd", 0.0);
      t.last_call = tj.value("last_call", "");
      t.repeats = tj.value("repeats", int64_t{0});
      t.model_attempt = tj.at("model_attempt").get<int>();
      t.model_in_flight = tj.at("model_in_flight").get<bool>();
      t.answered = tj.at("answered").get<bool>();
      t.pending_action = std::move(tj.at("pending_action"));
      for (const auto& cj : tj.at("calls")) {
        ToolCallState c;
        c.call_id = cj.at("call_id").get<std::string>();
        c.name = cj.at("name").get<std::string>();
        c.arguments = cj.at("arguments").get<std::string>();
        c.status = cj.at("status").get<std::string>();
        c.idempotency_key = cj.at("idempotency_key").get<std::string>();
        c.attempts = cj.at("attempts").get<int>();
        c.approval = cj.value("approval", "");
        c.approval_note = cj.value("approval_note", "");
        t.calls.push_back(std::move(c));
      }
      s.open_turns.emplace(t.id, std::move(t));
    }
    return s;
  } catch (const std::exception& e) {
    return InvalidArgument(fmt::format("snapshot is malformed: {}", e.what()));
  }
}

}  // namespace agentd::journal

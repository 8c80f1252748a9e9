// Export and import of sessions: one session's journal, the agent version it runs and its
// workspace snapshots as a JSON Lines file (docs/state-format.md, "Export files").
//
// The file is the journal itself, not a copy of agentd's tables: an import folds the events
// again, as a restart would, and derives the session, its turns and its snapshot from them,
// so a file written by hand or by another tool gets exactly the checks agentd's own events
// get. Every workspace blob is checked against its hash before anything is written, and the
// whole import is one commit.
#include <set>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/base64.h"
#include "common/ids.h"
#include "engine/engine.h"
#include "journal/events.h"
#include "journal/state.h"
#include "sandbox/workspace/workspace.h"

namespace agentd::engine {

namespace ev = journal::ev;
namespace ws = sandbox::workspace;

namespace {

constexpr std::string_view kExportKind = "agentd.session-export";

// The blobs of every workspace snapshot a journal names, manifests first, each once, read
// from the blobs of the session's tenant.
class BlobLister {
 public:
  BlobLister(store::Store& store, std::string tenant_id)
      : store_(store), tenant_id_(std::move(tenant_id)) {}

  // Adds snapshot `manifest` and the blobs of its files.
  Status AddSnapshot(const std::string& manifest) {
    if (!seen_.insert(manifest).second) return Status::OK();
    order_.push_back(manifest);
    ASSIGN_OR_RETURN(ws::Manifest m, ws::LoadManifest(manifest, store_, tenant_id_));
    for (const auto& e : m.entries) {
      if (e.type == ws::EntryType::kFile && seen_.insert(e.hash).second) order_.push_back(e.hash);
    }
    return Status::OK();
  }
  const std::vector<std::string>& hashes() const { return order_; }

 private:
  store::Store& store_;
  const std::string tenant_id_;
  std::set<std::string> seen_;
  std::vector<std::string> order_;
};

// One line of an import, with its number for error messages.
struct Line {
  size_t number = 0;
  Json json;
};

Status AtLine(size_t number, const Status& st) {
  return Status(st.code(), fmt::format("line {}: {}", number, st.message()));
}

// Reads the string field `key` of record `j`, which must be there.
Result<std::string> RequiredString(const Json& j, const char* key, size_t max_len) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().size() > max_len) {
    return InvalidArgument(
        fmt::format("'{}' must be a string of at most {} characters", key, max_len));
  }
  return it->get<std::string>();
}

Result<int64_t> RequiredInt(const Json& j, const char* key, int64_t min) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < min) {
    return InvalidArgument(fmt::format("'{}' must be an integer of at least {}", key, min));
  }
  return it->get<int64_t>();
}

}  // namespace

Status Engine::ExportSession(const std::string& session_id, const std::function<bool()>& begin,
                             const std::function<bool(std::string_view)>& line) {
  ASSIGN_OR_RETURN(auto session, store_->GetSession(session_id));
  if (!session) return NotFound(fmt::format("session '{}' not found", session_id));
  // The export covers the journal as durable now; events appended meanwhile are left out.
  const int64_t last_seq = session->last_seq;
  ASSIGN_OR_RETURN(auto agent, store_->GetAgent(session->agent_id, session->agent_version));
  if (!agent) {
    return Internal(fmt::format("agent '{}' version {} of session '{}' is missing",
                                session->agent_id, session->agent_version, session_id));
  }
  ASSIGN_OR_RETURN(Json agent_json, ParseJson(agent->spec, "stored agent"));
  auto write = [&](const Json& record) {
    return line(DumpJson(record)) ? Status::OK() : Cancelled("the export's reader went away");
  };
  if (!begin()) return Cancelled("the export's reader went away");
  RETURN_IF_ERROR(write({{"kind", kExportKind},
                         {"format_version", journal::kStateFormatVersion},
                         {"session_id", session_id},
                         {"last_seq", last_seq},
                         {"exported_at", FormatRfc3339(clock_->NowMillis())}}));
  RETURN_IF_ERROR(write({{"kind", "agent"}, {"agent", agent_json}}));

  BlobLister blobs(*store_, session->tenant_id);
  int64_t after = 0;
  while (after < last_seq) {
    ASSIGN_OR_RETURN(auto events, store_->ReadEvents(session_id, after, 1000));
    if (events.empty()) {
      return Internal(fmt::format("session '{}' journal ends at seq {}, before {}", session_id,
                                  after, last_seq));
    }
    for (const auto& e : events) {
      if (e.seq > last_seq) break;
      after = e.seq;
      Json ej = journal::EventToJson(e);
      if (e.type == ev::kWorkspaceSnapshot) {
        RETURN_IF_ERROR(blobs.AddSnapshot(ej["data"].value("manifest", "")));
      }
      RETURN_IF_ERROR(write({{"kind", "event"}, {"event", std::move(ej)}}));
    }
  }
  for (const auto& hash : blobs.hashes()) {
    ASSIGN_OR_RETURN(auto blob, store_->GetBlob(session->tenant_id, hash));
    if (!blob) return Internal(fmt::format("workspace blob {} is missing from the store", hash));
    RETURN_IF_ERROR(write({{"kind", "blob"},
                           {"hash", blob->hash},
                           {"size", blob->size},
                           {"codec", blob->codec},
                           {"data", Base64Encode(blob->data)}}));
  }
  return write({{"kind", "end"},
                {"events", last_seq},
                {"blobs", static_cast<int64_t>(blobs.hashes().size())}});
}

Result<Json> Engine::ImportSession(std::string_view file, const Caller& caller) {
  // Split into lines and parse each; the last line may or may not end with '\n'.
  std::vector<Line> lines;
  for (size_t pos = 0, n = 1; pos < file.size(); ++n) {
    size_t end = file.find('\n', pos);
    if (end == std::string_view::npos) end = file.size();
    std::string_view text = file.substr(pos, end - pos);
    pos = end + 1;
    if (text.empty()) return InvalidArgument(fmt::format("line {}: empty line", n));
    auto j = ParseJson(std::string(text), "the record");
    if (!j.ok()) return AtLine(n, j.status());
    if (!j->is_object() || !(*j)["kind"].is_string()) {
      return InvalidArgument(fmt::format("line {}: a record must be an object with a 'kind'", n));
    }
    lines.push_back({n, std::move(j).value()});
  }
  if (lines.empty()) return InvalidArgument("the export file is empty");

  // The header.
  const Json& head = lines[0].json;
  if (head["kind"] != kExportKind) {
    return InvalidArgument(
        fmt::format("line 1: not an agentd session export (the first record's kind must be "
                    "\"{}\")",
                    kExportKind));
  }
  auto version = RequiredInt(head, "format_version", 1);
  if (!version.ok()) return AtLine(1, version.status());
  if (*version > journal::kStateFormatVersion) {
    return Unprocessable(fmt::format(
        "line 1: the export is in state format version {}; this agentd reads version {}",
        *version, journal::kStateFormatVersion));
  }
  auto sid = RequiredString(head, "session_id", 64);
  if (!sid.ok()) return AtLine(1, sid.status());
  if (!IsValidId(*sid, "ses_")) {
    return InvalidArgument(fmt::format("line 1: '{}' is not a session id", *sid));
  }
  auto last_seq = RequiredInt(head, "last_seq", 1);
  if (!last_seq.ok()) return AtLine(1, last_seq.status());

  // The records, in the order the format gives: agent, events, blobs, end.
  std::optional<AgentSpec> agent;
  const Json* agent_json = nullptr;
  journal::SessionState state;
  store::WriteBatch batch;
  std::map<std::string, store::TurnRow> ended_turns;
  std::vector<std::string> manifests;  // named by workspace.snapshot events, in order
  std::unordered_map<std::string, std::string> contents;  // imported blobs' checked bytes
  bool ended = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t n = lines[i].number;
    const Json& r = lines[i].json;
    const std::string kind = r["kind"].get<std::string>();
    if (ended) return InvalidArgument(fmt::format("line {}: a record after the end record", n));
    if (kind == "agent") {
      if (agent) return InvalidArgument(fmt::format("line {}: a second agent record", n));
      if (!r.contains("agent") || !r["agent"].is_object()) {
        return InvalidArgument(fmt::format("line {}: 'agent' must be an object", n));
      }
      agent_json = &r["agent"];
      auto spec = ParseAgentSpec(*agent_json, ProviderNames());
      if (!spec.ok()) return AtLine(n, spec.status());
      if (Status st = CheckSandbox(*spec); !st.ok()) return AtLine(n, st);
      auto id = RequiredString(*agent_json, "id", 64);
      if (!id.ok()) return AtLine(n, id.status());
      if (!IsValidId(*id, "agt_")) {
        return InvalidArgument(fmt::format("line {}: '{}' is not an agent id", n, *id));
      }
      auto v = RequiredInt(*agent_json, "version", 1);
      if (!v.ok()) return AtLine(n, v.status());
      spec->id = *id;
      spec->version = *v;
      spec->created_ms = clock_->NowMillis();
      if (auto c = agent_json->find("created_at"); c != agent_json->end() && c->is_string()) {
        if (auto ms = ParseRfc3339(c->get_ref<const std::string&>())) spec->created_ms = *ms;
      }
      agent = std::move(spec).value();
    } else if (kind == "event") {
      if (!agent) return InvalidArgument(fmt::format("line {}: an event before the agent", n));
      if (!batch.blobs.empty()) {
        return InvalidArgument(fmt::format("line {}: an event after the blobs", n));
      }
      auto e = journal::EventFromJson(r.contains("event") ? r["event"] : Json(), *sid);
      if (!e.ok()) return AtLine(n, e.status());
      auto data = ParseJson(e->data, "event data");
      if (!data.ok()) return AtLine(n, data.status());
      // What the API checks when it takes these from a client, checked again here.
      if (e->type == ev::kSessionCreated) {
        if ((*data)["agent_id"] != agent->id || (*data)["agent_version"] != agent->version) {
          return InvalidArgument(fmt::format(
              "line {}: session.created names agent '{}' version {}, not the exported agent",
              n, (*data).value("agent_id", ""), (*data).value("agent_version", Json()).dump()));
        }
        if (Status st = CheckSessionMetadata((*data).value("metadata", Json::object()));
            !st.ok()) {
          return AtLine(n, st);
        }
      } else if (e->type == ev::kTurnQueued) {
        if (!IsValidId(e->turn_id, "trn_")) {
          return InvalidArgument(fmt::format("line {}: '{}' is not a turn id", n, e->turn_id));
        }
        // Stored as items (the API's string shorthand is expanded before it is journaled).
        const Json input_items = (*data).value("input", Json());
        if (!input_items.is_array()) {
          return InvalidArgument(fmt::format("line {}: turn.queued 'input' must be an array", n));
        }
        auto input = ParseTurnInput(input_items, options_.max_input_items);
        if (!input.ok()) return AtLine(n, input.status());
      } else if (e->type == ev::kWorkspaceSnapshot) {
        std::string m = (*data).value("manifest", "");
        if (!ws::IsContentHash(m)) {
          return InvalidArgument(
              fmt::format("line {}: workspace.snapshot 'manifest' is not a snapshot hash", n));
        }
        manifests.push_back(m);
      }
      journal::ApplyEffect effect;
      if (Status st = journal::Apply(state, *e, *data, &effect); !st.ok()) return AtLine(n, st);
      if (effect.ended) ended_turns[effect.ended->id] = journal::TurnRowOf(*sid, *effect.ended);
      batch.events.push_back(std::move(e).value());
    } else if (kind == "blob") {
      auto hash = RequiredString(r, "hash", 64);
      if (!hash.ok()) return AtLine(n, hash.status());
      auto size = RequiredInt(r, "size", 0);
      if (!size.ok()) return AtLine(n, size.status());
      auto codec = RequiredString(r, "codec", 16);
      if (!codec.ok()) return AtLine(n, codec.status());
      auto encoded = RequiredString(r, "data", SIZE_MAX);
      if (!encoded.ok()) return AtLine(n, encoded.status());
      if (!ws::IsContentHash(*hash)) {
        return InvalidArgument(fmt::format("line {}: '{}' is not a blob hash", n, *hash));
      }
      if (contents.count(*hash)) {
        return InvalidArgument(fmt::format("line {}: blob {} appears twice", n, *hash));
      }
      auto bytes = Base64Decode(*encoded);
      if (!bytes.ok()) return InvalidArgument(fmt::format("line {}: 'data' is not base64", n));
      // The importing caller's tenant gets its own copy, whatever other tenants hold.
      store::BlobRow blob{caller.tenant_id, *hash, std::move(bytes).value(), *size, *codec};
      auto content = ws::BlobContent(blob, ws::Limits{}.max_file_bytes);
      if (!content.ok()) return AtLine(n, content.status());
      contents.emplace(*hash, std::move(content).value());
      batch.blobs.push_back(std::move(blob));
    } else if (kind == "end") {
      auto events = RequiredInt(r, "events", 0);
      if (!events.ok()) return AtLine(n, events.status());
      auto blobs = RequiredInt(r, "blobs", 0);
      if (!blobs.ok()) return AtLine(n, blobs.status());
      if (*events != static_cast<int64_t>(batch.events.size()) ||
          *blobs != static_cast<int64_t>(batch.blobs.size())) {
        return InvalidArgument(fmt::format(
            "line {}: the end record counts {} events and {} blobs; the file has {} and {}", n,
            *events, *blobs, batch.events.size(), batch.blobs.size()));
      }
      ended = true;
    } else {
      return InvalidArgument(fmt::format("line {}: unknown record kind '{}'", n, kind));
    }
  }
  if (!ended) return InvalidArgument("the export is truncated: it has no end record");
  if (!agent) return InvalidArgument("the export has no agent record");
  if (state.last_seq != *last_seq) {
    return InvalidArgument(fmt::format("the header says the journal ends at seq {}; it ends at {}",
                                       *last_seq, state.last_seq));
  }

  // Every snapshot the journal names must be complete, from the file or from this store; a
  // blob no snapshot uses has no business in the file.
  std::set<std::string> used;
  std::vector<std::string> wanted;  // blobs not in the file: the store must have them
  for (const auto& m : manifests) {
    if (!used.insert(m).second) continue;
    ws::Manifest manifest;
    if (auto it = contents.find(m); it != contents.end()) {
      auto decoded = ws::DecodeManifest(it->second, ws::Limits{});
      if (!decoded.ok()) {
        return InvalidArgument(
            fmt::format("workspace snapshot {}: {}", m, decoded.status().message()));
      }
      manifest = std::move(decoded).value();
    } else {
      auto loaded = ws::LoadManifest(m, *store_, caller.tenant_id);
      if (!loaded.ok()) {
        return InvalidArgument(fmt::format("workspace snapshot {} is neither in the file nor "
                                           "in this agentd's store",
                                           m));
      }
      manifest = std::move(loaded).value();
    }
    for (const auto& e : manifest.entries) {
      if (e.type != ws::EntryType::kFile || !used.insert(e.hash).second) continue;
      if (!contents.count(e.hash)) wanted.push_back(e.hash);
    }
  }
  for (const auto& [hash, content] : contents) {
    if (!used.count(hash)) {
      return InvalidArgument(
          fmt::format("blob {} belongs to no workspace snapshot of the session", hash));
    }
  }
  ASSIGN_OR_RETURN(auto missing, store_->MissingBlobs(caller.tenant_id, wanted));
  if (!missing.empty()) {
    return InvalidArgument(fmt::format(
        "workspace blob {} is neither in the file nor in this agentd's store", missing[0]));
  }

  // The agent version: added when this agentd lacks it, else it must be the same definition.
  ASSIGN_OR_RETURN(auto existing_agent, store_->GetAgent(agent->id, agent->version));
  Json agent_object = agent->ToJson();
  if (existing_agent && existing_agent->tenant_id != caller.tenant_id) {
    return AlreadyExists(fmt::format("agent '{}' exists here", agent->id));
  }
  if (existing_agent) {
    ASSIGN_OR_RETURN(Json have, ParseJson(existing_agent->spec, "stored agent"));
    Json want = agent_object;
    have.erase("created_at");
    want.erase("created_at");
    if (have != want) {
      return AlreadyExists(fmt::format("agent '{}' version {} exists here with a different "
                                       "definition",
                                       agent->id, agent->version));
    }
  } else {
    batch.agents.push_back(
        {agent->id, agent->version, agent->name, DumpJson(agent_object), agent->created_ms,
         caller.tenant_id});
  }
  ASSIGN_OR_RETURN(auto existing_session, store_->GetSession(*sid));
  if (existing_session) return AlreadyExists(fmt::format("session '{}' already exists", *sid));

  // The projections, as the engine would have written them.
  for (auto& [id, row] : ended_turns) batch.turns.push_back(std::move(row));
  for (const auto& [id, t] : state.open_turns) batch.turns.push_back(journal::TurnRowOf(*sid, t));
  const bool active = state.Active();
  store::SessionRow row{*sid,           state.agent_id,         state.agent_version,
                        state.Status(), DumpJson(state.metadata), state.created_ms,
                        state.updated_ms, state.last_seq,       active,
                        caller.tenant_id};
  batch.sessions.push_back(row);
  batch.snapshots.push_back({*sid, state.last_seq, journal::StateToText(state)});
  const size_t event_count = batch.events.size(), blob_count = batch.blobs.size();
  Status st = store_->CommitBlocking(std::move(batch));
  if (st.code() == StatusCode::kAlreadyExists) {
    // Another import won the race: of this session, or of the same agent version.
    ASSIGN_OR_RETURN(auto now, store_->GetSession(*sid));
    if (now) return AlreadyExists(fmt::format("session '{}' already exists", *sid));
    return Aborted("the agent version was imported concurrently; retry");
  }
  RETURN_IF_ERROR(st);
  spdlog::info("session {} imported: {} events, {} blobs{}", *sid, event_count, blob_count,
               active ? "; resuming its unfinished turn" : "");
  if (active) Resume(*sid);
  return SessionObject(row);
}

}  // namespace agentd::engine

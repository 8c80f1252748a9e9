// Session export and import through the HTTP API: a session's journal, turns and workspace
// leave one agentd as an export file and arrive whole in another one with an empty data
// directory, where the session carries on; a damaged, hostile or oversized file is refused
// with an error that says why, and changes nothing.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/base64.h"
#include "sandbox/workspace/workspace.h"
#include "tests/integration/fixture.h"

namespace agentd::testing {
namespace {

namespace fs = std::filesystem;

class TransferTest : public AgentdTest {
 protected:
  void TearDown() override {
    if (other_.proc) {
      other_.proc->Signal(SIGTERM);
      other_.proc->Wait();
    }
    AgentdTest::TearDown();
  }
  // A second agentd with its own, empty data directory.
  void StartOther(std::vector<std::string> args = {}) {
    auto b = StartAgentd(dir_ + "/data2", dir_ + "/agentd2.log", args, {});
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    other_ = std::move(b).value();
  }
  std::string SandboxAgent() {
    Json tools = Json::array({{{"type", "client"},
                               {"name", "ask_user"},
                               {"description", "asks the user"},
                               {"parameters", {{"type", "object"}, {"properties", Json::object()}}}}});
    for (const char* name : {"exec", "read_file", "write_file"}) {
      tools.push_back({{"type", "builtin"}, {"name", name}});
    }
    return CreateAgent({{"tools", tools}});
  }
  Reply Export(const std::string& base, const std::string& sid) {
    return Call("GET", base + "/v1/sessions/" + sid + "/export");
  }
  Reply Import(const std::string& base, const std::string& file,
               const std::string& type = "application/x-ndjson") {
    return CallRaw("POST", base + "/v1/sessions:import", file, {{"Content-Type", type}});
  }
  static std::vector<Json> Lines(const std::string& file) {
    std::vector<Json> out;
    std::istringstream in(file);
    std::string line;
    while (std::getline(in, line)) out.push_back(Json::parse(line));
    return out;
  }
  static std::string Join(const std::vector<Json>& lines) {
    std::string out;
    for (const auto& l : lines) out += l.dump() + "\n";
    return out;
  }
  static std::string Detail(const Reply& r) {
    return r.body.is_object() ? r.body.value("detail", "") : r.raw;
  }
  Json EventsAt(const std::string& base, const std::string& sid) {
    Reply r = Call("GET", base + "/v1/sessions/" + sid + "/events?limit=1000");
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body["data"];
  }

  Agentd other_;
};

TEST_F(TransferTest, ASessionMovesToAnotherAgentdWithItsJournalTurnsAndFiles) {
  std::string agent = SandboxAgent();
  Reply created = Call("POST", Url("/v1/sessions"),
                       {{"agent_id", agent}, {"metadata", {{"team", "blue"}}}});
  ASSERT_EQ(created.status, 201) << created.raw;
  std::string sid = created.body["id"];
  ASSERT_EQ(Turn(sid, R"(call write_file {"path": "notes/a.txt", "content": "hello"})")["status"],
            "completed");
  ASSERT_EQ(Turn(sid, R"(call exec {"command": "echo ' world' >> notes/a.txt; mkdir -p d && head -c 3000 /dev/urandom > d/blob.bin"})")["status"],
            "completed");
  // The last turn waits for the client: it moves unfinished.
  Json waiting = Turn(sid, R"(call ask_user {})");
  ASSERT_EQ(waiting["status"], "requires_action") << waiting.dump();

  Reply file = Export(agentd_.url, sid);
  ASSERT_EQ(file.status, 200) << file.raw;
  EXPECT_EQ(file.headers["content-type"], "application/x-ndjson");
  EXPECT_NE(file.headers["content-disposition"].find(sid), std::string::npos);
  std::vector<Json> lines = Lines(file.raw);
  ASSERT_GE(lines.size(), 4u);
  EXPECT_EQ(lines.front()["kind"], "agentd.session-export");
  EXPECT_EQ(lines.front()["format_version"], 1);
  EXPECT_EQ(lines.front()["session_id"], sid);
  EXPECT_EQ(lines[1]["kind"], "agent");
  EXPECT_EQ(lines[1]["agent"]["id"], agent);
  EXPECT_EQ(lines.back()["kind"], "end");
  Json events = Events(sid);
  EXPECT_EQ(lines.back()["events"], events.size());
  int blobs = 0;
  for (const auto& l : lines) blobs += l["kind"] == "blob";
  // Two snapshots (the second turn changed a.txt and added blob.bin): two manifests, the
  // first a.txt, the second a.txt and blob.bin; nothing twice.
  EXPECT_EQ(blobs, 5);
  EXPECT_EQ(lines.back()["blobs"], blobs);

  StartOther();
  Reply imported = Import(other_.url, file.raw);
  ASSERT_EQ(imported.status, 201) << imported.raw;
  EXPECT_EQ(imported.headers["location"], "/v1/sessions/" + sid);
  EXPECT_EQ(imported.body["status"], "requires_action");
  EXPECT_EQ(imported.body["metadata"], Json({{"team", "blue"}}));

  // The same journal, the same turns, the same agent version.
  EXPECT_EQ(EventsAt(other_.url, sid), events);
  Reply turns_a = Call("GET", Url("/v1/sessions/" + sid + "/turns"));
  Reply turns_b = Call("GET", other_.url + "/v1/sessions/" + sid + "/turns");
  ASSERT_EQ(turns_b.status, 200);
  EXPECT_EQ(turns_b.body["data"], turns_a.body["data"]);
  Reply agent_b = Call("GET", other_.url + "/v1/agents/" + agent);
  ASSERT_EQ(agent_b.status, 200) << agent_b.raw;
  Json agent_a = Call("GET", Url("/v1/agents/" + agent)).body;
  // The same definition, in the importing caller's tenant.
  Json agent_b_def = agent_b.body, agent_a_def = agent_a;
  agent_b_def.erase("tenant_id");
  agent_a_def.erase("tenant_id");
  EXPECT_EQ(agent_b_def, agent_a_def);
  EXPECT_NE(agent_b.body["tenant_id"], agent_a["tenant_id"]);
  EXPECT_EQ(Call("GET", other_.url + "/v1/sessions/" + sid).body["tenant_id"],
            agent_b.body["tenant_id"]);

  // The files come from the imported snapshot (this agentd never ran the session).
  EXPECT_FALSE(fs::exists(dir_ + "/data2/workspaces/" + sid));
  Reply a_txt = Call("GET", other_.url + "/v1/sessions/" + sid + "/workspace/notes/a.txt");
  ASSERT_EQ(a_txt.status, 200) << a_txt.raw;
  EXPECT_EQ(a_txt.raw, "hello world\n");

  // The session carries on there: the waiting turn takes its client output, and the next
  // turn's sandbox starts with the files.
  std::string tid = waiting["id"];
  std::string call_id = waiting["pending_tool_calls"][0]["call_id"];
  Reply out = Call("POST", other_.url + "/v1/sessions/" + sid + "/turns/" + tid + "/tool_outputs",
                   {{"outputs", {{{"call_id", call_id}, {"output", "green"}}}}});
  ASSERT_EQ(out.status, 200) << out.raw;
  Reply next = Call("POST", other_.url + "/v1/sessions/" + sid + "/turns",
                    {{"input", R"(call exec {"command": "cat notes/a.txt; wc -c < d/blob.bin"})"},
                     {"wait", true}});
  ASSERT_EQ(next.status, 200) << next.raw;
  ASSERT_EQ(next.body["status"], "completed") << next.raw;
  Json result = Json::parse(next.body["output"][1]["output"].get<std::string>());
  EXPECT_EQ(result["stdout"], "hello world\n3000\n");
  Reply first = Call("GET", other_.url + "/v1/sessions/" + sid + "/turns/" + tid);
  EXPECT_EQ(first.body["status"], "completed");
  EXPECT_EQ(first.body["output_text"], "done: green");

  // Importing it again, here or where it came from, is a conflict that changes nothing.
  int64_t seq_b = Call("GET", other_.url + "/v1/sessions/" + sid).body["last_seq"];
  Reply again = Import(other_.url, file.raw);
  EXPECT_EQ(again.status, 409) << again.raw;
  EXPECT_NE(Detail(again).find("already exists"), std::string::npos) << again.raw;
  EXPECT_EQ(Call("GET", other_.url + "/v1/sessions/" + sid).body["last_seq"], seq_b);
  EXPECT_EQ(Import(agentd_.url, file.raw).status, 409);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid)).body["status"], "requires_action");

  EXPECT_EQ(Call("GET", Url("/v1/sessions/ses_nope/export")).status, 404);
  EXPECT_EQ(Call("POST", Url("/v1/sessions/" + sid + "/export")).status, 405);
}

TEST_F(TransferTest, DamagedHostileAndOversizedFilesAreRefusedAndChangeNothing) {
  std::string agent = SandboxAgent();
  std::string sid = CreateSession(agent);
  ASSERT_EQ(Turn(sid, R"(call write_file {"path": "a.txt", "content": "some text that is long enough to be compressed by zstd, some text that is long enough"})")["status"],
            "completed");
  ASSERT_EQ(Turn(sid, "say hi")["status"], "completed");
  Reply exported = Export(agentd_.url, sid);
  ASSERT_EQ(exported.status, 200);
  const std::vector<Json> good = Lines(exported.raw);

  std::string cfg = dir_ + "/small.yaml";
  std::ofstream(cfg) << "max_import_bytes: " << exported.raw.size() + 1000 << "\n";
  StartOther({"--config", cfg});

  auto first_of = [&](const std::vector<Json>& lines, const std::string& kind) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i]["kind"] == kind) return i;
    }
    ADD_FAILURE() << "no " << kind;
    return size_t{0};
  };
  auto event_index = [&](const std::vector<Json>& lines, const std::string& type) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i]["kind"] == "event" && lines[i]["event"]["type"] == type) return i;
    }
    ADD_FAILURE() << "no " << type;
    return size_t{0};
  };
  struct Case {
    std::string name;
    std::string file;
    int status;
    std::string detail;  // a part of the error's detail
  };
  std::vector<Case> cases;
  auto edit = [&](std::string name, int status, std::string detail, auto change) {
    std::vector<Json> lines = good;
    change(lines);
    cases.push_back({std::move(name), Join(lines), status, std::move(detail)});
  };
  cases.push_back({"empty", "", 400, "empty"});
  cases.push_back({"not json", "{\"kind\": \"agentd.session-export\"\nnope\n", 400, "line 1"});
  std::string blank = exported.raw;
  blank.insert(blank.find('\n', blank.find('\n') + 1) + 1, "\n");
  cases.push_back({"blank line", blank, 400, "line 3: empty line"});
  edit("not an export", 400, "not an agentd session export",
       [](auto& l) { l[0]["kind"] = "something.else"; });
  edit("newer format", 422, "version 2", [](auto& l) { l[0]["format_version"] = 2; });
  edit("bad session id", 400, "not a session id",
       [](auto& l) { l[0]["session_id"] = "../../etc"; });
  edit("truncated", 400, "no end record", [](auto& l) { l.pop_back(); });
  edit("unknown record", 400, "unknown record kind 'macro'",
       [](auto& l) { l.insert(l.end() - 1, Json{{"kind", "macro"}}); });
  edit("seq gap", 400, "expected seq", [&](auto& l) {
    l.erase(l.begin() + static_cast<long>(event_index(l, "turn.started")));
    l.back()["events"] = l.back()["events"].template get<int>() - 1;
  });
  edit("end counts", 400, "end record counts", [](auto& l) { l.back()["events"] = 1; });
  edit("bad time", 400, "'time'", [&](auto& l) {
    l[event_index(l, "turn.queued")]["event"]["time"] = "yesterday";
  });
  edit("hostile metadata", 400, "metadata", [&](auto& l) {
    l[event_index(l, "session.created")]["event"]["data"]["metadata"] = {{"k", Json::array()}};
  });
  edit("bad turn input", 400, "input", [&](auto& l) {
    l[event_index(l, "turn.queued")]["event"]["data"]["input"] = "not items";
  });
  edit("wrong agent", 400, "not the exported agent", [&](auto& l) {
    l[event_index(l, "session.created")]["event"]["data"]["agent_version"] = 7;
  });
  edit("unknown provider", 400, "provider", [](auto& l) {
    l[1]["agent"]["model"]["provider"] = "nope";
  });
  edit("tampered blob", 400, "does not match its hash", [&](auto& l) {
    Json& b = l[first_of(l, "blob")];
    b["codec"] = "";
    std::string other = "x";
    b["size"] = 1;
    b["data"] = Base64Encode(other);
  });
  edit("not base64", 400, "base64", [&](auto& l) { l[first_of(l, "blob")]["data"] = "@@@"; });
  edit("missing blob", 400, "neither in the file nor", [&](auto& l) {
    l.erase(l.begin() + static_cast<long>(first_of(l, "blob")));
    l.back()["blobs"] = l.back()["blobs"].template get<int>() - 1;
  });
  edit("stray blob", 400, "belongs to no workspace snapshot", [&](auto& l) {
    l.insert(l.end() - 1, Json{{"kind", "blob"}, {"hash", sandbox::workspace::ContentHash("y")},
                               {"size", 1}, {"codec", ""}, {"data", Base64Encode("y")}});
    l.back()["blobs"] = l.back()["blobs"].template get<int>() + 1;
  });
  edit("record after end", 400, "after the end record",
       [](auto& l) { l.push_back(l.back()); });
  std::string big = exported.raw + std::string(2000, ' ');
  cases.push_back({"oversized", big, 413, "larger than"});

  for (const auto& c : cases) {
    Reply r = Import(other_.url, c.file);
    EXPECT_EQ(r.status, c.status) << c.name << ": " << r.raw;
    EXPECT_NE(Detail(r).find(c.detail), std::string::npos) << c.name << ": " << r.raw;
  }
  Reply wrong_type = Import(other_.url, exported.raw, "text/plain");
  EXPECT_EQ(wrong_type.status, 415) << wrong_type.raw;

  // Nothing of any of them was written.
  EXPECT_EQ(Call("GET", other_.url + "/v1/sessions").body["data"].size(), 0u);
  EXPECT_EQ(Call("GET", other_.url + "/v1/agents").body["data"].size(), 0u);
  // And the file as exported goes in.
  Reply ok = Import(other_.url, exported.raw);
  ASSERT_EQ(ok.status, 201) << ok.raw;
  EXPECT_EQ(ok.body["status"], "idle");
  Reply a = Call("GET", other_.url + "/v1/sessions/" + sid + "/workspace/a.txt");
  EXPECT_EQ(a.status, 200) << a.raw;
}

// Workspace blobs belong to a tenant. An export imported into another tenant of the same
// agentd brings its blobs along as that tenant's own; a file that leaves them out, counting
// on the copies another tenant holds, is refused, as it would be on an agentd without them.
TEST_F(TransferTest, AnImportIntoAnotherTenantBringsItsOwnBlobs) {
  std::string agent = SandboxAgent();
  std::string sid = CreateSession(agent);
  Json wrote = Turn(sid, R"(call write_file {"path": "a.txt", "content": "tenant a's file"})");
  ASSERT_EQ(wrote["status"], "completed");
  Reply exported = Export(agentd_.url, sid);
  ASSERT_EQ(exported.status, 200) << exported.raw;

  Reply tenant = Call("POST", Url("/v1/tenants"), {{"name", "beta"}});
  ASSERT_EQ(tenant.status, 201) << tenant.raw;
  Json policy = {{"version", "2026-11-01"},
                 {"statements",
                  Json::array({{{"effect", "allow"},
                                {"actions", Json::array({"agents:*", "sessions:*"})},
                                {"resources", Json::array({"agentd:${principal.tenant}:*"})}}})}};
  Reply bob = Call("POST", Url("/v1/principals"),
                   {{"tenant_id", tenant.body["id"]},
                    {"name", "bob"},
                    {"kind", "user"},
                    {"policies", Json::array({policy})}});
  ASSERT_EQ(bob.status, 201) << bob.raw;
  Reply key = Call("POST", Url("/v1/principals/" + bob.body["id"].get<std::string>() + "/api-keys"),
                   Json::object());
  ASSERT_EQ(key.status, 201) << key.raw;
  const std::string as_b = "Bearer " + key.body["key"].get<std::string>();

  // The same session under ids of its own each time (this agentd has the originals).
  auto renamed = [&](char c, bool with_blobs) {
    std::string file = exported.raw;
    for (auto [from, to] : {std::pair{sid, "ses_" + std::string(26, c)},
                            std::pair{agent, "agt_" + std::string(26, c)}}) {
      for (size_t at; (at = file.find(from)) != std::string::npos;) {
        file.replace(at, from.size(), to);
      }
    }
    std::vector<Json> lines;
    for (auto& l : Lines(file)) {
      if (with_blobs || l["kind"] != "blob") lines.push_back(std::move(l));
    }
    if (!with_blobs) lines.back()["blobs"] = 0;
    return Join(lines);
  };
  auto import = [&](const std::string& file, const std::string& auth) {
    return CallRaw("POST", Url("/v1/sessions:import"), file,
                   {{"Content-Type", "application/x-ndjson"}, {"Authorization", auth}});
  };
  auto read = [&](char c, const std::string& auth) {
    return Call("GET", Url("/v1/sessions/ses_" + std::string(26, c) + "/workspace/a.txt"), Json(),
                {{"Authorization", auth}});
  };
  const std::string as_a = "Bearer " + agentd_.admin_key;

  // Without its blobs, the file goes into the tenant that holds them, and no other.
  Reply own = import(renamed('a', false), as_a);
  ASSERT_EQ(own.status, 201) << own.raw;
  EXPECT_EQ(read('a', as_a).raw, "tenant a's file");
  Reply refused = import(renamed('b', false), as_b);
  EXPECT_EQ(refused.status, 400) << refused.raw;
  EXPECT_NE(Detail(refused).find("neither in the file nor"), std::string::npos) << refused.raw;

  Reply imported = import(renamed('b', true), as_b);
  ASSERT_EQ(imported.status, 201) << imported.raw;
  EXPECT_EQ(imported.body["tenant_id"], tenant.body["id"]);
  Reply file_b = read('b', as_b);
  EXPECT_EQ(file_b.status, 200) << file_b.raw;
  EXPECT_EQ(file_b.raw, "tenant a's file");
  Reply list_b = Call("GET", Url("/v1/sessions/ses_" + std::string(26, 'b') + "/workspace"), Json(),
                      {{"Authorization", as_b}});
  ASSERT_EQ(list_b.status, 200) << list_b.raw;
  EXPECT_EQ(list_b.body["data"],
            Json::array({{{"path", "a.txt"}, {"type", "file"}, {"size", 15}}}));
  // And the session it came from still has its files.
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid + "/workspace/a.txt")).raw, "tenant a's file");
}

TEST_F(TransferTest, AgentctlExportsToAPrivateFileAndImportsIt) {
  std::string sid = CreateSession(SandboxAgent());
  ASSERT_EQ(Turn(sid, R"(call write_file {"path": "a.txt", "content": "from the cli"})")["status"],
            "completed");
  StartOther();
  auto agentctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), BinPath("agentctl"));
    // Both agentds started from empty data dirs; each has its own admin key.
    std::string key = AdminKeyFor(args.size() > 2 ? args[2] : "");
    auto p = Process::Start(args, {{"AGENTD_API_KEY", key}}, dir_ + "/agentctl.log");
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait();
    return std::make_pair(code, (*p)->Output());
  };
  std::string path = dir_ + "/session.jsonl";
  auto [code, out] = agentctl({"--server", agentd_.url, "sessions", "export", sid, "-o", path});
  ASSERT_EQ(code, 0) << out;
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);  // the file holds the whole conversation
  // An existing file is never overwritten.
  EXPECT_EQ(agentctl({"--server", agentd_.url, "sessions", "export", sid, "-o", path}).first, 2);
  EXPECT_EQ(agentctl({"--server", agentd_.url, "sessions", "export", "ses_nope", "-o",
                      dir_ + "/nope.jsonl"}).first,
            3);
  EXPECT_FALSE(fs::exists(dir_ + "/nope.jsonl"));

  auto [icode, iout] = agentctl({"--server", other_.url, "sessions", "import", path});
  ASSERT_EQ(icode, 0) << iout;
  EXPECT_NE(iout.find(sid), std::string::npos) << iout;
  Reply a = Call("GET", other_.url + "/v1/sessions/" + sid + "/workspace/a.txt");
  EXPECT_EQ(a.raw, "from the cli");
  // Again: a conflict, exit 5.
  EXPECT_EQ(agentctl({"--server", other_.url, "sessions", "import", path}).first, 5);
}

}  // namespace
}  // namespace agentd::testing

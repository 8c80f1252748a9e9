// Authentication, tenants and the policy gate, through the HTTP API of a real agentd.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <thread>

#include "common/clock.h"
#include "identity/jwt.h"
#include "tests/integration/fixture.h"

namespace agentd::testing {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

Headers As(const std::string& key) { return {{"Authorization", "Bearer " + key}}; }

// A policy document allowing `actions` on everything in the principal's own tenant.
Json OwnTenant(Json actions, std::string sid = "own-tenant") {
  return {{"version", "2026-11-01"},
          {"statements",
           Json::array({{{"sid", sid},
                         {"effect", "allow"},
                         {"actions", actions},
                         {"resources", Json::array({"agentd:${principal.tenant}:*"})}}})}};
}

class IdentityTest : public AgentdTest {
 protected:
  std::string NewTenant(const std::string& name) {
    Reply r = Call("POST", Url("/v1/tenants"), {{"name", name}});
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  std::string NewPrincipal(const std::string& tenant, const std::string& name, Json policies,
                           Json extra = Json::object()) {
    Json body = {{"tenant_id", tenant}, {"name", name}, {"kind", "user"}, {"policies", policies}};
    for (auto& [k, v] : extra.items()) body[k] = v;
    Reply r = Call("POST", Url("/v1/principals"), body);
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  std::string NewKey(const std::string& principal, Json body = Json::object()) {
    Reply r = Call("POST", Url("/v1/principals/" + principal + "/api-keys"), body);
    EXPECT_EQ(r.status, 201) << r.raw;
    EXPECT_EQ(r.headers["cache-control"], "no-store");
    return r.body.value("key", "");
  }
  Json AgentBody() {
    return {{"name", "a"}, {"instructions", "x"}, {"model", ModelSpec()},
            {"tools", Json::array({HttpTool("echo", "/echo", true)})}};
  }
};

TEST_F(IdentityTest, TheFirstStartWritesAPrivateAdminKeyAndEveryRequestNeedsAKey) {
  struct stat st {};
  ASSERT_EQ(stat((dir_ + "/data/admin.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_FALSE(agentd_.admin_key.empty());
  EXPECT_EQ(agentd_.admin_key.rfind("agk_key_", 0), 0u);

  // Health checks are open; everything else needs a credential.
  EXPECT_EQ(Call("GET", Url("/healthz"), Json(), {{"Authorization", ""}}).status, 200);
  // The admin key's id with a wrong secret of the right length.
  const std::string valid_looking =
      agentd_.admin_key.substr(0, agentd_.admin_key.find('.') + 1) + std::string(43, 'A');
  struct Case {
    std::string header;
    std::string reason;
  };
  std::vector<Case> cases = {
      {"", "missing credentials"},
      {"Basic YWRtaW46YWRtaW4=", "must be 'Bearer"},
      {"Bearer", "must be 'Bearer"},
      {"Bearer sk-something-else", "not an agentd API key"},
      {"Bearer agk_key_short.x", "malformed API key"},
      {"Bearer agk_key_01234567890123456789012345.abc", "malformed API key"},
      {"Bearer " + valid_looking, "unknown API key"},
      {"Bearer " + std::string(9000, 'a'), "too long"},
  };
  for (const auto& c : cases) {
    for (const char* path : {"/v1/agents", "/v1/sessions", "/v1/nope"}) {
      Reply r = Call("GET", Url(path), Json(), {{"Authorization", c.header}});
      EXPECT_EQ(r.status, 401) << c.header << " " << r.raw;
      EXPECT_EQ(r.headers["www-authenticate"], "Bearer realm=\"agentd\"");
      EXPECT_NE(r.body.value("detail", "").find(c.reason), std::string::npos)
          << c.header << ": " << r.raw;
      // The credential is never repeated back.
      if (c.header.size() > 12) {
        EXPECT_EQ(r.raw.find(c.header.substr(7)), std::string::npos);
      }
    }
  }
  // Nothing was created by any of them, and the admin key works.
  Reply agents = Call("GET", Url("/v1/agents"));
  ASSERT_EQ(agents.status, 200);
  EXPECT_TRUE(agents.body["data"].empty());
  // A restart keeps the key (it is not written again).
  RestartDaemon(SIGTERM);
  EXPECT_EQ(agentd_.admin_key, ReadAdminKey(dir_ + "/data"));
  EXPECT_EQ(Call("GET", Url("/v1/agents")).status, 200);
}

TEST_F(IdentityTest, TenantsSeeOnlyTheirOwnObjectsAndForeignIdsLookMissing) {
  std::string acme = NewTenant("acme"), beta = NewTenant("beta");
  Json all = OwnTenant({"agents:*", "sessions:*", "principals:Read"});
  std::string alice = NewPrincipal(acme, "alice", Json::array({all}));
  std::string bob = NewPrincipal(beta, "bob", Json::array({all}));
  std::string ak = NewKey(alice), bk = NewKey(bob);

  Reply agent = Call("POST", Url("/v1/agents"), AgentBody(), As(ak));
  ASSERT_EQ(agent.status, 201) << agent.raw;
  EXPECT_EQ(agent.body["tenant_id"], acme);
  std::string aid = agent.body["id"];
  Reply session = Call("POST", Url("/v1/sessions"), {{"agent_id", aid}}, As(ak));
  ASSERT_EQ(session.status, 201) << session.raw;
  std::string sid = session.body["id"];
  EXPECT_EQ(session.body["tenant_id"], acme);
  Reply turn = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                    {{"input", "call echo {\"x\":1}"}, {"wait", true}}, As(ak));
  ASSERT_EQ(turn.status, 200) << turn.raw;
  EXPECT_EQ(turn.body["status"], "completed");

  // Bob, in another tenant, meets 404 on every route that names Alice's objects, with the
  // same answer as for ids that exist nowhere.
  const std::string ghost_s = "ses_00000000000000000000000000";
  const std::string ghost_a = "agt_00000000000000000000000000";
  const std::string tid = turn.body["id"];
  struct Route {
    std::string method, path;
    Json body;
  };
  auto routes = [&](const std::string& s, const std::string& a) {
    return std::vector<Route>{
        {"GET", "/v1/agents/" + a, Json()},
        {"PUT", "/v1/agents/" + a, AgentBody()},
        {"POST", "/v1/agents/" + a + "/cancel-turns", Json()},
        {"POST", "/v1/sessions", {{"agent_id", a}}},
        {"GET", "/v1/sessions/" + s, Json()},
        {"DELETE", "/v1/sessions/" + s, Json()},
        {"POST", "/v1/sessions/" + s + "/cancel", Json()},
        {"GET", "/v1/sessions/" + s + "/export", Json()},
        {"GET", "/v1/sessions/" + s + "/events", Json()},
        {"GET", "/v1/sessions/" + s + "/workspace", Json()},
        {"GET", "/v1/sessions/" + s + "/turns", Json()},
        {"POST", "/v1/sessions/" + s + "/turns", {{"input", "say hi"}}},
        {"GET", "/v1/sessions/" + s + "/turns/" + tid, Json()},
        {"POST", "/v1/sessions/" + s + "/turns/" + tid + "/tool_outputs",
         {{"outputs", Json::array()}}},
        {"GET", "/v1/principals/" + alice, Json()},
        {"POST", "/v1/principals/" + alice + "/api-keys", Json::object()},
    };
  };
  auto real = routes(sid, aid), ghost = routes(ghost_s, ghost_a);
  for (size_t i = 0; i < real.size(); ++i) {
    Reply r = Call(real[i].method, Url(real[i].path), real[i].body, As(bk));
    EXPECT_EQ(r.status, 404) << real[i].method << " " << real[i].path << " " << r.raw;
    Reply g = Call(ghost[i].method, Url(ghost[i].path), ghost[i].body, As(bk));
    EXPECT_EQ(g.status, 404) << ghost[i].method << " " << ghost[i].path << " " << g.raw;
    // Same shape: the detail differs only by the id named.
    std::string rd = r.body.value("detail", ""), gd = g.body.value("detail", "");
    for (auto [from, to] : {std::pair{sid, ghost_s}, std::pair{aid, ghost_a}}) {
      for (size_t at; (at = rd.find(from)) != std::string::npos;) rd.replace(at, from.size(), to);
    }
    if (real[i].path.find(alice) == std::string::npos) {
      EXPECT_EQ(rd, gd) << real[i].path;
    }
  }
  // Lists never cross tenants.
  EXPECT_TRUE(Call("GET", Url("/v1/agents"), Json(), As(bk)).body["data"].empty());
  EXPECT_TRUE(Call("GET", Url("/v1/sessions"), Json(), As(bk)).body["data"].empty());
  EXPECT_EQ(Call("GET", Url("/v1/principals"), Json(), As(bk)).body["data"].size(), 1u);
  // And nothing of Alice's changed: her session still has its one completed turn.
  Reply turns = Call("GET", Url("/v1/sessions/" + sid + "/turns"), Json(), As(ak));
  ASSERT_EQ(turns.status, 200);
  EXPECT_EQ(turns.body["data"].size(), 1u);
  EXPECT_EQ(Call("GET", Url("/v1/agents/" + aid), Json(), As(ak)).body["version"], 1);
  // Alice cannot create principals (not allowed) nor reach Beta's (404).
  Reply mk = Call("POST", Url("/v1/principals"),
                  {{"tenant_id", acme}, {"name", "mallory"}, {"kind", "user"}}, As(ak));
  EXPECT_EQ(mk.status, 403) << mk.raw;
  Reply other = Call("POST", Url("/v1/principals"),
                     {{"tenant_id", beta}, {"name", "mallory"}, {"kind", "user"}}, As(ak));
  EXPECT_EQ(other.status, 404) << other.raw;
  Reply tenant = Call("POST", Url("/v1/tenants"), {{"name", "gamma"}}, As(ak));
  EXPECT_EQ(tenant.status, 403) << tenant.raw;
}

TEST_F(IdentityTest, PolicyDecidesEveryCallExplicitDenyWins) {
  std::string t = NewTenant("acme");
  Json reader = OwnTenant({"agents:Read", "sessions:Read"}, "read");
  Json deny = {{"version", "2026-11-01"},
               {"statements", Json::array({{{"sid", "no-deletes"},
                                            {"effect", "deny"},
                                            {"actions", Json::array({"sessions:Delete"})},
                                            {"resources", Json::array({"*"})}}})}};
  std::string carol = NewPrincipal(t, "carol", Json::array({reader}));
  std::string dave = NewPrincipal(t, "dave", Json::array({OwnTenant({"*"}), deny}));
  std::string ck = NewKey(carol), dk = NewKey(dave);

  // Carol may read but not create.
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), As(ck)).status, 200);
  Reply create = Call("POST", Url("/v1/agents"), AgentBody(), As(ck));
  ASSERT_EQ(create.status, 403) << create.raw;
  EXPECT_NE(create.body.value("detail", "").find("agents:Create"), std::string::npos);
  EXPECT_TRUE(Call("GET", Url("/v1/agents"), Json(), As(ck)).body["data"].empty());

  // Dave may do anything in his tenant except delete sessions.
  Reply agent = Call("POST", Url("/v1/agents"), AgentBody(), As(dk));
  ASSERT_EQ(agent.status, 201) << agent.raw;
  Reply s = Call("POST", Url("/v1/sessions"), {{"agent_id", agent.body["id"]}}, As(dk));
  ASSERT_EQ(s.status, 201);
  std::string sid = s.body["id"];
  Reply del = Call("DELETE", Url("/v1/sessions/" + sid), Json(), As(dk));
  ASSERT_EQ(del.status, 403) << del.raw;
  EXPECT_NE(del.body.value("detail", "").find("no-deletes"), std::string::npos);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid), Json(), As(ck)).status, 200);
  // Carol may not invoke Dave's session even though she can read it.
  Reply invoke = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "say hi"}}, As(ck));
  EXPECT_EQ(invoke.status, 403) << invoke.raw;
  EXPECT_TRUE(Call("GET", Url("/v1/sessions/" + sid + "/turns"), Json(), As(ck)).body["data"].empty());

  // Simulation says which statement decided, for oneself or (as admin) for another.
  Reply sim = Call("POST", Url("/v1/policies:simulate"),
                   {{"principal_id", dave},
                    {"action", "sessions:Delete"},
                    {"resource", "agentd:" + t + ":session/" + sid}});
  ASSERT_EQ(sim.status, 200) << sim.raw;
  EXPECT_EQ(sim.body["allowed"], false);
  EXPECT_EQ(sim.body["reason"], "explicit_deny");
  EXPECT_EQ(sim.body["statement"]["sid"], "no-deletes");
  EXPECT_EQ(sim.body["statement"]["policy_index"], 1);
  Reply sim2 = Call("POST", Url("/v1/policies:simulate"),
                    {{"action", "sessions:Read"}, {"resource", "agentd:" + t + ":session/x"}},
                    As(ck));
  EXPECT_EQ(sim2.status, 403) << sim2.raw;  // carol may not simulate at all
  Reply sim3 = Call("POST", Url("/v1/policies:simulate"),
                    {{"principal_id", carol},
                     {"action", "agents:Create"},
                     {"resource", "agentd:" + t + ":agent/*"}});
  ASSERT_EQ(sim3.status, 200) << sim3.raw;
  EXPECT_EQ(sim3.body["allowed"], false);
  EXPECT_EQ(sim3.body["reason"], "default_deny");
  EXPECT_TRUE(sim3.body["statement"].is_null());
}

TEST_F(IdentityTest, RevokedAndExpiredKeysStopWorking) {
  std::string t = NewTenant("acme");
  std::string p = NewPrincipal(t, "erin", Json::array({OwnTenant({"agents:Read"})}));
  std::string key = NewKey(p);
  Reply ok = Call("GET", Url("/v1/agents"), Json(), As(key));
  ASSERT_EQ(ok.status, 200);
  std::string key_id = key.substr(4, key.find('.') - 4);
  Reply revoke = Call("DELETE", Url("/v1/api-keys/" + key_id));
  ASSERT_EQ(revoke.status, 200) << revoke.raw;
  EXPECT_FALSE(revoke.body.contains("key"));
  Reply after = Call("GET", Url("/v1/agents"), Json(), As(key));
  EXPECT_EQ(after.status, 401);
  EXPECT_NE(after.body.value("detail", "").find("revoked"), std::string::npos) << after.raw;
  // Revocation survives a restart.
  RestartDaemon(SIGKILL);
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), As(key)).status, 401);

  std::string soon = FormatRfc3339(SystemClock::Default()->NowMillis() + 1500);
  std::string short_key = NewKey(p, {{"expires_at", soon}});
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), As(short_key)).status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(1700));
  Reply expired = Call("GET", Url("/v1/agents"), Json(), As(short_key));
  EXPECT_EQ(expired.status, 401);
  EXPECT_NE(expired.body.value("detail", "").find("expired"), std::string::npos) << expired.raw;

  // A key with a past expiry, or for no principal, is refused.
  Reply past = Call("POST", Url("/v1/principals/" + p + "/api-keys"),
                    {{"expires_at", "2020-01-01T00:00:00Z"}});
  EXPECT_EQ(past.status, 400) << past.raw;
  EXPECT_EQ(Call("POST", Url("/v1/principals/prn_00000000000000000000000000/api-keys"),
                 Json::object())
                .status,
            404);
  EXPECT_EQ(Call("DELETE", Url("/v1/api-keys/key_00000000000000000000000000")).status, 404);
}

TEST_F(IdentityTest, MalformedTenantsPrincipalsAndPoliciesAreRefusedAndChangeNothing) {
  std::string t = NewTenant("acme");
  EXPECT_EQ(Call("POST", Url("/v1/tenants"), {{"name", "acme"}}).status, 409);
  for (Json bad : {Json{{"name", ""}}, Json{{"name", "a b"}}, Json{{"nme", "x"}},
                   Json{{"name", std::string(200, 'a')}}, Json::array()}) {
    EXPECT_EQ(Call("POST", Url("/v1/tenants"), bad).status, 400) << bad.dump();
  }
  struct Case {
    Json body;
    int status;
    std::string detail;
  };
  Json bad_syntax = {{"version", "2026-11-01"},
                     {"statements", Json::array({{{"effect", "allow"},
                                                  {"actions", Json::array({"agents:Craete"})},
                                                  {"resources", Json::array({"*"})}}})}};
  std::vector<Case> cases = {
      {{{"tenant_id", t}, {"name", "x"}, {"kind", "robot"}}, 400, "'kind'"},
      {{{"tenant_id", t}, {"name", "x"}, {"kind", "user"}, {"policies", Json::array({bad_syntax})}},
       400, "policies[0]"},
      {{{"tenant_id", t}, {"name", "x"}, {"kind", "user"}, {"policies", {{"a", 1}}}}, 400,
       "'policies'"},
      {{{"tenant_id", t}, {"name", "x"}, {"kind", "user"}, {"groups", Json::array({1})}}, 400,
       "groups[0]"},
      {{{"tenant_id", t}, {"name", "x"}, {"kind", "user"}, {"attributes", "x"}}, 400,
       "'attributes'"},
      {{{"tenant_id", t}, {"name", "x"}, {"kind", "user"}, {"extra", 1}}, 400, "extra"},
      {{{"name", "x"}, {"kind", "user"}}, 400, "tenant_id"},
      {{{"tenant_id", "ten_00000000000000000000000000"}, {"name", "x"}, {"kind", "user"}}, 404,
       "not found"},
  };
  for (const auto& c : cases) {
    Reply r = Call("POST", Url("/v1/principals"), c.body);
    EXPECT_EQ(r.status, c.status) << c.body.dump() << " " << r.raw;
    EXPECT_NE(r.body.value("detail", "").find(c.detail), std::string::npos)
        << c.body.dump() << " " << r.raw;
  }
  // The policy error names where it is.
  Reply r = Call("POST", Url("/v1/principals"), cases[1].body);
  EXPECT_NE(r.body.value("detail", "").find("statements[0].actions[0]"), std::string::npos)
      << r.raw;
  Reply malformed_json = CallRaw("POST", Url("/v1/principals"), "{\"tenant_id\": ",
                                 {{"Content-Type", "application/json"}});
  EXPECT_EQ(malformed_json.status, 400);
  // None of them made a principal: the default tenant's list has only the admin; acme's none.
  std::string k = NewKey(NewPrincipal(t, "lister", Json::array({OwnTenant({"principals:Read"})})));
  EXPECT_EQ(Call("GET", Url("/v1/principals"), Json(), As(k)).body["data"].size(), 1u);
  EXPECT_EQ(Call("POST", Url("/v1/principals"),
                 {{"tenant_id", t}, {"name", "lister"}, {"kind", "user"}})
                .status,
            409);
}

TEST_F(IdentityTest, EveryRequestIsAuditedAndTheChainsVerifyLiveAndOffline) {
  std::string acme = NewTenant("acme");
  std::string alice = NewPrincipal(acme, "alice", Json::array({OwnTenant({"agents:*"})}));
  std::string ak = NewKey(alice);
  ASSERT_EQ(Call("POST", Url("/v1/agents"), AgentBody(), As(ak)).status, 201);
  ASSERT_EQ(Call("DELETE", Url("/v1/sessions/ses_00000000000000000000000000"), Json(), As(ak))
                .status,
            404);
  ASSERT_EQ(Call("GET", Url("/v1/audit"), Json(), As(ak)).status, 403);
  ASSERT_EQ(Call("GET", Url("/v1/agents"), Json(), {{"Authorization", "Bearer nope"}}).status, 401);

  // Alice's tenant chain, read by the admin: who, what, on what, decided how, answered what.
  Reply log = Call("GET", Url("/v1/audit?tenant_id=" + acme));
  ASSERT_EQ(log.status, 200) << log.raw;
  std::vector<std::tuple<std::string, std::string, std::string>> seen;
  for (const auto& e : log.body["data"]) {
    EXPECT_EQ(e["tenant_id"], acme);
    EXPECT_EQ(e["principal"], alice);
    seen.emplace_back(e["action"], e["decision"], e["result"]);
  }
  std::vector<std::tuple<std::string, std::string, std::string>> want = {
      {"agents:Create", "allow", "201"},
      {"sessions:Delete", "deny", "404"},  // no such session: refused before any effect
      {"audit:Read", "deny", "403"},
  };
  EXPECT_EQ(seen, want) << log.raw;
  EXPECT_EQ(log.body["data"][0]["seq"], 1);
  EXPECT_EQ(log.body["data"][1]["prev_hash"], log.body["data"][0]["hash"]);
  // The failed sign-in is in the system chain, without the credential.
  Reply sys = Call("GET", Url("/v1/audit?tenant_id="));
  ASSERT_EQ(sys.status, 200) << sys.raw;
  ASSERT_FALSE(sys.body["data"].empty());
  EXPECT_EQ(sys.body["data"].back()["action"], "auth:Authenticate");
  EXPECT_EQ(sys.body["data"].back()["result"], "401");
  EXPECT_EQ(sys.raw.find("nope"), std::string::npos);
  // Another tenant's chain looks missing to Alice.
  std::string beta = NewTenant("beta");
  EXPECT_EQ(Call("GET", Url("/v1/audit?tenant_id=" + beta), Json(), As(ak)).status, 404);
  // The keys are published, and agentctl verifies every chain it can read.
  Reply jwks = Call("GET", Url("/.well-known/jwks.json"), Json(), {{"Authorization", ""}});
  ASSERT_EQ(jwks.status, 200);
  ASSERT_EQ(jwks.body["keys"].size(), 1u);
  EXPECT_EQ(jwks.body["keys"][0]["crv"], "Ed25519");
  EXPECT_FALSE(jwks.body["keys"][0].contains("d"));
  auto agentctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), BinPath("agentctl"));
    auto p = Process::Start(args, {{"AGENTD_API_KEY", agentd_.admin_key}}, dir_ + "/agentctl.log");
    EXPECT_TRUE(p.ok());
    int code = (*p)->Wait();
    return std::make_pair(code, (*p)->Output());
  };
  auto [code, out] = agentctl({"--server", agentd_.url, "audit", "verify", "--tenant", acme});
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;

  // Offline, on a copy taken after a clean stop (which signs every chain head), with the
  // data directory's own key; then a changed entry is found and named.
  agentd_.proc->Signal(SIGTERM);
  ASSERT_EQ(agentd_.proc->Wait(), 0);
  agentd_.proc.reset();
  std::string copy = dir_ + "/copy";
  std::filesystem::copy(dir_ + "/data", copy, std::filesystem::copy_options::recursive);
  auto [ok_code, ok_out] = agentctl({"audit", "verify", "--data-dir", copy});
  EXPECT_EQ(ok_code, 0) << ok_out;
  EXPECT_EQ(ok_out.find("NOT checked"), std::string::npos) << ok_out;
  ASSERT_EQ(std::system(("sqlite3 " + copy + "/agentd.db \"UPDATE audit_log SET result='200' "
                         "WHERE tenant_id='" + acme + "' AND seq=2\"")
                            .c_str()),
            0);
  auto [bad_code, bad_out] = agentctl({"audit", "verify", "--data-dir", copy});
  EXPECT_EQ(bad_code, 10) << bad_out;
  EXPECT_NE(bad_out.find("seq 2"), std::string::npos) << bad_out;
}

// The events of `sid` of one type.
Json EventsOf(const Json& events, const std::string& type) {
  Json out = Json::array();
  for (const auto& e : events) {
    if (e["type"] == type) out.push_back(e);
  }
  return out;
}

TEST_F(IdentityTest, ToolCallsNeedTheAgentAndThePrincipalToAllowThem) {
  std::string t = NewTenant("acme");
  // Tina may run sessions but call only the echo tool (of any agent in her tenant).
  Json tools_echo = {{"version", "2026-11-01"},
                     {"statements", Json::array({{{"sid", "echo-only"},
                                                  {"effect", "allow"},
                                                  {"actions", Json::array({"tools:Call"})},
                                                  {"resources", Json::array(
                                                      {"agentd:${principal.tenant}:tool/*/echo"})}}})}};
  std::string tina = NewPrincipal(t, "tina", Json::array({OwnTenant({"agents:*", "sessions:*"}),
                                                          tools_echo}));
  std::string tk = NewKey(tina);
  Json body = AgentBody();
  body["tools"] = Json::array({HttpTool("echo", "/echo", true), HttpTool("effect", "/effect", true)});
  Reply agent = Call("POST", Url("/v1/agents"), body, As(tk));
  ASSERT_EQ(agent.status, 201) << agent.raw;
  Reply session = Call("POST", Url("/v1/sessions"), {{"agent_id", agent.body["id"]}}, As(tk));
  std::string sid = session.body["id"];
  // A model steered into calling a tool Tina may not use: the call is refused, the model
  // told why, and the tool never runs.
  Reply turn = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                    {{"input", "call effect {\"n\":1}"}, {"wait", true}}, As(tk));
  ASSERT_EQ(turn.status, 200) << turn.raw;
  EXPECT_EQ(turn.body["status"], "completed");
  Json events = Events(sid);
  Json failed = EventsOf(events, "tool_call.failed");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_EQ(failed[0]["data"]["error"]["code"], "permission_denied");
  EXPECT_NE(failed[0]["data"]["error"]["message"].get<std::string>().find("principal"),
            std::string::npos);
  EXPECT_TRUE(EventsOf(events, "tool_call.started").empty());
  EXPECT_EQ(Stats(tools_)["effects_applied"], 0);
  // The allowed tool runs.
  Reply ok = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                  {{"input", "call echo {\"n\":2}"}, {"wait", true}}, As(tk));
  ASSERT_EQ(ok.status, 200);
  EXPECT_EQ(EventsOf(Events(sid), "tool_call.started").size(), 1u);

  // An agent whose own policies allow only echo cannot use effect even for the admin, who
  // may do anything: no one lends the agent more than it has.
  Json narrow = AgentBody();
  narrow["tools"] = body["tools"];
  narrow["policies"] = Json::array({{{"version", "2026-11-01"},
                                     {"statements", Json::array({{{"sid", "agent-echo"},
                                                                  {"effect", "allow"},
                                                                  {"actions", {"tools:Call"}},
                                                                  {"resources", {"agentd:*:tool/*/echo"}}}})}}});
  Reply na = Call("POST", Url("/v1/agents"), narrow);
  ASSERT_EQ(na.status, 201) << na.raw;
  EXPECT_EQ(na.body["policies"].size(), 1u);
  std::string nsid = CreateSession(na.body["id"]);
  Turn(nsid, "call effect {\"n\":3}");
  Json nfailed = EventsOf(Events(nsid), "tool_call.failed");
  ASSERT_EQ(nfailed.size(), 1u);
  EXPECT_NE(nfailed[0]["data"]["error"]["message"].get<std::string>().find("agent policy"),
            std::string::npos)
      << nfailed.dump();
  EXPECT_EQ(Stats(tools_)["effects_applied"], 0);
  // A bad policy in an agent is refused where it is wrong.
  narrow["policies"][0]["statements"][0]["effect"] = "permit";
  Reply bad = Call("POST", Url("/v1/agents"), narrow);
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.value("detail", "").find("policies[0]"), std::string::npos) << bad.raw;

  // Tool calls are in the tenant's audit chain, with a hash of the arguments only.
  Reply log = Call("GET", Url("/v1/audit?tenant_id=" + t + "&action=tools:Call"));
  ASSERT_EQ(log.status, 200) << log.raw;
  ASSERT_EQ(log.body["data"].size(), 2u) << log.raw;
  EXPECT_EQ(log.body["data"][0]["decision"], "deny");
  EXPECT_EQ(log.body["data"][0]["principal"], tina);
  EXPECT_EQ(log.body["data"][0]["data"]["denied_by"], "principal");
  EXPECT_EQ(log.body["data"][1]["decision"], "allow");
  // The admin's agent lives in the admin's tenant, and so does its record.
  Reply admin_log = Call("GET", Url("/v1/audit?action=tools:Call"));
  ASSERT_EQ(admin_log.status, 200);
  ASSERT_EQ(admin_log.body["data"].size(), 1u) << admin_log.raw;
  EXPECT_EQ(admin_log.body["data"][0]["tenant_id"], na.body["tenant_id"]);
  EXPECT_EQ(admin_log.body["data"][0]["data"]["denied_by"], "agent");
  EXPECT_EQ(log.body["data"][1]["data"]["args_sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(log.raw.find("\\\"n\\\":2"), std::string::npos);
}

TEST_F(IdentityTest, ToolsGetATokenForOneCallNeverTheCallersKey) {
  std::string t = NewTenant("acme");
  std::string uma = NewPrincipal(t, "uma", Json::array({OwnTenant({"agents:*", "sessions:*",
                                                                   "tools:Call"})}));
  std::string uk = NewKey(uma);
  Json body = AgentBody();
  body["tools"] = Json::array({HttpTool("headers", "/headers", true)});
  Reply agent = Call("POST", Url("/v1/agents"), body, As(uk));
  ASSERT_EQ(agent.status, 201);
  std::string aid = agent.body["id"];
  std::string sid = Call("POST", Url("/v1/sessions"), {{"agent_id", aid}}, As(uk)).body["id"];
  Reply turn = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                    {{"input", "call headers {}"}, {"wait", true}}, As(uk));
  ASSERT_EQ(turn.status, 200) << turn.raw;
  Json done = EventsOf(Events(sid), "tool_call.completed");
  ASSERT_EQ(done.size(), 1u);
  Json seen = Json::parse(done[0]["data"]["output"].get<std::string>());
  std::string auth = seen.value("authorization", "");
  ASSERT_EQ(auth.rfind("Bearer ", 0), 0u) << seen.dump();
  std::string token = auth.substr(7);
  // Never the caller's own key.
  EXPECT_EQ(seen.dump().find(uk.substr(0, 20)), std::string::npos);

  Reply jwks = Call("GET", Url("/.well-known/jwks.json"));
  auto keys = identity::Jwks::Parse(jwks.raw);
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  const std::string aud = tools_.url + "/headers";
  identity::VerifyOptions v;
  v.issuer = "agentd";
  v.audience = aud;
  auto claims = identity::VerifyJwt(token, *keys, v);
  ASSERT_TRUE(claims.ok()) << claims.status().ToString();
  EXPECT_EQ((*claims)["sub"], uma);
  EXPECT_EQ((*claims)["act"]["sub"], aid);
  EXPECT_EQ((*claims)["tenant"], t);
  EXPECT_EQ((*claims)["session"], sid);
  EXPECT_EQ((*claims)["aud"], aud);
  EXPECT_LE((*claims)["exp"].get<int64_t>() - (*claims)["iat"].get<int64_t>(), 600);
  // Another tool cannot use it, nor can this one once it has expired.
  identity::VerifyOptions other = v;
  other.audience = tools_.url + "/effect";
  identity::JwtFailure why = identity::JwtFailure::kNone;
  EXPECT_FALSE(identity::VerifyJwt(token, *keys, other, &why).ok());
  EXPECT_EQ(why, identity::JwtFailure::kWrongAudience);
  identity::VerifyOptions later = v;
  later.now = (*claims)["exp"].get<int64_t>() + 120;
  EXPECT_FALSE(identity::VerifyJwt(token, *keys, later, &why).ok());
  EXPECT_EQ(why, identity::JwtFailure::kExpired);
  // Each call gets its own token.
  Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call headers {}"}, {"wait", true}},
       As(uk));
  Json both = EventsOf(Events(sid), "tool_call.completed");
  ASSERT_EQ(both.size(), 2u);
  std::string second =
      Json::parse(both[1]["data"]["output"].get<std::string>()).value("authorization", "");
  EXPECT_NE(second, auth);
}

// Every file under `root` whose bytes contain `needle`.
std::vector<std::string> FilesContaining(const std::string& root, const std::string& needle) {
  std::vector<std::string> found;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(root, ec);
       it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec || !it->is_regular_file(ec)) continue;
    std::ifstream in(it->path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.find(needle) != std::string::npos) found.push_back(it->path().string());
  }
  return found;
}

TEST_F(IdentityTest, SecretsAreWriteOnlyAndReachOnlyTheToolsThatNameThemRedacted) {
  const std::string value = "vault-value-3f9c2e71d4b8a6";
  Reply put = Call("PUT", Url("/v1/secrets/api_key"), {{"value", value}});
  ASSERT_EQ(put.status, 200) << put.raw;
  EXPECT_EQ(put.body["name"], "api_key");
  EXPECT_EQ(put.body["object"], "secret");
  EXPECT_TRUE(put.body.contains("created_at") && put.body.contains("updated_at"));
  EXPECT_EQ(put.raw.find(value), std::string::npos);
  EXPECT_EQ(Call("PUT", Url("/v1/secrets/bad%20name"), {{"value", "x"}}).status, 400);
  Reply extra = Call("PUT", Url("/v1/secrets/other"), {{"value", "x"}, {"note", "y"}});
  EXPECT_EQ(extra.status, 400) << extra.raw;
  EXPECT_EQ(Call("PUT", Url("/v1/secrets/other"), {{"value", ""}}).status, 400);
  EXPECT_EQ(Call("GET", Url("/v1/secrets/api_key")).status, 405);
  Reply list = Call("GET", Url("/v1/secrets"));
  ASSERT_EQ(list.status, 200) << list.raw;
  ASSERT_EQ(list.body["data"].size(), 1u);
  EXPECT_EQ(list.body["data"][0]["name"], "api_key");
  EXPECT_EQ(list.raw.find(value), std::string::npos);

  // Tool definitions name secrets, strictly.
  Json tool = HttpTool("headers", "/headers", true);
  for (Json bad : {Json{{"X-Api-Key", "api_key"}}, Json{{"X-Api-Key", "secret:"}},
                   Json{{"Bad Header", "secret:api_key"}}, Json{{"Host", "secret:api_key"}},
                   Json::array()}) {
    Json body = AgentBody();
    tool["secret_headers"] = bad;
    body["tools"] = Json::array({tool});
    Reply r = Call("POST", Url("/v1/agents"), body);
    EXPECT_EQ(r.status, 400) << bad.dump() << r.raw;
    EXPECT_NE(r.raw.find("tools[0].secret_headers"), std::string::npos) << r.raw;
  }
  Json exec = {{"type", "builtin"}, {"name", "exec"}, {"secret_env", {{"token", "secret:api_key"}}}};
  Json bad_env = AgentBody();
  bad_env["tools"] = Json::array({exec});
  Reply r = Call("POST", Url("/v1/agents"), bad_env);
  EXPECT_EQ(r.status, 400) << r.raw;
  EXPECT_NE(r.raw.find("tools[0].secret_env"), std::string::npos) << r.raw;

  tool["secret_headers"] = {{"X-Api-Key", "secret:api_key"}};
  Json body = AgentBody();
  body["tools"] = Json::array({tool});
  Reply agent = Call("POST", Url("/v1/agents"), body);
  ASSERT_EQ(agent.status, 201) << agent.raw;
  EXPECT_EQ(agent.body["tools"][0]["secret_headers"]["X-Api-Key"], "secret:api_key");
  const std::string aid = agent.body["id"];
  const std::string sid = CreateSession(aid);

  // The tool gets the header; what it echoes back is redacted before the journal and the
  // model see it (the marker stands where the value was, so the value did arrive).
  Json turn = Turn(sid, "call headers {}");
  ASSERT_EQ(turn["status"], "completed") << turn.dump();
  Json events = Events(sid);
  Json done = EventsOf(events, "tool_call.completed");
  ASSERT_EQ(done.size(), 1u);
  const std::string output = done[0]["data"]["output"];
  Json echoed = Json::parse(output);
  EXPECT_EQ(echoed.value("x-api-key", ""), "[secret:api_key]") << output;
  EXPECT_FALSE(done[0]["data"].value("is_error", true));
  // The model asking for it by name gets the name, not the value.
  Json asked = Turn(sid, "say secret:api_key");
  EXPECT_EQ(asked["status"], "completed");
  const std::string everything = Events(sid).dump();
  EXPECT_EQ(everything.find(value), std::string::npos);
  EXPECT_EQ(turn.dump().find(value), std::string::npos);
  EXPECT_EQ(asked.dump().find(value), std::string::npos);
  Reply exported = Call("GET", Url("/v1/sessions/" + sid + "/export"));
  ASSERT_EQ(exported.status, 200);
  EXPECT_EQ(exported.raw.find(value), std::string::npos);

  // A principal of the tenant without secrets:Use: the call is refused, the tool not called.
  std::string tenant = agent.body["tenant_id"];
  std::string carol = NewPrincipal(
      tenant, "carol", Json::array({OwnTenant({"agents:Read", "sessions:*", "tools:Call"})}));
  std::string ck = NewKey(carol);
  Reply cs = Call("POST", Url("/v1/sessions"), {{"agent_id", aid}}, As(ck));
  ASSERT_EQ(cs.status, 201) << cs.raw;
  const std::string csid = cs.body["id"];
  const int64_t requests_before = Stats(tools_).value("total_requests", int64_t{-1});
  Reply ct = Call("POST", Url("/v1/sessions/" + csid + "/turns"),
                  {{"input", "call headers {}"}, {"wait", true}}, As(ck));
  ASSERT_EQ(ct.status, 200) << ct.raw;
  Json refused = EventsOf(Events(csid), "tool_call.failed");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0]["data"]["error"]["code"], "permission_denied");
  EXPECT_NE(refused[0]["data"]["error"]["message"].get<std::string>().find("secrets:Use"),
            std::string::npos);
  EXPECT_EQ(Stats(tools_).value("total_requests", int64_t{-1}), requests_before);
  EXPECT_EQ(Call("GET", Url("/v1/secrets"), Json(), As(ck)).status, 403);

  // Another tenant neither lists it nor uses it: its own agent naming the same secret finds
  // none in its tenant.
  std::string beta = NewTenant("beta");
  std::string bob = NewPrincipal(
      beta, "bob", Json::array({OwnTenant({"agents:*", "sessions:*", "tools:Call", "secrets:*"})}));
  std::string bk = NewKey(bob);
  Reply bl = Call("GET", Url("/v1/secrets"), Json(), As(bk));
  ASSERT_EQ(bl.status, 200) << bl.raw;
  EXPECT_TRUE(bl.body["data"].empty());
  Reply ba = Call("POST", Url("/v1/agents"), body, As(bk));
  ASSERT_EQ(ba.status, 201) << ba.raw;
  Reply bs = Call("POST", Url("/v1/sessions"), {{"agent_id", ba.body["id"]}}, As(bk));
  ASSERT_EQ(bs.status, 201) << bs.raw;
  const std::string bsid = bs.body["id"];
  Reply bt = Call("POST", Url("/v1/sessions/" + bsid + "/turns"),
                  {{"input", "call headers {}"}, {"wait", true}}, As(bk));
  ASSERT_EQ(bt.status, 200) << bt.raw;
  Json missing = EventsOf(Events(bsid), "tool_call.failed");
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_EQ(missing[0]["data"]["error"]["code"], "secret_missing");
  EXPECT_NE(missing[0]["data"]["error"]["message"].get<std::string>().find("api_key"),
            std::string::npos);

  // The audit log records the write and each use, never the value.
  Reply audit = Call("GET", Url("/v1/audit?limit=1000"));
  ASSERT_EQ(audit.status, 200) << audit.raw;
  EXPECT_EQ(audit.raw.find(value), std::string::npos);
  std::map<std::string, int> results;
  for (const auto& e : audit.body["data"]) {
    if (e.value("action", "") == "secrets:Write" || e.value("action", "") == "secrets:Use") {
      results[e.value("action", "") + " " + e.value("result", "")]++;
    }
  }
  EXPECT_EQ(results["secrets:Write 200"], 1) << audit.raw;
  EXPECT_EQ(results["secrets:Use opened"], 1) << audit.raw;
  EXPECT_EQ(results["secrets:Use refused"], 1) << audit.raw;

  // Nothing agentd wrote holds the value: not the log, not the database or its WAL, not
  // the audit chain, before or after a restart.
  EXPECT_TRUE(FilesContaining(dir_ + "/data", value).empty());
  RestartDaemon(SIGTERM);
  EXPECT_EQ(Turn(sid, "call headers {}")["status"], "completed");
  EXPECT_TRUE(FilesContaining(dir_ + "/data", value).empty());
  std::ifstream log(dir_ + "/agentd.log");
  std::string log_text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_FALSE(log_text.empty());
  EXPECT_EQ(log_text.find(value), std::string::npos);
}

TEST_F(IdentityTest, ExecGetsSecretsAsEnvironmentVariablesAndItsOutputIsRedacted) {
  const std::string value = "exec-secret-9d41b7c2e0";
  ASSERT_EQ(Call("PUT", Url("/v1/secrets/token"), {{"value", value}}).status, 200);
  Json body = AgentBody();
  body["tools"] = Json::array(
      {{{"type", "builtin"}, {"name", "exec"}, {"secret_env", {{"API_TOKEN", "secret:token"}}}}});
  Reply agent = Call("POST", Url("/v1/agents"), body);
  ASSERT_EQ(agent.status, 201) << agent.raw;
  EXPECT_EQ(agent.body["tools"][0]["secret_env"]["API_TOKEN"], "secret:token");
  const std::string sid = CreateSession(agent.body["id"]);
  Json turn = Turn(sid, R"(call exec {"command": "printf '%s' \"$API_TOKEN\" | wc -c; echo \"$API_TOKEN\""})");
  ASSERT_EQ(turn["status"], "completed") << turn.dump();
  Json done = EventsOf(Events(sid), "tool_call.completed");
  ASSERT_EQ(done.size(), 1u);
  Json out = Json::parse(done[0]["data"]["output"].get<std::string>());
  const std::string stdout_text = out.value("stdout", "");
  EXPECT_EQ(stdout_text, std::to_string(value.size()) + "\n[secret:token]\n") << stdout_text;
  EXPECT_EQ(Events(sid).dump().find(value), std::string::npos);
  EXPECT_EQ(turn.dump().find(value), std::string::npos);
}

}  // namespace
}  // namespace agentd::testing

// Authentication, tenants and the policy gate, through the HTTP API of a real agentd.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/base64.h"
#include "common/clock.h"
#include "identity/jwt.h"
#include "identity/signing_key.h"
#include "tests/integration/fixture.h"
#include "tests/support/jwt_signer.h"

namespace agentd::testing {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

Headers As(const std::string& key) { return {{"Authorization", "Bearer " + key}}; }

Json EventsOf(const Json& events, const std::string& type) {
  Json out = Json::array();
  for (const auto& e : events) {
    if (e["type"] == type) out.push_back(e);
  }
  return out;
}

// A policy document allowing `actions` on everything in the principal's own tenant.
Json OwnTenant(Json actions, std::string sid = "own-tenant") {
  return {{"version", "2026-11-01"},
          {"statements",
           Json::array({{{"sid", sid},
                         {"effect", "allow"},
                         {"actions", actions},
                         {"resources", Json::array({"agentd:${principal.tenant}:*"})}}})}};
}

using IdentityTest = AgentdTest;

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
  // Nor create tenants: the installation's routes exist for the operator's tenant alone.
  Reply tenant = Call("POST", Url("/v1/tenants"), {{"name", "gamma"}}, As(ak));
  EXPECT_EQ(tenant.status, 404) << tenant.raw;
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

TEST_F(IdentityTest, GroupsAndRolesCarryPoliciesToTheirMembers) {
  std::string t = NewTenant("acme");
  auto create = [&](const std::string& collection, const std::string& name, Json policies) {
    Reply r = Call("POST", Url("/v1/" + collection),
                   {{"tenant_id", t}, {"name", name}, {"policies", policies}});
    EXPECT_EQ(r.status, 201) << r.raw;
    EXPECT_EQ(r.headers["location"], "/v1/" + collection + "/" + r.body.value("id", ""));
    return r.body.value("id", "");
  };
  std::string readers = create("groups", "readers", Json::array({OwnTenant({"agents:Read"}, "read-agents")}));
  std::string sessions = create("roles", "session-admin", Json::array({OwnTenant({"sessions:*"})}));
  EXPECT_EQ(readers.rfind("grp_", 0), 0u);
  EXPECT_EQ(sessions.rfind("rol_", 0), 0u);
  // Pat has no policies of her own: what she may do comes from her group.
  std::string pat = NewPrincipal(t, "pat", Json::array(), {{"groups", Json::array({"readers"})}});
  std::string pk = NewKey(pat);
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), As(pk)).status, 200);
  EXPECT_EQ(Call("GET", Url("/v1/sessions"), Json(), As(pk)).status, 403);

  // A role given to her counts from her next request; simulation names where it came from.
  Reply patch = Call("PATCH", Url("/v1/principals/" + pat), {{"roles", Json::array({"session-admin"})}});
  ASSERT_EQ(patch.status, 200) << patch.raw;
  EXPECT_EQ(patch.body["roles"], Json::array({"session-admin"}));
  EXPECT_EQ(patch.body["groups"], Json::array({"readers"}));  // fields not given stay
  EXPECT_EQ(Call("GET", Url("/v1/sessions"), Json(), As(pk)).status, 200);
  Reply sim = Call("POST", Url("/v1/policies:simulate"),
                   {{"principal_id", pat}, {"action", "agents:Read"},
                    {"resource", "agentd:" + t + ":agent/x"}});
  ASSERT_EQ(sim.status, 200) << sim.raw;
  EXPECT_EQ(sim.body["allowed"], true);
  EXPECT_EQ(sim.body["statement"]["source"], "group/readers");
  EXPECT_EQ(sim.body["statement"]["sid"], "read-agents");

  // A group's tool permissions reach the tool calls of its members' turns.
  std::string tool_users = create("groups", "echo-users", Json::array({
      {{"version", "2026-11-01"},
       {"statements", Json::array({{{"effect", "allow"}, {"actions", Json::array({"tools:Call"})},
                                    {"resources", Json::array({"agentd:" + t + ":tool/*/echo"})}}})}}}));
  EXPECT_EQ(Call("POST", Url("/v1/agents"), AgentBody(), As(pk)).status, 403);
  std::string own_agent = NewPrincipal(t, "builder", Json::array({OwnTenant({"agents:*"})}));
  Reply a2 = Call("POST", Url("/v1/agents"), AgentBody(), As(NewKey(own_agent)));
  ASSERT_EQ(a2.status, 201) << a2.raw;
  Reply s = Call("POST", Url("/v1/sessions"), {{"agent_id", a2.body["id"]}}, As(pk));
  ASSERT_EQ(s.status, 201) << s.raw;
  std::string sid = s.body["id"];
  auto echo_turn = [&] {
    Reply turn = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                      {{"input", "call echo {\"n\":1}"}, {"wait", true}}, As(pk));
    EXPECT_EQ(turn.status, 200) << turn.raw;
    Json events = Events(sid);
    return std::pair{EventsOf(events, "tool_call.started").size(),
                     EventsOf(events, "tool_call.failed").size()};
  };
  EXPECT_EQ(echo_turn(), (std::pair<size_t, size_t>{0, 1}));  // not in echo-users yet
  ASSERT_EQ(Call("PATCH", Url("/v1/principals/" + pat),
                 {{"groups", Json::array({"readers", "echo-users"})}}).status, 200);
  EXPECT_EQ(echo_turn(), (std::pair<size_t, size_t>{1, 1}));

  // Replacing a group's policies and deleting a role take effect at once, and last.
  Reply put = Call("PUT", Url("/v1/groups/" + readers),
                   {{"description", "now audit only"}, {"policies", Json::array({OwnTenant({"audit:Read"})})}});
  ASSERT_EQ(put.status, 200) << put.raw;
  EXPECT_EQ(put.body["description"], "now audit only");
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), As(pk)).status, 403);
  EXPECT_EQ(Call("GET", Url("/v1/audit"), Json(), As(pk)).status, 200);
  ASSERT_EQ(Call("DELETE", Url("/v1/roles/" + sessions)).status, 200);
  EXPECT_EQ(Call("GET", Url("/v1/sessions"), Json(), As(pk)).status, 403);
  EXPECT_EQ(Call("GET", Url("/v1/roles/" + sessions)).status, 404);
  RestartDaemon(SIGKILL);
  EXPECT_EQ(Call("GET", Url("/v1/sessions"), Json(), As(pk)).status, 403);
  EXPECT_EQ(Call("GET", Url("/v1/audit"), Json(), As(pk)).status, 200);
  Reply listed = Call("GET", Url("/v1/groups"), Json(), As(NewKey(NewPrincipal(
      t, "lister", Json::array({OwnTenant({"groups:Read"})})))));
  ASSERT_EQ(listed.status, 200) << listed.raw;
  ASSERT_EQ(listed.body["data"].size(), 2u);
  EXPECT_EQ(listed.body["data"][0]["name"], "readers");
  EXPECT_EQ(listed.body["data"][1]["id"], tool_users);

  // Bad input is refused by name and changes nothing.
  struct Bad {
    const char* method;
    std::string path;
    Json body;
    int status;
    const char* detail;
  };
  Json good = Json::array({OwnTenant({"agents:Read"})});
  Json broken = Json::array({{{"version", "2026-11-01"}, {"statements", Json::array({{{"effect", "maybe"}}})}}});
  std::vector<Bad> bad = {
      {"POST", "/v1/groups", {{"tenant_id", t}, {"name", "x"}}, 400, "policies"},
      {"POST", "/v1/groups", {{"tenant_id", t}, {"name", "x"}, {"policies", broken}}, 400, "policies[0]"},
      {"POST", "/v1/groups", {{"tenant_id", t}, {"name", "../x"}, {"policies", good}}, 400, "name"},
      {"POST", "/v1/groups", {{"tenant_id", t}, {"name", "readers"}, {"policies", good}}, 409, "readers"},
      {"POST", "/v1/roles", {{"tenant_id", t}, {"name", "x"}, {"policies", good}, {"extra", 1}}, 400, "extra"},
      {"POST", "/v1/roles", {{"tenant_id", "ten_nope"}, {"name", "x"}, {"policies", good}}, 404, "tenant"},
      {"PUT", "/v1/groups/" + readers, {{"policies", broken}}, 400, "policies[0]"},
      {"PUT", "/v1/groups/" + readers, {{"policies", "all"}}, 400, "policies"},
      {"PUT", "/v1/roles/" + readers, {{"policies", good}}, 404, "role"},  // a group is no role
      {"PATCH", "/v1/principals/" + pat, {{"roles", Json::array({"no-such-role"})}}, 400, "roles[0]"},
      {"PATCH", "/v1/principals/" + pat, {{"groups", "readers"}}, 400, "groups"},
      {"PATCH", "/v1/principals/" + pat, {{"name", "mallory"}}, 400, "name"},
      {"PATCH", "/v1/principals/" + pat, {{"policies", broken}}, 400, "policies[0]"},
  };
  for (const auto& b : bad) {
    Reply r = Call(b.method, Url(b.path), b.body);
    EXPECT_EQ(r.status, b.status) << b.method << " " << b.path << " " << b.body.dump() << ": " << r.raw;
    EXPECT_NE(r.body.value("detail", "").find(b.detail), std::string::npos) << r.raw;
  }
  Reply after = Call("GET", Url("/v1/groups/" + readers));
  EXPECT_EQ(after.body["policies"], put.body["policies"]);
  Reply pat_now = Call("GET", Url("/v1/principals/" + pat));
  EXPECT_EQ(pat_now.body["roles"], Json::array({"session-admin"}));  // the name stays, powerless
  EXPECT_EQ(pat_now.body["name"], "pat");
  EXPECT_EQ(pat_now.body["policies"], Json::array());

  // Another tenant's groups and roles look missing, and cannot be made there.
  std::string other = NewTenant("globex");
  std::string oadmin = NewKey(NewPrincipal(other, "root", Json::array({OwnTenant({"*"})})));
  for (const char* m : {"GET", "PUT", "DELETE"}) {
    Reply r = Call(m, Url("/v1/groups/" + readers), {{"policies", good}}, As(oadmin));
    EXPECT_EQ(r.status, 404) << m << " " << r.raw;
    Reply missing = Call(m, Url("/v1/groups/grp_0000000000000000000000"), {{"policies", good}}, As(oadmin));
    EXPECT_EQ(missing.status, 404) << m << " " << missing.raw;
  }
  EXPECT_EQ(Call("PATCH", Url("/v1/principals/" + pat), {{"roles", Json::array()}}, As(oadmin)).status, 404);
  EXPECT_EQ(Call("POST", Url("/v1/groups"), {{"tenant_id", t}, {"name", "y"}, {"policies", good}},
                 As(oadmin)).status, 404);
  Reply own = Call("POST", Url("/v1/groups"), {{"name", "mine"}, {"policies", good}}, As(oadmin));
  ASSERT_EQ(own.status, 201) << own.raw;
  EXPECT_EQ(own.body["tenant_id"], other);  // the caller's tenant when none is named
  EXPECT_EQ(Call("GET", Url("/v1/groups"), Json(), As(oadmin)).body["data"].size(), 1u);
  EXPECT_EQ(Call("GET", Url("/v1/groups/" + readers)).status, 200);
}

// An answer goes out only once its request's audit entry is durable: kill -9 right after
// each answer, and every answered request is in the log after the restart.
TEST_F(IdentityTest, EveryAnsweredRequestIsInTheAuditLogAfterAKill) {
  constexpr int kRounds = 8;
  for (int i = 0; i < kRounds; ++i) {
    Reply r = Call("POST", Url("/v1/tenants"), {{"name", "kill-" + std::to_string(i)}});
    ASSERT_EQ(r.status, 201) << r.raw;
    RestartDaemon(SIGKILL);
  }
  Reply audit = Call("GET", Url("/v1/audit?action=tenants:Create&limit=1000"));
  ASSERT_EQ(audit.status, 200) << audit.raw;
  int answered = 0;
  for (const auto& e : audit.body["data"]) answered += e["result"] == "201" ? 1 : 0;
  EXPECT_EQ(answered, kRounds) << audit.raw;
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
      {"agents:Create", "allow", "started"},  // durable before the agent is created
      {"agents:Create", "allow", "201"},
      {"sessions:Delete", "deny", "404"},  // no such session: refused before any effect
      {"audit:Read", "deny", "403"},
  };
  EXPECT_EQ(seen, want) << log.raw;
  // The two entries of one request share its id; another request has another.
  auto request_of = [&](int i) {
    return log.body["data"][i]["data"].value("request_id", "");
  };
  EXPECT_EQ(request_of(0).rfind("req_", 0), 0u);
  EXPECT_EQ(request_of(0), request_of(1));
  EXPECT_NE(request_of(1), request_of(2));
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

// An MCP server over Streamable HTTP is called like an http tool: every request carries a
// token agentd minted for it, a tools/call one for that call alone, and the secret headers
// the server's definition names, opened under the policy of the turn's principal.
TEST_F(IdentityTest, McpServersOverHttpGetATokenPerCallAndTheirSecretHeaders) {
  std::string t = NewTenant("acme");
  Json use_key = {{"version", "2026-11-01"},
                  {"statements", Json::array({{{"effect", "allow"},
                                               {"actions", Json::array({"secrets:Use"})},
                                               {"resources", Json::array({"agentd:" + t + ":secret/mcp-key"})}}})}};
  std::string vic = NewPrincipal(t, "vic", Json::array({OwnTenant({"agents:*", "sessions:*", "tools:Call",
                                                                   "secrets:Write"}), use_key}));
  std::string wes = NewPrincipal(t, "wes", Json::array({OwnTenant({"sessions:*", "tools:Call"})}));
  std::string xena = NewPrincipal(t, "xena", Json::array({OwnTenant({"sessions:*", "tools:Call"}), use_key}));
  std::string vk = NewKey(vic), wk = NewKey(wes), xk = NewKey(xena);
  const std::string kSecret = "mcp-s3cret-value-42";
  ASSERT_EQ(Call("PUT", Url("/v1/secrets/mcp-key"), {{"value", kSecret}}, As(vk)).status, 200);

  const std::string log = dir_ + "/mcp-auth.log";
  auto server = Process::Start({AGENTD_FAKE_MCP_SERVER, "--transport", "http", "--era", "2025-11-25",
                                "--require-header", "X-Api-Key:" + kSecret, "--log-header",
                                "Authorization"},
                               {}, log);
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto port = (*server)->WaitForLine("LISTENING ([0-9]+)", std::chrono::seconds(10));
  ASSERT_TRUE(port.ok());
  const std::string url = "http://127.0.0.1:" + *port + "/mcp";
  Json body = AgentBody();
  body["tools"] = Json::array({{{"type", "mcp"}, {"name", "remote"}, {"url", url},
                                {"secret_headers", {{"X-Api-Key", "secret:mcp-key"}}}}});
  body["sandbox"] = {{"egress", Json::array({"127.0.0.1:" + *port})}};
  Reply agent = Call("POST", Url("/v1/agents"), body, As(vk));
  ASSERT_EQ(agent.status, 201) << agent.raw;
  EXPECT_EQ(agent.body["tools"][0]["secret_headers"]["X-Api-Key"], "secret:mcp-key");
  std::string aid = agent.body["id"];
  auto turn = [&](const std::string& sid, const std::string& key, const std::string& text) {
    Reply r = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                   {{"input", "call remote__echo {\"text\": \"" + text + "\"}"}, {"wait", true}},
                   As(key));
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body;
  };
  std::string sid = Call("POST", Url("/v1/sessions"), {{"agent_id", aid}}, As(vk)).body["id"];
  Json first = turn(sid, vk, "one");
  ASSERT_EQ(first["status"], "completed") << first.dump();
  // The server answered: the secret header was on every request.
  EXPECT_NE(first["output_text"].get<std::string>().find("one"), std::string::npos)
      << first.dump();
  turn(sid, vk, "two");
  // Xena's turn in the same session, over the connection vic's turn opened: her call's
  // token names her.
  turn(sid, xk, "three");

  // Every request carried a token for vic, with the server as audience; the two calls
  // carried two different tokens.
  Reply jwks = Call("GET", Url("/.well-known/jwks.json"));
  auto keys = identity::Jwks::Parse(jwks.raw);
  ASSERT_TRUE(keys.ok());
  identity::VerifyOptions v;
  v.issuer = "agentd";
  v.audience = url;
  std::ifstream in(log);
  std::string line;
  std::vector<std::string> call_tokens;
  int requests = 0;
  while (std::getline(in, line)) {
    if (line.rfind("HEADER ", 0) != 0) continue;
    ++requests;
    std::istringstream fields(line.substr(7));
    std::string method, bearer, token;
    fields >> method >> bearer >> token;
    ASSERT_EQ(bearer, "Bearer") << line;
    auto claims = identity::VerifyJwt(token, *keys, v);
    ASSERT_TRUE(claims.ok()) << method << ": " << claims.status().ToString();
    EXPECT_EQ((*claims)["act"]["sub"], aid);
    EXPECT_EQ((*claims)["session"], sid);
    if (method == "tools/call") {
      EXPECT_EQ((*claims)["sub"], call_tokens.size() < 2 ? vic : xena);
      call_tokens.push_back(token);
    } else {
      EXPECT_EQ((*claims)["sub"], vic) << method;
    }
    EXPECT_EQ(line.find(vk.substr(0, 20)), std::string::npos);  // never the caller's key
  }
  EXPECT_GE(requests, 3);  // initialize, tools/list, tools/call, ...
  ASSERT_EQ(call_tokens.size(), 3u);
  EXPECT_NE(call_tokens[0], call_tokens[1]);

  // Wes may call tools but not use the secret: his session cannot connect, and his call
  // is refused by name, the secret never sent.
  std::string wsid = Call("POST", Url("/v1/sessions"), {{"agent_id", aid}}, As(wk)).body["id"];
  turn(wsid, wk, "four");
  Json failed = EventsOf(Events(wsid), "tool_call.failed");
  ASSERT_EQ(failed.size(), 1u) << Events(wsid).dump();
  EXPECT_EQ(failed[0]["data"]["error"]["code"], "permission_denied");
  EXPECT_NE(failed[0]["data"]["error"]["message"].get<std::string>().find("secrets:Use"),
            std::string::npos);
  // The secret appears in no event, no answer, and no audit entry; its uses are audited.
  for (const std::string& s : {sid, wsid}) {
    EXPECT_EQ(Events(s).dump().find(kSecret), std::string::npos);
  }
  Reply audit = Call("GET", Url("/v1/audit?tenant_id=" + t + "&action=secrets:Use&limit=1000"));
  ASSERT_EQ(audit.status, 200) << audit.raw;
  EXPECT_EQ(audit.raw.find(kSecret), std::string::npos);
  int allowed = 0, denied = 0;
  for (const auto& e : audit.body["data"]) {
    (e["decision"] == "allow" ? allowed : denied) += 1;
  }
  EXPECT_GE(allowed, 4);  // the connection and three calls
  EXPECT_GE(denied, 1);
}

// Secrets reach MCP servers only as headers over HTTP; a stdio server's environment is
// refused when the agent is defined.
TEST_F(IdentityTest, McpStdioServersCannotTakeSecretEnvironment) {
  Json body = AgentBody();
  body["tools"] = Json::array({{{"type", "mcp"}, {"name", "local"}, {"command", {"x"}},
                                {"secret_env", {{"TOKEN", "secret:t"}}}}});
  Reply r = Call("POST", Url("/v1/agents"), body);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.value("detail", "").find("secret_env"), std::string::npos) << r.raw;
  body["tools"] = Json::array({{{"type", "mcp"}, {"name", "local"}, {"command", {"x"}},
                                {"secret_headers", {{"X-Key", "secret:t"}}}}});
  r = Call("POST", Url("/v1/agents"), body);
  EXPECT_EQ(r.status, 400) << r.raw;
  EXPECT_NE(r.body.value("detail", "").find("secret_headers"), std::string::npos) << r.raw;
}

// ---- Sign-in with JWTs from an identity provider ----------------------------------------------
// Keys are generated with OpenSSL and tokens signed here, independently of agentd's verifier.

// The keys and tokens come from the signer of tests/support/jwt_signer.h.

constexpr const char* kIdp = "https://idp.example.com";
constexpr const char* kAud = "agentd-api";

// The public JWK of a key, as a provider publishes it.
Json PublishedJwk(EVP_PKEY* k, const std::string& kid) {
  Json j = JwkOf(k, kid);
  j["use"] = "sig";
  return j;
}

Json JwsHeader(const std::string& alg, const std::string& kid) {
  return {{"alg", alg}, {"typ", "JWT"}, {"kid", kid}};
}

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }

Headers Bearer(const std::string& token) { return {{"Authorization", "Bearer " + token}}; }

// Claims of a token from kIdp for kAud, valid now, with `extra` set over them (a null value
// removes the claim).
Json IdpClaims(const std::string& sub, Json extra = Json::object()) {
  Json c = {{"iss", kIdp},          {"aud", kAud},          {"sub", sub},
            {"iat", Now() - 5},     {"nbf", Now() - 5},     {"exp", Now() + 300}};
  for (auto& [k, v] : extra.items()) {
    if (v.is_null()) {
      c.erase(k);
    } else {
      c[k] = v;
    }
  }
  return c;
}

class JwtSignInTest : public IdentityTest {
 protected:
  std::string JwksPath() const { return dir_ + "/jwks.json"; }
  void WriteJwks(const Json& keys) {
    std::ofstream(JwksPath()) << Json{{"keys", keys}}.dump();
  }
  // Restarts agentd with a config whose `auth.jwt` has these lines (without indentation).
  void RestartWithJwt(const std::vector<std::string>& lines) {
    std::string cfg = dir_ + "/jwt.yaml";
    {
      std::ofstream out(cfg);
      out << "auth:\n  jwt:\n";
      for (const auto& l : lines) out << "    " << l << "\n";
    }
    agentd_.proc->Signal(SIGTERM);
    ASSERT_EQ(agentd_.proc->Wait(), 0);
    agentd_.proc.reset();
    StartDaemon({"--config", cfg});
  }
  // Expects `token` to be refused with 401 and a detail that holds `reason` and no part of
  // the token.
  void ExpectRefused(const std::string& what, const std::string& token, const std::string& reason) {
    Reply r = Call("GET", Url("/v1/agents"), Json(), Bearer(token));
    EXPECT_EQ(r.status, 401) << what << ": " << r.raw;
    EXPECT_EQ(r.headers["www-authenticate"], "Bearer realm=\"agentd\"") << what;
    EXPECT_NE(r.body.value("detail", "").find(reason), std::string::npos) << what << ": " << r.raw;
    size_t from = 0;
    while (from <= token.size()) {
      size_t dot = std::min(token.find('.', from), token.size());
      std::string part = token.substr(from, dot - from);
      if (part.size() >= 8) {
        EXPECT_EQ(r.raw.find(part), std::string::npos) << what << ": " << r.raw;
      }
      from = dot + 1;
    }
  }
  // A process of agentd started with `yaml` as its config file; its exit code and output.
  std::pair<int, std::string> RunWithConfig(const std::string& name, const std::string& yaml) {
    std::string cfg = dir_ + "/" + name + ".yaml";
    std::ofstream(cfg) << yaml;
    auto p = Process::Start({BinPath("agentd"), "--listen", "127.0.0.1:0", "--config", cfg,
                             "--data-dir", dir_ + "/" + name},
                            {}, "");
    EXPECT_TRUE(p.ok());
    if (!p.ok()) return {-1, ""};
    int code = (*p)->Wait();
    return {code, (*p)->Output()};
  }
};

TEST_F(JwtSignInTest, ATokenFromTheIdentityProviderActsAsTheStoredPrincipal) {
  Pkey ec = GenP256(), ec_other = GenP256(), ed = GenEd25519(), rotated = GenEd25519();
  WriteJwks(Json::array({PublishedJwk(ec.get(), "k-ec"), PublishedJwk(ed.get(), "k-ed")}));
  std::string acme = NewTenant("acme"), beta = NewTenant("beta");
  // The provider signs in to acme and beta, by their ids in its `tenant` claim.
  RestartWithJwt({fmt::format("issuer: \"{}\"", kIdp), fmt::format("audience: \"{}\"", kAud),
                  fmt::format("jwks_file: \"{}\"", JwksPath()),
                  fmt::format("tenants: {{{}: {}, {}: {}}}", acme, acme, beta, beta)});
  EXPECT_NE(agentd_.proc->Output().find(
                fmt::format("authentication: API keys; JWTs from issuer '{}'", kIdp)),
            std::string::npos)
      << agentd_.proc->Output();
  std::string alice = NewPrincipal(acme, "alice", Json::array({OwnTenant({"agents:Read"})}));
  auto claims = [&](Json extra = Json::object()) {
    Json e = {{"tenant", acme}};
    for (auto& [k, v] : extra.items()) e[k] = v;
    return IdpClaims("alice", e);
  };
  auto es256 = [&](const Json& c, const std::string& kid = "k-ec") {
    return SignToken(ec.get(), JwsHeader("ES256", kid), c);
  };

  // Signed with either key of the set, the token is Alice: her policy lets her read agents,
  // not create them.
  for (const std::string& token :
       {es256(claims()), SignToken(ed.get(), JwsHeader("EdDSA", "k-ed"), claims())}) {
    Reply ok = Call("GET", Url("/v1/agents"), Json(), Bearer(token));
    EXPECT_EQ(ok.status, 200) << ok.raw;
    Reply create = Call("POST", Url("/v1/agents"), AgentBody(), Bearer(token));
    EXPECT_EQ(create.status, 403) << create.raw;
    EXPECT_NE(create.body.value("detail", "").find("agents:Create"), std::string::npos)
        << create.raw;
  }
  // Her requests are in her tenant's audit chain, under her stored principal.
  Reply log = Call("GET", Url("/v1/audit?tenant_id=" + acme));
  ASSERT_EQ(log.status, 200) << log.raw;
  ASSERT_EQ(log.body["data"].size(), 4u) << log.raw;
  for (const auto& e : log.body["data"]) EXPECT_EQ(e["principal"], alice) << log.raw;
  // API keys work as before, beside tokens.
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), As(NewKey(alice))).status, 200);
  EXPECT_EQ(Call("GET", Url("/v1/agents")).status, 200);

  // The provider rotates in a new key: a token with its kid reloads the set.
  WriteJwks(Json::array({PublishedJwk(ec.get(), "k-ec"), PublishedJwk(ed.get(), "k-ed"),
                         PublishedJwk(rotated.get(), "k-new")}));
  Reply fresh = Call("GET", Url("/v1/agents"), Json(),
                     Bearer(SignToken(rotated.get(), JwsHeader("EdDSA", "k-new"), claims())));
  EXPECT_EQ(fresh.status, 200) << fresh.raw;

  Reply missing = Call("GET", Url("/v1/agents"), Json(), {{"Authorization", ""}});
  EXPECT_EQ(missing.status, 401);
  EXPECT_NE(missing.body.value("detail", "").find("missing credentials"), std::string::npos)
      << missing.raw;
  const std::string header = B64(JwsHeader("ES256", "k-ec").dump());
  Json none_header = {{"alg", "none"}, {"typ", "JWT"}};
  struct Case {
    std::string what, token, reason;
  };
  std::vector<Case> cases = {
      {"two segments", header + "." + B64(claims().dump()), "malformed token"},
      {"bad base64url", header + ".eyJzdWIi$Oi.c2lnbmF0dXJl", "malformed token"},
      {"not a JWT at all", "sk-something-else", "malformed token"},
      {"expired", es256(claims({{"exp", Now() - 600}})), "token expired"},
      {"not yet valid", es256(claims({{"nbf", Now() + 600}})), "not yet valid"},
      {"wrong audience", es256(claims({{"aud", "another-service"}})), "wrong audience"},
      {"wrong issuer", es256(claims({{"iss", "https://evil.example.com"}})), "wrong issuer"},
      {"a key not in the set, with its kid", SignToken(ec_other.get(), JwsHeader("ES256", "k-ec"),
                                                       claims()),
       "bad signature"},
      {"alg none", B64(none_header.dump()) + "." + B64(claims().dump()) + "." + B64("sig"),
       "unsupported alg 'none'"},
      {"HS256 keyed with the public key",
       Hs256Token(PublicPem(ec.get()), JwsHeader("HS256", "k-ec"), claims()),
       "unsupported alg 'HS256'"},
      {"unknown kid", es256(claims(), "k-gone"), "unknown kid"},
      {"no principal of that name", es256(claims({{"sub", "mallory"}})),
       "no principal 'mallory' in the tenant"},
      {"a name of another tenant", es256(claims({{"tenant", beta}})),
       "no principal 'alice' in the tenant"},
      {"a tenant that does not exist",
       es256(claims({{"tenant", "ten_00000000000000000000000000"}})),
       "names no tenant this identity provider signs in to"},
      {"the operator's tenant, which the config does not map",
       es256(claims({{"tenant", OperatorTenant()}})),
       "names no tenant this identity provider signs in to"},
      {"a tenant claim changed after signing", [&] {
         std::string good = es256(claims());
         size_t a = good.find('.'), b = good.rfind('.');
         return good.substr(0, a + 1) + B64(claims({{"tenant", beta}}).dump()) + good.substr(b);
       }(), "bad signature"},
      {"no tenant claim", es256(claims({{"tenant", nullptr}})), "no 'tenant' claim"},
      {"no subject", es256(claims({{"sub", nullptr}})), "no 'sub' claim"},
  };
  for (const auto& c : cases) ExpectRefused(c.what, c.token, c.reason);
  // Failed sign-ins are audited in the system chain without the token.
  Reply sys = Call("GET", Url("/v1/audit?tenant_id="));
  ASSERT_EQ(sys.status, 200) << sys.raw;
  ASSERT_FALSE(sys.body["data"].empty());
  EXPECT_EQ(sys.body["data"].back()["action"], "auth:Authenticate");
  EXPECT_EQ(sys.raw.find(B64(claims().dump()).substr(0, 40)), std::string::npos);
}

TEST_F(JwtSignInTest, TheTokensGroupsJoinThePrincipalsForConditions) {
  Pkey ed = GenEd25519();
  WriteJwks(Json::array({PublishedJwk(ed.get(), "k-ed")}));
  std::string t = NewTenant("acme");
  RestartWithJwt({fmt::format("issuer: \"{}\"", kIdp), fmt::format("audience: \"{}\"", kAud),
                  fmt::format("jwks_file: \"{}\"", JwksPath()),
                  fmt::format("tenants: {{{}: {}}}", t, t)});
  auto when_group = [](const std::string& sid, Json actions, const std::string& group) {
    Json p = OwnTenant(std::move(actions), sid);
    p["statements"][0]["conditions"] = {{"StringEquals", {{"principal.groups", group}}}};
    return p;
  };
  // Olga reads agents only as a member of "ops" (which only tokens say), and sessions as a
  // member of "staff" (which her stored principal says).
  NewPrincipal(t, "olga",
               Json::array({when_group("ops-agents", {"agents:Read"}, "ops"),
                            when_group("staff-sessions", {"sessions:Read"}, "staff")}),
               {{"groups", Json::array({"staff"})}});
  auto token = [&](Json groups) {
    Json extra = {{"tenant", t}};
    if (!groups.is_null()) extra["groups"] = groups;
    return SignToken(ed.get(), JwsHeader("EdDSA", "k-ed"), IdpClaims("olga", extra));
  };
  auto get = [&](const std::string& path, const std::string& tok) {
    return Call("GET", Url(path), Json(), Bearer(tok)).status;
  };
  EXPECT_EQ(get("/v1/agents", token(Json::array({"dev", "ops"}))), 200);
  EXPECT_EQ(get("/v1/agents", token(Json::array({"dev"}))), 403);
  EXPECT_EQ(get("/v1/agents", token(Json())), 403);
  EXPECT_EQ(get("/v1/agents", token(Json::array())), 403);
  // The stored groups stay.
  EXPECT_EQ(get("/v1/sessions", token(Json::array({"ops"}))), 200);
  EXPECT_EQ(get("/v1/sessions", token(Json())), 200);
  // A stored group of the name a token gives brings its policies.
  EXPECT_EQ(get("/v1/audit", token(Json::array({"oncall"}))), 403);
  Reply group = Call("POST", Url("/v1/groups"),
                     {{"tenant_id", t}, {"name", "oncall"},
                      {"policies", Json::array({OwnTenant({"audit:Read"})})}});
  ASSERT_EQ(group.status, 201) << group.raw;
  EXPECT_EQ(get("/v1/audit", token(Json::array({"oncall"}))), 200);
  EXPECT_EQ(get("/v1/audit", token(Json::array({"ops"}))), 403);
  // A groups claim that is not a list of strings is refused, not ignored.
  ExpectRefused("groups as a string", token("ops"), "groups");
  ExpectRefused("groups of numbers", token(Json::array({1, 2})), "groups");
}

TEST_F(JwtSignInTest, RsaKeysAFixedTenantAndClaimsNamedByTheConfig) {
  Pkey rsa = GenRsa(), ec = GenP256();
  WriteJwks(Json::array({PublishedJwk(rsa.get(), "k-rsa"), PublishedJwk(ec.get(), "k-ec")}));
  std::string acme = NewTenant("acme"), beta = NewTenant("beta");
  NewPrincipal(acme, "alice@example.com",
               Json::array({OwnTenant({"agents:Read"}),
                            [] {
                              Json p = OwnTenant({"sessions:Read"}, "admins");
                              p["statements"][0]["conditions"] = {
                                  {"StringEquals", {{"principal.groups", "admins"}}}};
                              return p;
                            }()}));
  RestartWithJwt({fmt::format("issuer: \"{}\"", kIdp), fmt::format("audience: \"{}\"", kAud),
                  fmt::format("jwks_file: \"{}\"", JwksPath()), "tenant: " + acme,
                  "principal_claim: email", "groups_claim: roles", "leeway_seconds: 0"});
  auto rs256 = [&](Json extra) {
    Json e = {{"email", "alice@example.com"}};
    for (auto& [k, v] : extra.items()) e[k] = v;
    return SignToken(rsa.get(), JwsHeader("RS256", "k-rsa"), IdpClaims("u-1234", e));
  };
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), Bearer(rs256(Json::object()))).status, 200);
  // The tenant is the configured one: a token may say so, and one naming another is refused.
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), Bearer(rs256({{"tenant", acme}}))).status, 200);
  ExpectRefused("a tenant claim naming another tenant", rs256({{"tenant", beta}}),
                "names another tenant than the one this identity provider signs in to");
  // Groups come from `roles`, not `groups`.
  auto sessions = [&](const std::string& claim) {
    return Call("GET", Url("/v1/sessions"), Json(),
                Bearer(rs256({{claim, Json::array({"admins"})}})))
        .status;
  };
  EXPECT_EQ(sessions("roles"), 200);
  EXPECT_EQ(sessions("groups"), 403);
  // The principal is named by `email`; `sub` means nothing here.
  ExpectRefused("no email", rs256({{"email", nullptr}}), "no 'email' claim");
  ExpectRefused("unknown email", rs256({{"email", "bob@example.com"}}),
                "no principal 'bob@example.com' in the tenant");
  // No leeway: a token that expired two seconds ago is refused.
  ExpectRefused("just expired", rs256({{"exp", Now() - 2}}), "token expired");
  // A token verified a moment ago is remembered, but not past its expiry.
  std::string brief = rs256({{"exp", Now() + 2}});
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), Bearer(brief)).status, 200);
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), Bearer(brief)).status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(3100));
  ExpectRefused("expired after use", brief, "token expired");
  // The classic confusions with an RSA key: HS256 keyed with its public key, and a token
  // naming another algorithm than its key's.
  ExpectRefused("HS256 keyed with the RSA public key",
                Hs256Token(PublicPem(rsa.get()), JwsHeader("HS256", "k-rsa"),
                           IdpClaims("u-1", {{"email", "alice@example.com"}})),
                "unsupported alg 'HS256'");
  ExpectRefused("ES256 signed, naming the RSA key",
                SignToken(ec.get(), JwsHeader("ES256", "k-rsa"),
                          IdpClaims("u-1", {{"email", "alice@example.com"}})),
                "alg mismatch");
}

TEST_F(JwtSignInTest, KeysFromAUrlAreFetchedAndKeptWhenTheProviderIsDown) {
  // Another agentd plays the identity provider: it publishes its Ed25519 key at
  // /.well-known/jwks.json, and the test signs with that key, read from its data directory.
  auto idp = StartAgentd(dir_ + "/idp", dir_ + "/idp.log", {}, {});
  ASSERT_TRUE(idp.ok()) << idp.status().ToString();
  auto key = identity::SigningKey::LoadOrCreate(dir_ + "/idp/signing.key");
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  std::string t = NewTenant("acme");
  RestartWithJwt({fmt::format("issuer: \"{}\"", kIdp), fmt::format("audience: \"{}\"", kAud),
                  "jwks_url: " + idp->url + "/.well-known/jwks.json", "tenant: " + t});
  NewPrincipal(t, "alice", Json::array({OwnTenant({"agents:Read"})}));
  auto token = [&](const std::string& kid) {
    std::string input = B64(JwsHeader("EdDSA", kid).dump()) + "." +
                        B64(IdpClaims("alice", {{"tenant", t}}).dump());
    return input + "." + B64(key->Sign(input));
  };
  Reply ok = Call("GET", Url("/v1/agents"), Json(), Bearer(token(key->kid())));
  EXPECT_EQ(ok.status, 200) << ok.raw;
  // The provider goes away: the set already fetched still verifies; a kid it does not hold
  // is unknown.
  idp->proc->Signal(SIGTERM);
  EXPECT_EQ(idp->proc->Wait(), 0);
  EXPECT_EQ(Call("GET", Url("/v1/agents"), Json(), Bearer(token(key->kid()))).status, 200);
  ExpectRefused("unknown kid while the provider is down", token("k-other"), "unknown kid");
}

TEST_F(JwtSignInTest, BadJwtConfigIsRefusedByName) {
  WriteJwks(Json::array({PublishedJwk(GenEd25519().get(), "k-ed")}));
  const std::string head = "auth:\n  jwt:\n";
  const std::string keys =
      fmt::format("    issuer: x\n    audience: y\n    jwks_file: {}\n", JwksPath());
  const std::string good = keys + "    tenant: ten_00000000000000000000000000\n";
  std::ofstream(dir_ + "/empty-jwks.json") << R"({"keys": []})";
  struct Case {
    std::string yaml, message;
  };
  std::vector<Case> cases = {
      {head + good + "    isuser: z\n", "unknown config key 'auth.jwt.isuser'"},
      {"auth:\n  oidc: {}\n", "unknown config key 'auth.oidc'"},
      {"auth: yes\n", "'auth' must be a mapping"},
      {head + "    audience: y\n    jwks_file: f\n", "'auth.jwt.issuer' is required"},
      {head + "    issuer: x\n    jwks_file: f\n", "'auth.jwt.audience' is required"},
      {head + "    issuer: x\n    audience: y\n", "exactly one of 'jwks_file' and 'jwks_url'"},
      {head + good + "    jwks_url: https://idp.example.com/jwks\n",
       "exactly one of 'jwks_file' and 'jwks_url'"},
      {head + "    issuer: x\n    audience: y\n    jwks_url: ftp://idp.example.com/jwks\n",
       "'auth.jwt.jwks_url'"},
      {head + "    issuer: [x, z]\n    audience: y\n    jwks_file: f\n",
       "'auth.jwt.issuer' must be a string"},
      {head + good + "    leeway_seconds: soon\n", "'auth.jwt.leeway_seconds' must be an integer"},
      {head + good + "    leeway_seconds: 86400\n", "'auth.jwt.leeway_seconds' must be between"},
      {head + good + "    tenant_claim: org\n", "'auth.jwt.tenant'"},
      {head + keys + "    tenant: acme\n", "'auth.jwt.tenant' must be a tenant id"},
      {head + keys, "needs 'tenant' (one tenant for every token) or 'tenants'"},
      {head + keys + "    tenant_claim: org\n", "needs 'tenant' (one tenant for every token)"},
      {head + good + "    tenants: {acme: ten_00000000000000000000000000}\n",
       "'auth.jwt.tenant' and 'auth.jwt.tenants' exclude each other"},
      {head + keys + "    tenants: {acme: acme}\n",
       "'auth.jwt.tenants.acme' must be a tenant id"},
      {head + keys + "    tenants: []\n", "'auth.jwt.tenants' must be a mapping"},
      {"auth:\n  operator_tenant: ops\n", "'auth.operator_tenant' must be a tenant id"},
      {head + good + "    groups_claim: \"\"\n", "'auth.jwt.groups_claim' must not be empty"},
      {head + "    issuer: x\n    audience: y\n    jwks_file: " + dir_ + "/nowhere.json\n" +
           "    tenant: ten_00000000000000000000000000\n",
       "cannot open the file"},
      {head + "    issuer: x\n    audience: y\n    jwks_file: " + dir_ + "/empty-jwks.json\n" +
           "    tenant: ten_00000000000000000000000000\n",
       "holds no key"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    auto [code, out] = RunWithConfig(fmt::format("bad{}", i), cases[i].yaml);
    EXPECT_EQ(code, 2) << cases[i].yaml << out;
    EXPECT_NE(out.find(cases[i].message), std::string::npos) << cases[i].yaml << out;
  }
  // The same config without the mistakes starts.
  auto ok = Process::Start({BinPath("agentd"), "--listen", "127.0.0.1:0", "--config",
                            [&] {
                              std::ofstream(dir_ + "/good.yaml") << head + good;
                              return dir_ + "/good.yaml";
                            }(),
                            "--data-dir", dir_ + "/good"},
                           {}, "");
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE((*ok)->WaitForLine("(JWTs from issuer 'x')", std::chrono::seconds(30)).ok())
      << (*ok)->Output();
  (*ok)->Signal(SIGTERM);
  EXPECT_EQ((*ok)->Wait(), 0);
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

TEST_F(IdentityTest, PolicyCanHoldAToolCallForApprovalWhichIsJournaledAndAudited) {
  std::string t = NewTenant("acme");
  Json tools = {{"version", "2026-11-01"},
                {"statements",
                 Json::array({{{"sid", "echo"},
                               {"effect", "allow"},
                               {"actions", {"tools:Call"}},
                               {"resources", {"agentd:${principal.tenant}:tool/*/echo"}}},
                              {{"sid", "effect-needs-approval"},
                               {"effect", "allow"},
                               {"actions", {"tools:Call"}},
                               {"resources", {"agentd:${principal.tenant}:tool/*/effect"}},
                               {"approval", "required"}}})}};
  std::string vic = NewPrincipal(t, "vic", Json::array({OwnTenant({"agents:*", "sessions:*"}), tools}));
  std::string amy = NewPrincipal(t, "amy", Json::array({OwnTenant({"sessions:Read", "tools:Approve"})}));
  std::string vk = NewKey(vic), ak = NewKey(amy);
  Json body = AgentBody();
  body["tools"] = Json::array({HttpTool("echo", "/echo", true), HttpTool("effect", "/effect", true)});
  std::string aid = Call("POST", Url("/v1/agents"), body, As(vk)).body["id"];
  std::string sid = Call("POST", Url("/v1/sessions"), {{"agent_id", aid}}, As(vk)).body["id"];

  Reply held = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                    {{"input", "call effect {\"n\":1}"}, {"wait", true}}, As(vk));
  ASSERT_EQ(held.status, 200) << held.raw;
  EXPECT_EQ(held.body["status"], "requires_action");
  std::string tid = held.body["id"];
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid), Json(), As(vk)).body["status"],
            "requires_action");
  Json requested = EventsOf(Events(sid), "tool_call.approval_requested");
  ASSERT_EQ(requested.size(), 1u);
  std::string call_id = requested[0]["data"]["call_id"];
  EXPECT_EQ(Stats(tools_)["effects_applied"], 0);

  // Bad answers change nothing.
  const std::string approvals = "/v1/sessions/" + sid + "/turns/" + tid + "/approvals";
  EXPECT_EQ(Call("POST", Url(approvals), {{"call_id", call_id}, {"decision", "maybe"}}, As(ak)).status,
            400);
  EXPECT_EQ(Call("POST", Url(approvals), {{"call_id", "call_x"}, {"decision", "approve"}}, As(ak)).status,
            400);
  EXPECT_EQ(Call("POST", Url(approvals), {{"decision", "approve"}}, As(ak)).status, 400);
  // Vic may run the session but not approve his own call.
  Reply self = Call("POST", Url(approvals), {{"call_id", call_id}, {"decision", "approve"}}, As(vk));
  EXPECT_EQ(self.status, 403) << self.raw;
  // The wait survives a crash.
  RestartDaemon(SIGKILL);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid + "/turns/" + tid), Json(), As(vk)).body["status"],
            "requires_action");
  EXPECT_EQ(Stats(tools_)["effects_applied"], 0);
  Reply ok = Call("POST", Url(approvals),
                  {{"call_id", call_id}, {"decision", "approve"}, {"reason", "looks fine"}}, As(ak));
  ASSERT_EQ(ok.status, 200) << ok.raw;
  Json done = WaitTurn(sid, tid);
  EXPECT_EQ(done["status"], "completed") << done.dump();
  EXPECT_EQ(Stats(tools_)["effects_applied"], 1);
  Json decided = EventsOf(Events(sid), "tool_call.approval_decided");
  ASSERT_EQ(decided.size(), 1u);
  EXPECT_EQ(decided[0]["data"]["principal_id"], amy);
  EXPECT_EQ(decided[0]["data"]["decision"], "approve");
  // A second approval of the same call is refused.
  EXPECT_EQ(Call("POST", Url(approvals), {{"call_id", call_id}, {"decision", "approve"}}, As(ak)).status,
            409);

  // Denied: the model is told, the tool never runs.
  Reply held2 = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                     {{"input", "call effect {\"n\":2}"}, {"wait", true}}, As(vk));
  ASSERT_EQ(held2.body["status"], "requires_action");
  std::string tid2 = held2.body["id"];
  std::string call2 = EventsOf(Events(sid), "tool_call.approval_requested")[1]["data"]["call_id"];
  Reply no = Call("POST", Url("/v1/sessions/" + sid + "/turns/" + tid2 + "/approvals"),
                  {{"call_id", call2}, {"decision", "deny"}, {"reason", "not today"}}, As(ak));
  ASSERT_EQ(no.status, 200) << no.raw;
  EXPECT_EQ(WaitTurn(sid, tid2)["status"], "completed");
  Json failed = EventsOf(Events(sid), "tool_call.failed");
  ASSERT_FALSE(failed.empty());
  EXPECT_EQ(failed.back()["data"]["error"]["code"], "approval_denied");
  EXPECT_NE(failed.back()["data"]["error"]["message"].get<std::string>().find("not today"),
            std::string::npos);
  EXPECT_EQ(Stats(tools_)["effects_applied"], 1);
  // The echo tool needs no approval.
  Reply free = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                    {{"input", "call echo {}"}, {"wait", true}}, As(vk));
  EXPECT_EQ(free.body["status"], "completed");

  // Both decisions are in the tenant's audit chain.
  Reply log = Call("GET", Url("/v1/audit?tenant_id=" + t + "&action=tools:Approve"));
  ASSERT_EQ(log.status, 200);
  std::vector<std::string> results;
  for (const auto& e : log.body["data"]) results.push_back(e["result"]);
  EXPECT_NE(std::find(results.begin(), results.end(), "approved"), results.end()) << log.raw;
  EXPECT_NE(std::find(results.begin(), results.end(), "denied"), results.end()) << log.raw;
  // A statement may ask for approval only when it allows.
  Json bad = tools;
  bad["statements"][0]["effect"] = "deny";
  bad["statements"][0]["approval"] = "required";
  Reply refused = Call("POST", Url("/v1/principals"),
                       {{"tenant_id", t}, {"name", "zed"}, {"kind", "user"},
                        {"policies", Json::array({bad})}});
  EXPECT_EQ(refused.status, 400);
  EXPECT_NE(refused.body.value("detail", "").find("statements[0].approval"), std::string::npos)
      << refused.raw;
}

TEST_F(IdentityTest, AnOperatorCancelsEveryTurnOfATenantInOneCall) {
  std::string acme = NewTenant("acme"), beta = NewTenant("beta");
  Json all = OwnTenant({"agents:*", "sessions:Create", "sessions:Invoke", "sessions:Read",
                        "tools:Call"});
  std::string ak = NewKey(NewPrincipal(acme, "alice", Json::array({all})));
  std::string bk = NewKey(NewPrincipal(beta, "bob", Json::array({all})));
  Json slow = HttpTool("slow", "/slow?ms=30000", true);
  slow["timeout_ms"] = 60000;
  Json body = AgentBody();
  body["tools"] = Json::array({slow});
  auto start = [&](const std::string& key) {
    std::string aid = Call("POST", Url("/v1/agents"), body, As(key)).body["id"];
    std::string sid = Call("POST", Url("/v1/sessions"), {{"agent_id", aid}}, As(key)).body["id"];
    Reply t = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call slow {}"}},
                   As(key));
    EXPECT_EQ(t.status, 202) << t.raw;
    return std::make_pair(sid, t.body.value("id", ""));
  };
  auto [a1, ta1] = start(ak);
  auto [a2, ta2] = start(ak);
  auto [b1, tb1] = start(bk);
  for (const auto& sid : {a1, a2, b1}) {
    for (int i = 0; i < 500 && EventsOf(Events(sid), "tool_call.started").empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  // Alice may not stop her whole tenant; Bob cannot even see Acme.
  EXPECT_EQ(Call("POST", Url("/v1/tenants/" + acme + "/cancel-turns"), Json(), As(ak)).status, 403);
  EXPECT_EQ(Call("POST", Url("/v1/tenants/" + acme + "/cancel-turns"), Json(), As(bk)).status, 404);
  Reply c = Call("POST", Url("/v1/tenants/" + acme + "/cancel-turns"));
  ASSERT_EQ(c.status, 200) << c.raw;
  EXPECT_EQ(c.body["cancelled"], 2) << c.raw;
  EXPECT_EQ(WaitTurn(a1, ta1, std::chrono::seconds(10))["status"], "cancelled");
  EXPECT_EQ(WaitTurn(a2, ta2, std::chrono::seconds(10))["status"], "cancelled");
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + b1 + "/turns/" + tb1)).body["status"], "running");
  EXPECT_EQ(Call("POST", Url("/v1/tenants/" + beta + "/cancel-turns")).body["cancelled"], 1);
  EXPECT_EQ(WaitTurn(b1, tb1, std::chrono::seconds(10))["status"], "cancelled");
}

}  // namespace
}  // namespace agentd::testing

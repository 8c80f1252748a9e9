// The wall between tenants, through the HTTP API of a real agentd (docs/security.md, "Tenants
// are walls"): every route the router serves, called by a principal of another tenant with
// the widest policy it can hold, answers as for ids that exist nowhere and changes nothing;
// no principal grants more than it holds; and an agentd built without the wall's check
// (agentd_mutant_no_tenant_wall) fails the same table.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "api/api.h"
#include "tests/integration/fixture.h"

namespace agentd::testing {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

Headers As(const std::string& key) { return {{"Authorization", "Bearer " + key}}; }

Json Statement(Json actions, Json resources, std::string sid = "s") {
  return {{"sid", std::move(sid)},
          {"effect", "allow"},
          {"actions", std::move(actions)},
          {"resources", std::move(resources)}};
}
Json Document(Json statements) {
  return {{"version", "2026-11-01"}, {"statements", std::move(statements)}};
}
// Everything, everywhere: what a tenant's administrator would write to mean "all of it".
Json Everything() { return Document(Json::array({Statement({"*"}, {"*"}, "everything")})); }

// The `detail` of a problem answer; "" for any other.
std::string Detail(const Reply& r) {
  return r.body.is_object() ? r.body.value("detail", "") : std::string();
}
std::string Code(const Reply& r) {
  return r.body.is_object() ? r.body.value("code", "") : std::string();
}

std::string ReplaceAll(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t at = 0; (at = s.find(from, at)) != std::string::npos; at += to.size()) {
    s.replace(at, from.size(), to);
  }
  return s;
}

// Tenant A's objects, by the name of the route parameter that names each.
struct World {
  std::string operator_tenant;
  std::string a_tenant, b_tenant;
  std::string a_key;       // a principal of A allowed everything in A
  std::string a_spare_key;  // another of its keys, named by DELETE /v1/api-keys/{api-key}
  std::map<std::string, std::string> ids;  // agent, session, turn, principal, group, role, ...
  std::string export_file;                 // an export of A's session
};

class TenantWallTest : public AgentdTest {
 protected:
  // Tenants A (acme) and B (globex); in A an agent, a session with a completed turn, a
  // group, a role, a spare API key, a secret; all made by A's own administrator.
  World MakeWorld() {
    World w;
    w.a_tenant = NewTenant("acme");
    w.b_tenant = NewTenant("globex");
    std::string alice = NewPrincipal(w.a_tenant, "alice", Json::array({Everything()}));
    w.a_key = NewKey(alice);
    w.ids["principal"] = alice;
    w.ids["tenant"] = w.a_tenant;
    Reply agent = Call("POST", Url("/v1/agents"), AgentBody(), As(w.a_key));
    EXPECT_EQ(agent.status, 201) << agent.raw;
    w.ids["agent"] = agent.body.value("id", "");
    Reply session = Call("POST", Url("/v1/sessions"), {{"agent_id", w.ids["agent"]}}, As(w.a_key));
    EXPECT_EQ(session.status, 201) << session.raw;
    w.ids["session"] = session.body.value("id", "");
    Reply turn = Call("POST", Url("/v1/sessions/" + w.ids["session"] + "/turns"),
                      {{"input", "call echo {\"x\":1}"}, {"wait", true}}, As(w.a_key));
    EXPECT_EQ(turn.status, 200) << turn.raw;
    w.ids["turn"] = turn.body.value("id", "");
    Json policies = Json::array({Document(Json::array({Statement({"agents:Read"}, {"*"})}))});
    Reply group = Call("POST", Url("/v1/groups"), {{"name", "readers"}, {"policies", policies}},
                       As(w.a_key));
    EXPECT_EQ(group.status, 201) << group.raw;
    w.ids["group"] = group.body.value("id", "");
    Reply role = Call("POST", Url("/v1/roles"), {{"name", "reader"}, {"policies", policies}},
                      As(w.a_key));
    EXPECT_EQ(role.status, 201) << role.raw;
    w.ids["role"] = role.body.value("id", "");
    Reply key = Call("POST", Url("/v1/principals/" + alice + "/api-keys"), Json::object(),
                     As(w.a_key));
    EXPECT_EQ(key.status, 201) << key.raw;
    w.ids["api-key"] = key.body.value("id", "");
    w.a_spare_key = key.body.value("key", "");
    Reply secret = Call("PUT", Url("/v1/secrets/shared_name"), {{"value", "acme-only-value"}},
                        As(w.a_key));
    EXPECT_EQ(secret.status, 200) << secret.raw;
    w.ids["secret"] = "shared_name";
    w.ids["path*"] = "notes.txt";
    Reply exported = Call("GET", Url("/v1/sessions/" + w.ids["session"] + "/export"));
    EXPECT_EQ(exported.status, 200) << exported.raw;
    w.export_file = exported.raw;
    return w;
  }

  // What tenant A holds, as its administrator and the operator read it. `audit` is read
  // by the operator, whose reads go to its own chain.
  Json DumpA(const World& w) {
    Json d = Json::object();
    auto get = [&](const std::string& path, const std::string& key) {
      Reply r = Call("GET", Url(path), Json(), key.empty() ? Headers{} : As(key));
      EXPECT_EQ(r.status, 200) << path << " " << r.raw;
      d[path] = r.body;
    };
    const std::string& s = w.ids.at("session");
    for (const std::string& path : std::vector<std::string>{
             "/v1/agents", "/v1/sessions", "/v1/principals", "/v1/groups", "/v1/roles",
          "/v1/secrets", "/v1/sessions/" + s + "/turns",
          "/v1/sessions/" + s + "/events?limit=1000", "/v1/sessions/" + s,
          "/v1/agents/" + w.ids.at("agent"), "/v1/groups/" + w.ids.at("group"),
          "/v1/roles/" + w.ids.at("role"), "/v1/principals/" + w.ids.at("principal")}) {
      get(path, w.a_key);
    }
    get("/v1/tenants/" + w.a_tenant, "");
    // The spare key still signs in.
    d["spare_key"] = Call("GET", Url("/v1/agents"), Json(), As(w.a_spare_key)).status;
    return d;
  }
  Json AuditOfA(const World& w) {
    Reply r = Call("GET", Url("/v1/audit?limit=1000&tenant_id=" + w.a_tenant));
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body["data"];
  }

  // A body for each route that takes one; `{name}` strings are filled like path parameters.
  static const std::map<std::string, Json>& SampleBodies() {
    static const std::map<std::string, Json> bodies = {
        {"POST /v1/agents", Json{{"name", "b"}, {"instructions", "x"},
                                 {"model", {{"provider", "openai-chat"}, {"name", "m"},
                                            {"base_url", "http://127.0.0.1:9/v1"}}}}},
        {"PUT /v1/agents/{agent}", Json{{"name", "b"}, {"instructions", "y"},
                                        {"model", {{"provider", "openai-chat"}, {"name", "m"},
                                                   {"base_url", "http://127.0.0.1:9/v1"}}}}},
        {"POST /v1/agents/{agent}/cancel-turns", Json()},
        {"POST /v1/sessions", Json{{"agent_id", "{agent}"}}},
        {"POST /v1/sessions:import", Json()},  // the export file, sent raw
        {"POST /v1/sessions/{session}/cancel", Json()},
        {"POST /v1/sessions/{session}/turns", Json{{"input", "say hi"}}},
        {"POST /v1/sessions/{session}/turns/{turn}/approvals",
         Json{{"call_id", "call_1"}, {"decision", "approve"}}},
        {"POST /v1/sessions/{session}/turns/{turn}/tool_outputs",
         Json{{"outputs", Json::array()}}},
        {"PUT /v1/secrets/{secret}", Json{{"value", "globex-value"}}},
        {"POST /v1/tenants", Json{{"name", "initech"}}},
        {"POST /v1/tenants/{tenant}/cancel-turns", Json()},
        {"POST /v1/principals", Json{{"tenant_id", "{tenant}"}, {"name", "mallory"},
                                     {"kind", "user"}, {"policies", Json::array({Everything()})}}},
        {"PATCH /v1/principals/{principal}",
         Json{{"policies", Json::array({Everything()})}}},
        {"POST /v1/principals/{principal}/api-keys", Json::object()},
        {"POST /v1/groups", Json{{"tenant_id", "{tenant}"}, {"name", "g"},
                                 {"policies", Json::array({Everything()})}}},
        {"PUT /v1/groups/{group}", Json{{"policies", Json::array({Everything()})}}},
        {"POST /v1/roles", Json{{"tenant_id", "{tenant}"}, {"name", "r"},
                                {"policies", Json::array({Everything()})}}},
        {"PUT /v1/roles/{role}", Json{{"policies", Json::array({Everything()})}}},
        {"POST /v1/policies:simulate",
         Json{{"principal_id", "{principal}"}, {"action", "sessions:Read"},
              {"resource", "agentd:x:session/y"}}},
    };
    return bodies;
  }

  // Calls every route as `b_key` (a principal of tenant B) with A's ids, and the same route
  // with ids that exist nowhere; returns what did not hold (empty when the wall held).
  std::vector<std::string> CrossTenantViolations(const World& w, const std::string& b_key) {
    std::vector<std::string> bad;
    std::map<std::string, std::string> ghosts;
    for (const auto& [name, id] : w.ids) {
      size_t us = id.find('_');
      ghosts[name] = (us != std::string::npos && name != "secret" && name != "path*")
                         ? id.substr(0, us + 1) + std::string(26, '0')
                         : id;
    }
    auto fill = [](std::string text, const std::map<std::string, std::string>& with) {
      for (const auto& [name, id] : with) text = ReplaceAll(text, "{" + name + "}", id);
      return text;
    };
    auto fill_json = [&](const Json& body, const std::map<std::string, std::string>& with) {
      if (body.is_null()) return Json();
      return *ParseJson(fill(body.dump(), with), "sample body");
    };
    for (const api::RouteSpec& route : api::Api::Routes()) {
      const std::string method(route.method), pattern(route.path);
      const std::string key = method + " " + pattern;
      const auto& bodies = SampleBodies();
      auto sample = bodies.find(key);
      if (sample == bodies.end() && method != "GET" && method != "DELETE") {
        bad.push_back(key + ": no sample body; add one to SampleBodies()");
        continue;
      }
      Json body = sample == bodies.end() ? Json() : sample->second;
      auto call = [&](const std::map<std::string, std::string>& with) {
        std::string path = fill(pattern, with);
        if (route.scope == api::Scope::kQueryTenant) path += "?tenant_id=" + with.at("tenant");
        if (key == "POST /v1/sessions:import") {
          return CallRaw("POST", Url(path), w.export_file,
                         {{"Content-Type", "application/x-ndjson"},
                          {"Authorization", "Bearer " + b_key}});
        }
        return Call(method, Url(path), fill_json(body, with), As(b_key));
      };
      const bool names_a = route.scope == api::Scope::kPath ||
                           route.scope == api::Scope::kBodyTenant ||
                           route.scope == api::Scope::kQueryTenant ||
                           route.scope == api::Scope::kBodyPrincipal || !route.agent_field.empty();
      Reply real = call(w.ids);
      if (route.scope == api::Scope::kInstallation) {
        // The installation's routes do not exist for other tenants.
        if (real.status != 404 ||
            Detail(real) != "no route for " + fill(pattern, w.ids)) {
          bad.push_back(fmt::format("{}: {} {}", key, real.status, real.raw));
        }
      } else if (names_a) {
        Reply ghost = call(ghosts);
        std::string rd = Detail(real), gd = Detail(ghost);
        for (const auto& [name, id] : w.ids) rd = ReplaceAll(rd, id, ghosts.at(name));
        if (real.status != 404 || ghost.status != 404 || rd != gd ||
            Code(real) != Code(ghost)) {
          bad.push_back(fmt::format("{}: {} {} (nowhere: {} {})", key, real.status, real.raw,
                                    ghost.status, ghost.raw));
        }
      } else if (real.raw.find(w.a_tenant) != std::string::npos) {
        // A route of the caller's own tenant: it must show nothing of A.
        bad.push_back(fmt::format("{}: {} shows tenant A: {}", key, real.status, real.raw));
      }
    }
    return bad;
  }
};

TEST_F(TenantWallTest, EveryRouteAnswersForAnotherTenantsIdsAsForIdsThatExistNowhere) {
  World w = MakeWorld();
  // Globex's administrator, allowed everything it can be allowed.
  std::string boss = NewPrincipal(w.b_tenant, "boss", Json::array({Everything()}));
  std::string bk = NewKey(boss);
  Json before = DumpA(w);
  Json audit_before = AuditOfA(w);
  std::vector<std::string> bad = CrossTenantViolations(w, bk);
  for (const auto& b : bad) ADD_FAILURE() << b;
  EXPECT_GT(api::Api::Routes().size(), 40u);
  // A's data is as it was, and A's audit chain has not one entry more.
  EXPECT_EQ(AuditOfA(w), audit_before);
  Json after = DumpA(w);
  EXPECT_EQ(after, before) << "before: " << before.dump() << "\nafter: " << after.dump();
  // Every refusal is on B's record, as a deny for the wall.
  Reply log = Call("GET", Url("/v1/audit?limit=1000&decision=deny&tenant_id=" + w.b_tenant));
  ASSERT_EQ(log.status, 200) << log.raw;
  int walls = 0;
  for (const auto& e : log.body["data"]) {
    if (e.value("principal", "") == boss && e["data"].value("reason", "") == "tenant_wall") ++walls;
  }
  EXPECT_GE(walls, 30) << log.raw;
}

TEST_F(TenantWallTest, TheOperatorsTenantReachesEveryTenant) {
  World w = MakeWorld();
  // The bootstrap admin reads A's session and its events: the wall is for other tenants.
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + w.ids["session"])).status, 200);
  EXPECT_EQ(Call("GET", Url("/v1/principals/" + w.ids["principal"])).status, 200);
  // A principal of the operator's tenant with a narrow policy reaches what it allows there.
  Reply me = Call("GET", Url("/v1/principals"));
  ASSERT_EQ(me.status, 200);
  std::string op_tenant = me.body["data"][0]["tenant_id"];
  std::string auditor = NewPrincipal(
      op_tenant, "auditor",
      Json::array({Document(Json::array({Statement({"sessions:Read"}, {"agentd:*:session/*"})}))}));
  std::string k = NewKey(auditor);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + w.ids["session"]), Json(), As(k)).status, 200);
  EXPECT_EQ(Call("GET", Url("/v1/agents/" + w.ids["agent"]), Json(), As(k)).status, 403);
}

TEST_F(TenantWallTest, WideningOnesOwnPolicyReachesNothingBeyondTheTenant) {
  World w = MakeWorld();
  // The report's steps: globex's administrator (everything in its own tenant) patches its
  // own principal to allow * on *, and through a group of its own.
  Json own = Document(Json::array({Statement({"*"}, {"agentd:${principal.tenant}:*"})}));
  std::string admin = NewPrincipal(w.b_tenant, "admin", Json::array({own}));
  std::string bk = NewKey(admin);
  const std::string session = "/v1/sessions/" + w.ids["session"];
  EXPECT_EQ(Call("GET", Url(session), Json(), As(bk)).status, 404);
  Reply patch = Call("PATCH", Url("/v1/principals/" + admin),
                     {{"policies", Json::array({Everything()})}}, As(bk));
  // Accepted: its reach is clamped to globex, where it already could do everything.
  EXPECT_EQ(patch.status, 200) << patch.raw;
  EXPECT_EQ(patch.body["policies"], Json::array({Everything()}));
  Reply group = Call("POST", Url("/v1/groups"),
                     {{"name", "everything"}, {"policies", Json::array({Everything()})}}, As(bk));
  EXPECT_EQ(group.status, 201) << group.raw;
  EXPECT_EQ(Call("PATCH", Url("/v1/principals/" + admin),
                 {{"groups", Json::array({"everything"})}}, As(bk))
                .status,
            200);
  Reply read = Call("GET", Url(session), Json(), As(bk));
  EXPECT_EQ(read.status, 404) << read.raw;
  EXPECT_EQ(read.body["detail"], "session '" + w.ids["session"] + "' not found");
  Reply events = Call("GET", Url(session + "/events"), Json(), As(bk));
  EXPECT_EQ(events.status, 404) << events.raw;
  for (const auto& b : CrossTenantViolations(w, bk)) ADD_FAILURE() << b;

  // Simulation shows the clamp: the stored statement would allow it; the wall decides.
  Reply sim = Call("POST", Url("/v1/policies:simulate"),
                   {{"action", "sessions:Read"},
                    {"resource", "agentd:" + w.a_tenant + ":session/" + w.ids["session"]}},
                   As(bk));
  ASSERT_EQ(sim.status, 200) << sim.raw;
  EXPECT_EQ(sim.body["allowed"], false);
  EXPECT_EQ(sim.body["reason"], "tenant_wall");
  EXPECT_EQ(sim.body["statement"], nullptr);
  EXPECT_EQ(sim.body["clamped_statement"]["sid"], "everything") << sim.raw;
  Reply home = Call("POST", Url("/v1/policies:simulate"),
                    {{"action", "sessions:Read"},
                     {"resource", "agentd:" + w.b_tenant + ":session/ses_x"}},
                    As(bk));
  EXPECT_EQ(home.body["allowed"], true) << home.raw;
  EXPECT_EQ(home.body["reason"], "allow");
  // The operator's simulation of the same principal says the same.
  Reply op = Call("POST", Url("/v1/policies:simulate"),
                  {{"principal_id", admin},
                   {"action", "tenants:Create"},
                   {"resource", "agentd:*:tenant/*"}});
  EXPECT_EQ(op.body["reason"], "tenant_wall") << op.raw;
}

TEST_F(TenantWallTest, NoPrincipalGrantsMoreThanItHolds) {
  World w = MakeWorld();
  // The operator made a group `admins` in its own tenant.
  ASSERT_EQ(Call("POST", Url("/v1/groups"),
                 {{"name", "admins"}, {"policies", Json::array({Everything()})}})
                .status,
            201);
  // Globex's identity manager may manage principals, groups, roles and keys, and read
  // agents; nothing else.
  Json manage = Document(Json::array(
      {Statement({"principals:*", "groups:*", "roles:*"}, {"agentd:${principal.tenant}:*"},
                 "manage-identities"),
       Statement({"agents:Read"}, {"agentd:${principal.tenant}:agent/*"}, "read-agents")}));
  std::string idm = NewPrincipal(w.b_tenant, "idm", Json::array({manage}));
  std::string k = NewKey(idm);
  Json wider = Json::array({Document(Json::array({Statement({"sessions:*"}, {"*"}, "wider")}))});
  Json within = Json::array({Document(
      Json::array({Statement({"agents:Read"}, {"agentd:${principal.tenant}:agent/*"}, "ok")}))});

  struct Attempt {
    std::string what, method, path;
    Json body;
  };
  Reply role = Call("POST", Url("/v1/roles"), {{"name", "viewer"}, {"policies", within}}, As(k));
  ASSERT_EQ(role.status, 201) << role.raw;
  Reply group = Call("POST", Url("/v1/groups"), {{"name", "viewers"}, {"policies", within}}, As(k));
  ASSERT_EQ(group.status, 201) << group.raw;
  // A role the operator-tenant's admin of globex made with more than idm holds.
  Reply big_role = Call("POST", Url("/v1/roles"),
                        {{"tenant_id", w.b_tenant}, {"name", "big"}, {"policies", wider}});
  ASSERT_EQ(big_role.status, 201) << big_role.raw;
  std::string other = NewPrincipal(w.b_tenant, "other", wider);
  std::vector<Attempt> attempts = {
      {"widen its own principal", "PATCH", "/v1/principals/" + idm, {{"policies", wider}}},
      {"a new principal", "POST", "/v1/principals",
       {{"tenant_id", w.b_tenant}, {"name", "n"}, {"kind", "user"}, {"policies", wider}}},
      {"a group", "POST", "/v1/groups", {{"name", "g2"}, {"policies", wider}}},
      {"a role", "POST", "/v1/roles", {{"name", "r2"}, {"policies", wider}}},
      {"widen a group", "PUT", "/v1/groups/" + group.body["id"].get<std::string>(),
       {{"policies", wider}}},
      {"widen a role", "PUT", "/v1/roles/" + role.body["id"].get<std::string>(),
       {{"policies", wider}}},
      {"join the group admins", "PATCH", "/v1/principals/" + idm,
       {{"groups", Json::array({"admins"})}}},
      {"take a role with more", "PATCH", "/v1/principals/" + idm,
       {{"roles", Json::array({"big"})}}},
      {"a key for a principal with more", "POST", "/v1/principals/" + other + "/api-keys",
       Json::object()},
  };
  for (const auto& a : attempts) {
    Reply r = Call(a.method, Url(a.path), a.body, As(k));
    EXPECT_EQ(r.status, 403) << a.what << ": " << r.raw;
    EXPECT_EQ(r.body.value("code", ""), "permission_denied") << a.what;
    EXPECT_NE(r.body.value("detail", "").find("statements[0]"), std::string::npos)
        << a.what << ": " << r.raw;
    EXPECT_NE(r.body.value("detail", "").find("which the caller may not do"), std::string::npos)
        << a.what << ": " << r.raw;
  }
  // Each is audited as a deny, and none happened.
  Reply log = Call("GET", Url("/v1/audit?limit=1000&decision=deny&tenant_id=" + w.b_tenant));
  ASSERT_EQ(log.status, 200);
  int refused = 0;
  for (const auto& e : log.body["data"]) {
    if (e.value("principal", "") == idm && e["data"].value("reason", "") == "exceeds_caller") {
      ++refused;
    }
  }
  EXPECT_EQ(refused, static_cast<int>(attempts.size())) << log.raw;
  Reply me = Call("GET", Url("/v1/principals/" + idm));
  EXPECT_EQ(me.body["policies"], Json::array({manage}));
  EXPECT_EQ(me.body["groups"], Json::array());
  EXPECT_EQ(Call("GET", Url("/v1/sessions"), Json(), As(k)).status, 403);
  for (const auto& b : CrossTenantViolations(w, k)) ADD_FAILURE() << b;

  // What it holds, it may give, to itself and to others.
  EXPECT_EQ(Call("PATCH", Url("/v1/principals/" + idm), {{"roles", Json::array({"viewer"})}},
                 As(k)).status, 200);
  Reply give = Call("POST", Url("/v1/principals"),
                    {{"tenant_id", w.b_tenant}, {"name", "reader"}, {"kind", "user"},
                     {"policies", within}, {"groups", Json::array({"viewers"})}},
                    As(k));
  EXPECT_EQ(give.status, 201) << give.raw;
  EXPECT_EQ(Call("POST", Url("/v1/principals/" + give.body.value("id", "") + "/api-keys"),
                 Json::object(), As(k)).status, 201);
  // Its own key, whatever it holds.
  EXPECT_EQ(Call("POST", Url("/v1/principals/" + idm + "/api-keys"), Json::object(), As(k)).status,
            201);
}

TEST_F(TenantWallTest, AnotherOperatorTenantCanBeNamedInTheConfig) {
  std::string ops = NewTenant("ops");
  std::string acme = NewTenant("acme");
  std::string root = NewPrincipal(ops, "root", Json::array({Everything()}));
  std::string rk = NewKey(root);
  Reply before = Call("GET", Url("/v1/tenants/" + acme), Json(), As(rk));
  EXPECT_EQ(before.status, 404) << before.raw;
  std::string cfg = dir_ + "/operator.yaml";
  std::ofstream(cfg) << "auth:\n  operator_tenant: " << ops << "\n";
  agentd_.proc->Signal(SIGTERM);
  ASSERT_EQ(agentd_.proc->Wait(), 0);
  agentd_.proc.reset();
  StartDaemon({"--config", cfg});
  EXPECT_EQ(Call("GET", Url("/v1/tenants/" + acme), Json(), As(rk)).status, 200);
  // The bootstrap admin is now a tenant's administrator like any other.
  EXPECT_EQ(Call("GET", Url("/v1/tenants/" + acme)).status, 404);
  EXPECT_EQ(Call("POST", Url("/v1/tenants"), {{"name", "x"}}).status, 404);
  // A tenant that does not exist is refused at start, by name.
  std::ofstream(cfg) << "auth:\n  operator_tenant: ten_00000000000000000000000000\n";
  auto p = Process::Start({BinPath("agentd"), "--listen", "127.0.0.1:0", "--config", cfg,
                           "--data-dir", dir_ + "/other"},
                          {}, "");
  ASSERT_TRUE(p.ok());
  EXPECT_NE((*p)->Wait(), 0);
  EXPECT_NE((*p)->Output().find("operator tenant ten_00000000000000000000000000"),
            std::string::npos)
      << (*p)->Output();
}

// The same table against an agentd built without the wall's check in the gate: it must
// fail, or the table proves nothing.
class MutantWallTest : public TenantWallTest {
 protected:
  MutantWallTest() { agentd_binary_ = "agentd_mutant_no_tenant_wall"; }
};

TEST_F(MutantWallTest, WithoutTheWallTheRouteTableFails) {
  World w = MakeWorld();
  std::string boss = NewPrincipal(w.b_tenant, "boss", Json::array({Everything()}));
  std::vector<std::string> bad = CrossTenantViolations(w, NewKey(boss));
  std::set<std::string> routes;
  for (const auto& b : bad) routes.insert(b.substr(0, b.find(':', b.find(' '))));
  EXPECT_TRUE(routes.count("GET /v1/sessions/{session}")) << ::testing::PrintToString(bad);
  // (Routes after the mutant's DELETE of A's session find it gone.)
  EXPECT_TRUE(routes.count("DELETE /v1/sessions/{session}"));
  EXPECT_TRUE(routes.count("PATCH /v1/principals/{principal}"));
  EXPECT_GE(bad.size(), 20u) << ::testing::PrintToString(bad);
}

}  // namespace
}  // namespace agentd::testing

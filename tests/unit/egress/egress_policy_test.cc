// The egress allow-list: parsing, host matching and the address checks that keep a sandbox
// away from the host's and its network's internal addresses.
#include "sandbox/egress/egress_policy.h"

#include <gtest/gtest.h>

namespace agentd::sandbox::egress {
namespace {

EgressPolicy MustParse(const std::vector<std::string>& entries) {
  Result<EgressPolicy> p = EgressPolicy::Parse(entries);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? *p : EgressPolicy();
}

std::string ParseError(const std::vector<std::string>& entries) {
  Result<EgressPolicy> p = EgressPolicy::Parse(entries);
  EXPECT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  return p.status().message();
}

IpAddress Ip(const char* text) {
  std::optional<IpAddress> a = IpAddress::Parse(text);
  EXPECT_TRUE(a.has_value()) << text;
  return a.value_or(IpAddress());
}

TEST(EgressPolicyParse, AcceptsEveryEntryForm) {
  EgressPolicy p =
      MustParse({"api.example.com:443", "Example.ORG", "*.example.net:8443", "203.0.113.7:80",
                 "10.1.2.0/24:5432", "[2001:db8::1]:443", "[2001:db8::/32]:443",
                 "[2001:db9::]/32:80", "[2001:db8::2]", "files.example.com.:21"});
  ASSERT_EQ(p.rules().size(), 10u);
  EXPECT_EQ(p.rules()[0].kind, EgressRule::Kind::kHost);
  EXPECT_EQ(p.rules()[0].name, "api.example.com");
  EXPECT_EQ(p.rules()[0].ports, std::vector<uint16_t>{443});
  EXPECT_EQ(p.rules()[1].name, "example.org");
  EXPECT_EQ(p.rules()[1].ports, (std::vector<uint16_t>{80, 443}));
  EXPECT_EQ(p.rules()[2].kind, EgressRule::Kind::kHostSuffix);
  EXPECT_EQ(p.rules()[2].name, ".example.net");
  EXPECT_EQ(p.rules()[3].kind, EgressRule::Kind::kAddress);
  EXPECT_EQ(p.rules()[3].range.prefix, 32);
  EXPECT_EQ(p.rules()[4].range.prefix, 24);
  EXPECT_EQ(p.rules()[4].range.base.ToString(), "10.1.2.0");
  EXPECT_TRUE(p.rules()[5].range.base.v6);
  EXPECT_EQ(p.rules()[5].range.prefix, 128);
  EXPECT_EQ(p.rules()[6].range.prefix, 32);
  EXPECT_EQ(p.rules()[7].range.prefix, 32);
  EXPECT_EQ(p.rules()[7].ports, std::vector<uint16_t>{80});
  EXPECT_EQ(p.rules()[8].ports, (std::vector<uint16_t>{80, 443}));
  EXPECT_EQ(p.rules()[9].name, "files.example.com");
  EXPECT_EQ(p.ToStrings()[1], "Example.ORG");  // written back as given
}

TEST(EgressPolicyParse, EmptyListAllowsNothing) {
  EgressPolicy p = MustParse({});
  EXPECT_TRUE(p.empty());
  EXPECT_EQ(p.Match("example.com", 443), nullptr);
}

TEST(EgressPolicyParse, ErrorsNameTheEntryIndex) {
  struct Case {
    std::vector<std::string> entries;
    std::string expect;  // a substring of the message
  };
  const std::vector<Case> cases = {
      {{"ok.example.com:443", "", "x"}, "'sandbox.egress[1]': an entry must not be empty"},
      {{"a.com", "b.com", "*"}, "'sandbox.egress[2]': '*' would allow every host"},
      {{"*:443"}, "'sandbox.egress[0]': '*' would allow every host"},
      {{"*.com:443"}, "'sandbox.egress[0]': '*.com' is too broad"},
      {{"a.*.example.com"}, "'*' is allowed only as the whole first label"},
      {{"*example.com"}, "'*' is allowed only as the whole first label"},
      {{"example.com:0"}, "port 0 is not allowed"},
      {{"example.com:65536"}, "the port must be a number from 1 to 65535"},
      {{"example.com:https"}, "the port must be a number from 1 to 65535"},
      {{"example.com:"}, "the port must be a number from 1 to 65535"},
      {{"2001:db8::1:443"}, "write an IPv6 address in brackets"},
      {{"[2001:db8::1"}, "'[' without a closing ']'"},
      {{"[10.0.0.1]:80"}, "brackets are only for IPv6 addresses"},
      {{"[2001:db8::1]443"}, "expected ':PORT' after ']'"},
      {{"[zz::1]:443"}, "is not an IP address"},
      {{"10.1.2.3/24:5432"}, "has bits set after its /24 prefix"},
      {{"10.0.0.0/33:80"}, "is not a prefix length from 0 to 32"},
      {{"0.0.0.0/0:443"}, "too broad"},
      {{"[::/0]:443"}, "too broad"},
      {{"300.1.1.1:80"}, "is not a valid host name or IP address"},
      {{"bad host:80"}, "printable ASCII without spaces"},
      {{"ex\xc3\xa4mple.com"}, "punycode"},
      {{"a..b:80"}, "is not a valid host name"},
      {{"-:80x"}, "the port must be a number"},
      {{":443"}, "the host is missing"},
      {{std::string(301, 'a')}, "at most 300 characters"},
  };
  for (const Case& c : cases) {
    std::string msg = ParseError(c.entries);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "got: " << msg;
  }
}

TEST(EgressPolicyParse, LimitsTheNumberOfEntries) {
  std::vector<std::string> many(EgressPolicy::kMaxEntries, "example.com:443");
  EXPECT_TRUE(EgressPolicy::Parse(many).ok());
  many.push_back("example.com:80");
  EXPECT_NE(ParseError(many).find("at most 256 entries"), std::string::npos);
}

TEST(EgressPolicyParse, FromJsonChecksTypesAndNamesTheField) {
  EXPECT_TRUE(EgressPolicy::FromJson(Json()).ok());
  EXPECT_EQ(EgressPolicy::FromJson(Json::array({"a.example.com:443"}))->rules().size(), 1u);
  Result<EgressPolicy> p = EgressPolicy::FromJson(Json::array({"a.com", 443}));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("'sandbox.egress[1]' must be a string"), std::string::npos);
  p = EgressPolicy::FromJson(Json("a.com"));
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("'sandbox.egress' must be an array"), std::string::npos);
  p = EgressPolicy::FromJson(Json::array({"*"}), "agents.x.sandbox.egress");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("'agents.x.sandbox.egress[0]'"), std::string::npos);
}

TEST(EgressPolicyMatch, HostsWildcardsPortsAndAddresses) {
  EgressPolicy p = MustParse({"api.example.com:443", "*.example.net:443", "plain.example.org",
                              "10.1.2.0/24:5432", "[2001:db8::/32]:443"});
  struct Case {
    const char* host;
    uint16_t port;
    bool allowed;
  };
  const Case cases[] = {
      {"api.example.com", 443, true},
      {"API.Example.COM.", 443, true},
      {"api.example.com", 80, false},
      {"www.api.example.com", 443, false},  // an exact entry does not cover subdomains
      {"example.com", 443, false},
      {"a.example.net", 443, true},
      {"a.b.example.net", 443, true},
      {"example.net", 443, false},  // the wildcard does not cover the apex
      {"badexample.net", 443, false},
      {"a.example.net", 8443, false},
      {"plain.example.org", 80, true},
      {"plain.example.org", 443, true},
      {"plain.example.org", 8080, false},
      {"10.1.2.77", 5432, true},
      {"10.1.3.1", 5432, false},
      {"10.1.2.77", 5433, false},
      {"::ffff:10.1.2.77", 5432, true},  // the mapped form is the same address
      {"2001:db8:1::5", 443, true},
      {"2001:db9::5", 443, false},
      {"api.example.com", 0, false},
      {"not a host", 443, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(p.Match(c.host, c.port) != nullptr, c.allowed) << c.host << ":" << c.port;
  }
  // A name is never matched against an address entry and the reverse.
  EgressPolicy names = MustParse({"example.com"});
  EXPECT_EQ(names.Match("93.184.216.34", 443), nullptr);
}

TEST(EgressPolicyAddress, SpecialRangesAreClassified) {
  struct Case {
    const char* addr;
    const char* kind;  // nullptr: an ordinary public address
  };
  const Case cases[] = {
      {"169.254.169.254", "link-local address"},
      {"169.254.0.1", "link-local address"},
      {"127.0.0.1", "loopback address"},
      {"127.255.0.9", "loopback address"},
      {"10.0.0.1", "private address"},
      {"10.255.255.255", "private address"},
      {"172.16.0.1", "private address"},
      {"172.31.255.1", "private address"},
      {"172.32.0.1", nullptr},
      {"192.168.1.1", "private address"},
      {"100.64.0.1", "shared (CGNAT) address"},
      {"100.127.255.254", "shared (CGNAT) address"},
      {"100.128.0.1", nullptr},
      {"0.0.0.0", "unspecified address"},
      {"224.0.0.1", "multicast address"},
      {"255.255.255.255", "broadcast address"},
      {"240.0.0.1", "reserved address"},
      {"192.0.2.1", "documentation address"},
      {"198.18.0.1", "benchmarking address"},
      {"8.8.8.8", nullptr},
      {"1.1.1.1", nullptr},
      {"::1", "loopback address"},
      {"::", "unspecified address"},
      {"::ffff:127.0.0.1", "loopback address"},
      {"::ffff:169.254.169.254", "link-local address"},
      {"::ffff:10.0.0.1", "private address"},
      {"::ffff:8.8.8.8", nullptr},
      {"::127.0.0.1", "reserved address"},  // IPv4-compatible, deprecated
      {"64:ff9b::7f00:1", "loopback address (NAT64)"},
      {"64:ff9b::a9fe:a9fe", "link-local address (NAT64)"},
      {"64:ff9b::808:808", nullptr},
      {"2002:7f00:1::1", "loopback address (6to4)"},
      {"2002:0a00:0001::1", "private address (6to4)"},
      {"fe80::1", "link-local address"},
      {"fc00::1", "private (unique local) address"},
      {"fd00:ec2::254", "private (unique local) address"},  // AWS metadata over IPv6
      {"fec0::1", "private (site-local) address"},
      {"ff02::1", "multicast address"},
      {"2001:db8::1", "documentation address"},
      {"2001::1", "reserved (Teredo) address"},
      {"2606:4700::1111", nullptr},
  };
  for (const Case& c : cases) {
    std::optional<std::string> kind = SpecialAddressKind(Ip(c.addr));
    if (c.kind == nullptr) {
      EXPECT_FALSE(kind.has_value()) << c.addr << " classified as " << *kind;
    } else {
      EXPECT_EQ(kind.value_or("public"), c.kind) << c.addr;
    }
  }
}

TEST(EgressPolicyAddress, MappedAddressesAreHeldAsIpv4) {
  EXPECT_EQ(Ip("::ffff:127.0.0.1"), Ip("127.0.0.1"));
  EXPECT_FALSE(Ip("::ffff:127.0.0.1").v6);
  EXPECT_EQ(Ip("::ffff:7f00:1").ToString(), "127.0.0.1");
  EXPECT_EQ(Ip("2001:db8::1").ToString(443), "[2001:db8::1]:443");
  EXPECT_FALSE(IpAddress::Parse("127.1").has_value());
  EXPECT_FALSE(IpAddress::Parse("010.0.0.1").has_value());
  EXPECT_FALSE(IpAddress::Parse("fe80::1%eth0").has_value());
  EXPECT_FALSE(IpAddress::Parse("[::1]").has_value());
}

TEST(EgressPolicyAddress, NameEntriesNeverUnlockInternalAddresses) {
  EgressPolicy p = MustParse({"internal.example.com:80", "localhost:8080"});
  const char* refused[] = {"169.254.169.254", "127.0.0.1", "10.0.0.5", "::ffff:127.0.0.1",
                           "100.64.1.1",      "::1",       "fd00::1",  "0.0.0.0"};
  for (const char* a : refused) {
    EXPECT_TRUE(p.CheckAddress(Ip(a), 80).has_value()) << a;
    EXPECT_TRUE(p.CheckAddress(Ip(a), 8080).has_value()) << a;
  }
  EXPECT_EQ(p.CheckAddress(Ip("127.0.0.1"), 8080).value_or(""), "loopback address");
  EXPECT_FALSE(p.CheckAddress(Ip("93.184.216.34"), 80).has_value());
}

TEST(EgressPolicyAddress, ListedPrivateRangesAreAllowedOnTheirPortsOnly) {
  EgressPolicy p =
      MustParse({"10.1.2.0/24:5432", "127.0.0.1:8080", "[fd00::/16]:443", "169.254.169.254:80"});
  EXPECT_FALSE(p.CheckAddress(Ip("10.1.2.9"), 5432).has_value());
  EXPECT_EQ(p.CheckAddress(Ip("10.1.2.9"), 5433).value_or(""), "private address");
  EXPECT_EQ(p.CheckAddress(Ip("10.1.3.9"), 5432).value_or(""), "private address");
  EXPECT_FALSE(p.CheckAddress(Ip("127.0.0.1"), 8080).has_value());
  EXPECT_FALSE(p.CheckAddress(Ip("::ffff:127.0.0.1"), 8080).has_value());
  EXPECT_TRUE(p.CheckAddress(Ip("127.0.0.2"), 8080).has_value());
  EXPECT_FALSE(p.CheckAddress(Ip("fd00:1::1"), 443).has_value());
  // Listing the metadata address is an explicit choice, and honoured.
  EXPECT_FALSE(p.CheckAddress(Ip("169.254.169.254"), 80).has_value());
  EXPECT_TRUE(p.CheckAddress(Ip("169.254.169.253"), 80).has_value());
}

TEST(EgressPolicyAddress, TheHostsOwnAddressesAreRefusedUnlessListed) {
  EgressPolicy p = MustParse({"www.example.com:443", "198.51.99.7:22"});
  std::vector<IpAddress> mine = {Ip("198.51.99.7"), Ip("2a00:1::7")};
  EXPECT_EQ(p.CheckAddress(Ip("198.51.99.7"), 443, mine).value_or(""), "address of this host");
  EXPECT_EQ(p.CheckAddress(Ip("2a00:1::7"), 443, mine).value_or(""), "address of this host");
  EXPECT_FALSE(p.CheckAddress(Ip("198.51.99.7"), 22, mine).has_value());
  EXPECT_FALSE(p.CheckAddress(Ip("198.51.99.8"), 443, mine).has_value());
}

TEST(EgressPolicyHostName, NormalizesAndRejects) {
  EXPECT_EQ(NormalizeHostName("WWW.Example.com.").value_or(""), "www.example.com");
  EXPECT_EQ(NormalizeHostName("_svc.example.com").value_or(""), "_svc.example.com");
  EXPECT_FALSE(NormalizeHostName("").has_value());
  EXPECT_FALSE(NormalizeHostName(".").has_value());
  EXPECT_FALSE(NormalizeHostName("a..b").has_value());
  EXPECT_FALSE(NormalizeHostName(std::string(64, 'a') + ".com").has_value());
  EXPECT_FALSE(NormalizeHostName("2130706433").has_value());  // 127.0.0.1 to inet_aton
  EXPECT_FALSE(NormalizeHostName("127.1").has_value());
  EXPECT_FALSE(NormalizeHostName("0x7f.1").has_value());
  EXPECT_FALSE(NormalizeHostName("a/b").has_value());
}

}  // namespace
}  // namespace agentd::sandbox::egress

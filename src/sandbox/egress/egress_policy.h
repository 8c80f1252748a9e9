// A sandbox's network egress allow-list (the agent definition's `sandbox.egress`) and the
// checks the egress proxy (egress_proxy.h) makes with it. README.md in this folder says why
// egress goes through a proxy on the host.
//
// Entries, each a string:
//   "api.example.com:443"     that host name, that port
//   "api.example.com"         that host name, ports 80 and 443
//   "*.example.com:443"       any name below example.com (not example.com itself)
//   "203.0.113.7:80"          that IPv4 address
//   "10.1.2.0/24:5432"        an IPv4 range
//   "[2001:db8::1]:443"       an IPv6 address (brackets required when a port follows)
//   "[2001:db8::/32]:443"     an IPv6 range (also "[2001:db8::]/32:443")
// Not accepted: "*" or "*:443" (any host at all: too broad to be a policy), a wildcard with
// fewer than two labels after it ("*.com"), a wildcard anywhere but the first label, port 0,
// and names that are not ASCII (write IDNs in punycode).
//
// Addresses: a name is resolved on the host and every address it resolves to is checked.
// Loopback, link-local (cloud metadata at 169.254.169.254), private, CGNAT, unspecified,
// multicast, broadcast, reserved and documentation ranges, their IPv4-mapped/NAT64/6to4 IPv6
// forms, and the host's own addresses are refused unless an address entry (IP or CIDR) of
// the policy covers that address and port. A name entry never unlocks such an address by
// itself, which defeats DNS rebinding to internal addresses.
//
// An EgressPolicy is immutable after Parse and safe to share between threads.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

struct sockaddr;

namespace agentd::sandbox::egress {

// An IPv4 or IPv6 address. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is held as the IPv4
// address it maps, so that the two forms compare and match alike.
struct IpAddress {
  bool v6 = false;
  std::array<uint8_t, 16> bytes{};  // IPv4: the first 4 bytes, network order

  // Parses a literal without brackets or port ("10.0.0.1", "::1"); nullopt if it is not one.
  static std::optional<IpAddress> Parse(std::string_view text);
  // From a sockaddr_in or sockaddr_in6; nullopt for other families.
  static std::optional<IpAddress> FromSockaddr(const sockaddr* sa);
  static IpAddress V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d);
  int bits() const { return v6 ? 128 : 32; }
  // "10.0.0.1", "2001:db8::1" (no brackets).
  std::string ToString() const;
  // "10.0.0.1:80", "[2001:db8::1]:443".
  std::string ToString(uint16_t port) const;
  bool operator==(const IpAddress&) const = default;
};

struct IpRange {
  IpAddress base;  // host bits are zero
  int prefix = 0;
  bool Contains(const IpAddress& a) const;
};

// Why an address is not an ordinary public one ("loopback address", "link-local address",
// "private address", ...), or nullopt for an ordinary public address.
std::optional<std::string> SpecialAddressKind(const IpAddress& a);

struct EgressRule {
  enum class Kind {
    kHost,        // `name` exactly
    kHostSuffix,  // any name ending in `name` (".example.com"), not the apex
    kAddress,     // an address in `range`
  };
  Kind kind = Kind::kHost;
  std::string name;  // lower case, no trailing dot
  IpRange range;
  std::vector<uint16_t> ports;  // {80, 443} when the entry has no port
  std::string text;             // the entry as written
};

// Lower-cases a host name and drops one trailing dot; nullopt if it is not a valid DNS name
// (ASCII letters, digits, '-', '_', labels of 1-63 bytes, at most 253 bytes).
std::optional<std::string> NormalizeHostName(std::string_view host);

class EgressPolicy {
 public:
  static constexpr size_t kMaxEntries = 256;

  // An empty policy: nothing is allowed.
  EgressPolicy() = default;

  // Parses the entries; an error names the entry by index ("'sandbox.egress[2]': ...").
  // `field` is the dotted path of the list in the agent definition.
  static Result<EgressPolicy> Parse(const std::vector<std::string>& entries,
                                    std::string_view field = "sandbox.egress");
  // The same from the JSON value of the field: an array of strings (null means empty).
  static Result<EgressPolicy> FromJson(const Json& value,
                                       std::string_view field = "sandbox.egress");

  const std::vector<EgressRule>& rules() const { return rules_; }
  bool empty() const { return rules_.empty(); }
  // The entries as written, in order (what the agent definition is written back with).
  std::vector<std::string> ToStrings() const;

  // The first rule that allows a connection to `host` (a name, or an IP literal without
  // brackets) on `port`, or nullptr. A name matches only name rules and an IP literal only
  // address rules; names are compared case-insensitively and without a trailing dot.
  const EgressRule* Match(std::string_view host, uint16_t port) const;

  // Whether a connection may go to `addr`, an address the requested name resolved to (or the
  // IP literal requested): nullopt when it may, otherwise why not, without the address
  // ("loopback address"). Special addresses (SpecialAddressKind) and `host_addresses` (this
  // machine's own) are allowed only when an address rule covers them and `port`.
  std::optional<std::string> CheckAddress(const IpAddress& addr, uint16_t port,
                                          const std::vector<IpAddress>& host_addresses = {}) const;

 private:
  bool AddressRuleCovers(const IpAddress& addr, uint16_t port) const;

  std::vector<EgressRule> rules_;
};

}  // namespace agentd::sandbox::egress

#include "sandbox/egress/egress_policy.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace agentd::sandbox::egress {
namespace {

// Narrowest ranges an address entry may name: a wider one would let an agent reach most of
// the internet and every internal address of the host's networks at once.
constexpr int kMinPrefixV4 = 8;
constexpr int kMinPrefixV6 = 16;
constexpr size_t kMaxEntryLength = 300;
constexpr uint16_t kDefaultPorts[] = {80, 443};

IpAddress MakeV6(std::initializer_list<uint8_t> prefix_bytes) {
  IpAddress a;
  a.v6 = true;
  size_t i = 0;
  for (uint8_t b : prefix_bytes) a.bytes[i++] = b;
  return a;
}

bool HasPrefix(const IpAddress& a, const IpAddress& base, int prefix) {
  if (a.v6 != base.v6) return false;
  int full = prefix / 8;
  if (std::memcmp(a.bytes.data(), base.bytes.data(), full) != 0) return false;
  int rest = prefix % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a.bytes[full] & mask) == (base.bytes[full] & mask);
}

bool HostBitsZero(const IpAddress& a, int prefix) {
  for (int bit = prefix; bit < a.bits(); ++bit) {
    if (a.bytes[bit / 8] & (0x80 >> (bit % 8))) return false;
  }
  return true;
}

IpAddress EmbeddedV4(const IpAddress& a, size_t offset) {
  return IpAddress::V4(a.bytes[offset], a.bytes[offset + 1], a.bytes[offset + 2],
                       a.bytes[offset + 3]);
}

struct SpecialRange {
  IpAddress base;
  int prefix;
  const char* kind;
};

const std::vector<SpecialRange>& SpecialV4() {
  using A = IpAddress;
  static const std::vector<SpecialRange> ranges = {
      {A::V4(0, 0, 0, 0), 8, "unspecified address"},
      {A::V4(10, 0, 0, 0), 8, "private address"},
      {A::V4(100, 64, 0, 0), 10, "shared (CGNAT) address"},
      {A::V4(127, 0, 0, 0), 8, "loopback address"},
      {A::V4(169, 254, 0, 0), 16, "link-local address"},
      {A::V4(172, 16, 0, 0), 12, "private address"},
      {A::V4(192, 0, 0, 0), 24, "reserved address"},
      {A::V4(192, 0, 2, 0), 24, "documentation address"},
      {A::V4(192, 88, 99, 0), 24, "reserved address"},
      {A::V4(192, 168, 0, 0), 16, "private address"},
      {A::V4(198, 18, 0, 0), 15, "benchmarking address"},
      {A::V4(198, 51, 100, 0), 24, "documentation address"},
      {A::V4(203, 0, 113, 0), 24, "documentation address"},
      {A::V4(224, 0, 0, 0), 4, "multicast address"},
      {A::V4(255, 255, 255, 255), 32, "broadcast address"},
      {A::V4(240, 0, 0, 0), 4, "reserved address"},
  };
  return ranges;
}

const std::vector<SpecialRange>& SpecialV6() {
  static const std::vector<SpecialRange> ranges = {
      {MakeV6({}), 128, "unspecified address"},
      {MakeV6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}), 128, "loopback address"},
      // IPv4-compatible and IPv4-translated forms and the rest of ::/8.
      {MakeV6({}), 8, "reserved address"},
      {MakeV6({0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}), 48, "private (local NAT64) address"},
      {MakeV6({0x01, 0x00}), 64, "reserved address"},
      {MakeV6({0x20, 0x01, 0x00, 0x00}), 32, "reserved (Teredo) address"},
      {MakeV6({0x20, 0x01, 0x00, 0x02, 0x00, 0x00}), 48, "benchmarking address"},
      {MakeV6({0x20, 0x01, 0x0d, 0xb8}), 32, "documentation address"},
      {MakeV6({0x3f, 0xff}), 20, "documentation address"},
      {MakeV6({0xfc}), 7, "private (unique local) address"},
      {MakeV6({0xfe, 0x80}), 10, "link-local address"},
      {MakeV6({0xfe, 0xc0}), 10, "private (site-local) address"},
      {MakeV6({0xff}), 8, "multicast address"},
  };
  return ranges;
}

bool ParsePort(std::string_view s, uint16_t* port, std::string* error) {
  if (s.empty() || s.size() > 5 ||
      !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    *error = "the port must be a number from 1 to 65535";
    return false;
  }
  int v = std::stoi(std::string(s));
  if (v == 0) {
    *error = "port 0 is not allowed";
    return false;
  }
  if (v > 65535) {
    *error = "the port must be a number from 1 to 65535";
    return false;
  }
  *port = static_cast<uint16_t>(v);
  return true;
}

bool ParsePrefix(std::string_view s, int max, int* prefix) {
  if (s.empty() || s.size() > 3 ||
      !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  *prefix = std::stoi(std::string(s));
  return *prefix <= max;
}

// An address or CIDR range (no brackets, no port) into `rule`.
bool ParseAddressRule(std::string_view text, EgressRule* rule, std::string* error) {
  std::string_view addr = text;
  std::optional<std::string_view> prefix_text;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    addr = text.substr(0, slash);
    prefix_text = text.substr(slash + 1);
  }
  std::optional<IpAddress> ip = IpAddress::Parse(addr);
  if (!ip) {
    *error = fmt::format("'{}' is not an IP address", addr);
    return false;
  }
  int prefix = ip->bits();
  if (prefix_text) {
    // A range written in the mapped form (::ffff:10.0.0.0/104) is held as IPv4 like its
    // addresses, so its prefix counts IPv4 bits.
    bool mapped = !ip->v6 && addr.find(':') != std::string_view::npos;
    int max = mapped ? 128 : ip->bits();
    if (!ParsePrefix(*prefix_text, max, &prefix) || (mapped && prefix < 96)) {
      *error = fmt::format("'/{}' is not a prefix length from 0 to {}", *prefix_text, max);
      return false;
    }
    if (mapped) prefix -= 96;
    int min = ip->v6 ? kMinPrefixV6 : kMinPrefixV4;
    if (prefix < min) {
      *error = fmt::format(
          "the range is too broad (a prefix shorter than /{} would allow most of the network)",
          min);
      return false;
    }
    if (!HostBitsZero(*ip, prefix)) {
      *error = fmt::format("'{}' has bits set after its /{} prefix", text, *prefix_text);
      return false;
    }
  }
  rule->kind = EgressRule::Kind::kAddress;
  rule->range = IpRange{*ip, prefix};
  return true;
}

Result<EgressRule> ParseEntry(const std::string& entry, const std::string& where) {
  auto fail = [&](const std::string& why) -> Status {
    return InvalidArgument(fmt::format("'{}': {}", where, why));
  };
  if (entry.empty()) return fail("an entry must not be empty");
  if (entry.size() > kMaxEntryLength) {
    return fail(fmt::format("an entry must be at most {} characters", kMaxEntryLength));
  }
  for (unsigned char c : entry) {
    if (c <= ' ' || c >= 0x7f) {
      return fail("an entry must be printable ASCII without spaces (write names in punycode)");
    }
  }
  EgressRule rule;
  rule.text = entry;
  std::string_view host;
  std::optional<std::string_view> port_text;
  std::string error;
  if (entry[0] == '[') {
    size_t close = entry.find(']');
    if (close == std::string::npos) return fail("'[' without a closing ']'");
    std::string inside = entry.substr(1, close - 1);
    std::string_view rest = std::string_view(entry).substr(close + 1);
    if (!rest.empty() && rest[0] == '/') {  // "[2001:db8::]/32:443"
      size_t colon = rest.find(':');
      inside += std::string(rest.substr(0, colon));
      rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon);
    }
    if (!rest.empty()) {
      if (rest[0] != ':') return fail("expected ':PORT' after ']'");
      port_text = rest.substr(1);
    }
    if (inside.find(':') == std::string::npos) {
      return fail("brackets are only for IPv6 addresses ('[2001:db8::1]:443')");
    }
    if (!ParseAddressRule(inside, &rule, &error)) return fail(error);
  } else {
    size_t colons = std::count(entry.begin(), entry.end(), ':');
    if (colons > 1) {
      return fail(
          "write an IPv6 address in brackets, with its port after them ('[2001:db8::1]:443')");
    }
    host = entry;
    if (colons == 1) {
      size_t colon = entry.find(':');
      host = std::string_view(entry).substr(0, colon);
      port_text = std::string_view(entry).substr(colon + 1);
    }
    if (host.empty()) return fail("the host is missing");
    if (host == "*") {
      return fail(
          "'*' would allow every host; list the hosts, or a domain's subdomains as "
          "'*.example.com'");
    }
    bool wildcard = host.size() > 2 && host.substr(0, 2) == "*.";
    std::string_view name = wildcard ? host.substr(2) : host;
    if (name.find('*') != std::string_view::npos) {
      return fail("'*' is allowed only as the whole first label ('*.example.com:443')");
    }
    if (!wildcard && (IpAddress::Parse(name) || name.find('/') != std::string_view::npos)) {
      if (!ParseAddressRule(name, &rule, &error)) return fail(error);
    } else {
      std::optional<std::string> norm = NormalizeHostName(name);
      if (!norm) return fail(fmt::format("'{}' is not a valid host name or IP address", name));
      if (wildcard) {
        if (norm->find('.') == std::string::npos) {
          return fail(
              fmt::format("'*.{}' is too broad; a wildcard needs at least two labels after it "
                          "('*.example.com')",
                          *norm));
        }
        rule.kind = EgressRule::Kind::kHostSuffix;
        rule.name = "." + *norm;
      } else {
        rule.kind = EgressRule::Kind::kHost;
        rule.name = *norm;
      }
    }
  }
  if (port_text) {
    uint16_t port = 0;
    if (!ParsePort(*port_text, &port, &error)) return fail(error);
    rule.ports = {port};
  } else {
    rule.ports.assign(std::begin(kDefaultPorts), std::end(kDefaultPorts));
  }
  return rule;
}

}  // namespace

std::optional<IpAddress> IpAddress::Parse(std::string_view text) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  std::string s(text);
  IpAddress a;
  if (s.find(':') == std::string::npos) {
    if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) != 1) return std::nullopt;
    return a;
  }
  a.v6 = true;
  if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) != 1) return std::nullopt;
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(a.bytes.data(), kMapped, 12) == 0) return EmbeddedV4(a, 12);
  return a;
}

std::optional<IpAddress> IpAddress::FromSockaddr(const sockaddr* sa) {
  if (sa == nullptr) return std::nullopt;
  IpAddress a;
  if (sa->sa_family == AF_INET) {
    std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
    return a;
  }
  if (sa->sa_family != AF_INET6) return std::nullopt;
  a.v6 = true;
  std::memcpy(a.bytes.data(), &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, 16);
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(a.bytes.data(), kMapped, 12) == 0) return EmbeddedV4(a, 12);
  return a;
}

IpAddress IpAddress::V4(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  IpAddress ip;
  ip.bytes[0] = a, ip.bytes[1] = b, ip.bytes[2] = c, ip.bytes[3] = d;
  return ip;
}

std::string IpAddress::ToString() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.data(), buf, sizeof(buf));
  return buf;
}

std::string IpAddress::ToString(uint16_t port) const {
  return v6 ? fmt::format("[{}]:{}", ToString(), port) : fmt::format("{}:{}", ToString(), port);
}

bool IpRange::Contains(const IpAddress& a) const { return HasPrefix(a, base, prefix); }

std::optional<std::string> SpecialAddressKind(const IpAddress& a) {
  if (!a.v6) {
    for (const auto& r : SpecialV4()) {
      if (HasPrefix(a, r.base, r.prefix)) return std::string(r.kind);
    }
    return std::nullopt;
  }
  // Forms that carry an IPv4 address a gateway would forward to: judged by that address.
  if (HasPrefix(a, MakeV6({0x00, 0x64, 0xff, 0x9b}), 96)) {  // NAT64 64:ff9b::/96
    if (auto kind = SpecialAddressKind(EmbeddedV4(a, 12))) return *kind + " (NAT64)";
    return std::nullopt;
  }
  if (HasPrefix(a, MakeV6({0x20, 0x02}), 16)) {  // 6to4 2002::/16
    if (auto kind = SpecialAddressKind(EmbeddedV4(a, 2))) return *kind + " (6to4)";
    return std::nullopt;
  }
  for (const auto& r : SpecialV6()) {
    if (HasPrefix(a, r.base, r.prefix)) return std::string(r.kind);
  }
  return std::nullopt;
}

std::optional<std::string> NormalizeHostName(std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.empty() || host.size() > 253) return std::nullopt;
  std::string out;
  out.reserve(host.size());
  size_t label = 0;
  for (char c : host) {
    if (c == '.') {
      if (label == 0) return std::nullopt;
      label = 0;
    } else {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '_';
      if (!ok || ++label > 63) return std::nullopt;
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    out.push_back(c);
  }
  if (label == 0) return std::nullopt;
  // A last label of digits only is a malformed IP address, not a name ("300.1.1.1", or the
  // "2130706433" that inet_aton would read as 127.0.0.1).
  std::string_view last = std::string_view(out).substr(out.rfind('.') + 1);
  if (std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  if (std::string_view(out).substr(0, 2) == "0x") return std::nullopt;
  return out;
}

Result<EgressPolicy> EgressPolicy::Parse(const std::vector<std::string>& entries,
                                         std::string_view field) {
  if (entries.size() > kMaxEntries) {
    return InvalidArgument(fmt::format("'{}': at most {} entries are allowed (got {})", field,
                                       kMaxEntries, entries.size()));
  }
  EgressPolicy p;
  p.rules_.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    ASSIGN_OR_RETURN(EgressRule rule, ParseEntry(entries[i], fmt::format("{}[{}]", field, i)));
    p.rules_.push_back(std::move(rule));
  }
  return p;
}

Result<EgressPolicy> EgressPolicy::FromJson(const Json& value, std::string_view field) {
  if (value.is_null()) return EgressPolicy();
  if (!value.is_array()) {
    return InvalidArgument(fmt::format("'{}' must be an array of strings", field));
  }
  if (value.size() > kMaxEntries) {
    return InvalidArgument(fmt::format("'{}': at most {} entries are allowed (got {})", field,
                                       kMaxEntries, value.size()));
  }
  std::vector<std::string> entries;
  for (size_t i = 0; i < value.size(); ++i) {
    if (!value[i].is_string()) {
      return InvalidArgument(
          fmt::format("'{}[{}]' must be a string such as \"api.example.com:443\"", field, i));
    }
    entries.push_back(value[i].get<std::string>());
  }
  return Parse(entries, field);
}

std::vector<std::string> EgressPolicy::ToStrings() const {
  std::vector<std::string> out;
  for (const auto& r : rules_) out.push_back(r.text);
  return out;
}

const EgressRule* EgressPolicy::Match(std::string_view host, uint16_t port) const {
  if (port == 0) return nullptr;
  auto has_port = [port](const EgressRule& r) {
    return std::find(r.ports.begin(), r.ports.end(), port) != r.ports.end();
  };
  if (std::optional<IpAddress> ip = IpAddress::Parse(host)) {
    for (const auto& r : rules_) {
      if (r.kind == EgressRule::Kind::kAddress && has_port(r) && r.range.Contains(*ip)) return &r;
    }
    return nullptr;
  }
  std::optional<std::string> name = NormalizeHostName(host);
  if (!name) return nullptr;
  for (const auto& r : rules_) {
    if (!has_port(r)) continue;
    if (r.kind == EgressRule::Kind::kHost && r.name == *name) return &r;
    if (r.kind == EgressRule::Kind::kHostSuffix && name->size() > r.name.size() &&
        name->compare(name->size() - r.name.size(), r.name.size(), r.name) == 0) {
      return &r;
    }
  }
  return nullptr;
}

bool EgressPolicy::AddressRuleCovers(const IpAddress& addr, uint16_t port) const {
  for (const auto& r : rules_) {
    if (r.kind == EgressRule::Kind::kAddress && r.range.Contains(addr) &&
        std::find(r.ports.begin(), r.ports.end(), port) != r.ports.end()) {
      return true;
    }
  }
  return false;
}

std::optional<std::string> EgressPolicy::CheckAddress(
    const IpAddress& addr, uint16_t port, const std::vector<IpAddress>& host_addresses) const {
  if (port == 0) return "port 0";
  std::optional<std::string> kind = SpecialAddressKind(addr);
  if (!kind &&
      std::find(host_addresses.begin(), host_addresses.end(), addr) != host_addresses.end()) {
    kind = "address of this host";
  }
  if (!kind || AddressRuleCovers(addr, port)) return std::nullopt;
  return kind;
}

}  // namespace agentd::sandbox::egress

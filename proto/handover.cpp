#include "proto/handover.hpp"

#include "proto/bytes.hpp"

namespace pgring::proto::handover {

namespace {

// Fields: integers big-endian, strings as a uint32 length and their bytes (any bytes: a
// statement text or a client's unread input is not NUL-free).
void put_u32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(v >> shift));
}
void put_u64(std::string& out, std::uint64_t v) {
  put_u32(out, static_cast<std::uint32_t>(v >> 32));
  put_u32(out, static_cast<std::uint32_t>(v));
}
void put_string(std::string& out, std::string_view s) {
  put_u32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}
void put_pairs(std::string& out, const std::vector<std::pair<std::string, std::string>>& pairs) {
  put_u32(out, static_cast<std::uint32_t>(pairs.size()));
  for (const auto& [name, value] : pairs) {
    put_string(out, name);
    put_string(out, value);
  }
}

std::uint32_t get_u32(Reader& in) {
  return static_cast<std::uint32_t>(in.i32());
}
std::uint64_t get_u64(Reader& in) {
  std::uint64_t high = get_u32(in);
  return (high << 32) | get_u32(in);
}
std::string get_string(Reader& in) {
  std::uint32_t n = get_u32(in);
  return std::string(in.bytes(n));  // (a length past the end fails the reader)
}
// A count of items each at least `min_size` bytes: never more than the rest could hold, so a
// lying count cannot make the decoder reserve or loop for ever.
bool plausible_count(const Reader& in, std::uint32_t count, std::size_t min_size) {
  return in.ok() && count <= in.remaining() / min_size;
}
bool get_pairs(Reader& in, std::vector<std::pair<std::string, std::string>>& pairs) {
  std::uint32_t n = get_u32(in);
  if (!plausible_count(in, n, 8)) return false;
  pairs.reserve(n);
  for (std::uint32_t i = 0; i < n && in.ok(); ++i) {
    std::string name = get_string(in);
    pairs.emplace_back(std::move(name), get_string(in));
  }
  return in.ok();
}

}  // namespace

std::optional<Header> parse_header(std::string_view bytes) {
  if (bytes.size() < kHeaderSize) return std::nullopt;
  Reader in(bytes.substr(0, kHeaderSize));
  auto kind = static_cast<Kind>(in.u8());
  std::uint32_t length = get_u32(in);
  switch (kind) {
    case Kind::hello:
    case Kind::listener:
    case Kind::listeners_done:
    case Kind::ready:
    case Kind::client_key:
    case Kind::client:
    case Kind::done:
      break;
    default:
      return std::nullopt;
  }
  if (length > kMaxBody) return std::nullopt;
  return Header{kind, length};
}

void append_frame(std::string& out, Kind kind, std::string_view body) {
  out.push_back(static_cast<char>(kind));
  put_u32(out, static_cast<std::uint32_t>(body.size()));
  out.append(body);
}

std::string encode(const Listener& listener) {
  std::string out;
  put_string(out, listener.name);
  put_u32(out, listener.reactor);
  return out;
}

std::optional<Listener> decode_listener(std::string_view body) {
  Reader in(body);
  Listener listener;
  listener.name = get_string(in);
  listener.reactor = get_u32(in);
  if (!in.ok() || !in.at_end()) return std::nullopt;
  return listener;
}

std::string encode(const ClientKey& key) {
  std::string out;
  put_string(out, key.user);
  put_string(out, key.secret);
  out.append(reinterpret_cast<const char*>(key.key.data()), key.key.size());
  return out;
}

std::optional<ClientKey> decode_client_key(std::string_view body) {
  Reader in(body);
  ClientKey key;
  key.user = get_string(in);
  key.secret = get_string(in);
  std::string_view bytes = in.bytes(key.key.size());
  if (!in.ok() || !in.at_end()) return std::nullopt;
  for (std::size_t i = 0; i < key.key.size(); ++i) key.key[i] = static_cast<std::uint8_t>(bytes[i]);
  return key;
}

std::string encode(const Client& client) {
  std::string out;
  put_u64(out, client.id);
  put_string(out, client.peer);
  put_u64(out, client.age_ms);
  put_string(out, client.startup_packet);
  put_u32(out, static_cast<std::uint32_t>(client.cancel_pid));
  put_string(out, client.cancel_secret);
  put_string(out, client.lookup_secret);
  out.push_back(static_cast<char>(client.lookup_kind));
  put_pairs(out, client.params);
  put_pairs(out, client.settings);
  put_u32(out, static_cast<std::uint32_t>(client.statements.size()));
  for (const Client::Statement& s : client.statements) {
    put_string(out, s.name);
    put_string(out, s.parse_tail);
    put_u64(out, s.shape);
  }
  put_string(out, client.unnamed_parse_tail);
  put_string(out, client.input);
  if (!client.channels.empty()) {
    put_u32(out, static_cast<std::uint32_t>(client.channels.size()));
    for (const std::string& channel : client.channels) put_string(out, channel);
  }
  return out;
}

std::optional<Client> decode_client(std::string_view body) {
  Reader in(body);
  Client client;
  client.id = get_u64(in);
  client.peer = get_string(in);
  client.age_ms = get_u64(in);
  client.startup_packet = get_string(in);
  client.cancel_pid = static_cast<std::int32_t>(get_u32(in));
  client.cancel_secret = get_string(in);
  client.lookup_secret = get_string(in);
  client.lookup_kind = in.u8();
  if (!get_pairs(in, client.params) || !get_pairs(in, client.settings)) return std::nullopt;
  std::uint32_t statements = get_u32(in);
  if (!plausible_count(in, statements, 16)) return std::nullopt;
  client.statements.reserve(statements);
  for (std::uint32_t i = 0; i < statements && in.ok(); ++i) {
    Client::Statement s;
    s.name = get_string(in);
    s.parse_tail = get_string(in);
    s.shape = get_u64(in);
    client.statements.push_back(std::move(s));
  }
  client.unnamed_parse_tail = get_string(in);
  client.input = get_string(in);
  if (in.ok() && !in.at_end()) {
    std::uint32_t channels = get_u32(in);
    if (channels == 0 || !plausible_count(in, channels, 4)) return std::nullopt;
    client.channels.reserve(channels);
    for (std::uint32_t i = 0; i < channels && in.ok(); ++i) {
      client.channels.push_back(get_string(in));
      if (client.channels.back().empty() || client.channels.back().size() > 63)
        return std::nullopt;  // (not a channel name PostgreSQL would keep)
    }
  }
  // A cancel secret is 4 to 256 bytes (protocol 3.2); anything else is not a client of ours.
  if (!in.ok() || !in.at_end() || client.cancel_secret.size() < 4 ||
      client.cancel_secret.size() > 256)
    return std::nullopt;
  return client;
}

}  // namespace pgring::proto::handover

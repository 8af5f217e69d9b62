#pragma once
// Framing: where does the next message end? Lengths are checked here, before anyone allocates
// or waits for a body, so a lying length is refused from its first 4-8 bytes.
//
//   startup packets (first message of a connection): Int32 len, Int32 code, body
//   every later message:                             Byte1 type, Int32 len, body
// `len` counts itself but not the type byte.

#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace pgring::proto {

inline constexpr std::uint32_t kProtocol30 = 196608;  // 3.0
inline constexpr std::uint32_t kProtocol32 = 196610;  // 3.2 (PostgreSQL 18)
inline constexpr std::uint32_t kCancelRequestCode = 80877102;

// The version pgring speaks with a client that asked for `requested` (3.x): 3.2 for 3.2 and any
// newer minor (negotiated down, as PostgreSQL 18 does), 3.0 for 3.0 and 3.1 (reserved, never
// used: old PgBouncers wrongly accepted it). A 3.2 client gets a long cancel key.
[[nodiscard]] constexpr std::uint32_t negotiated_version(std::uint32_t requested) {
  return requested >= kProtocol32 ? kProtocol32 : kProtocol30;
}
inline constexpr std::uint32_t kSslRequestCode = 80877103;
inline constexpr std::uint32_t kGssEncRequestCode = 80877104;
inline constexpr std::uint32_t kMaxStartupPacket = 10000;  // PostgreSQL's MAX_STARTUP_PACKET_LENGTH

enum class FrameStatus {
  complete,        // a whole message is in the buffer
  need_more,       // header or body incomplete: wait for bytes
  invalid_length,  // the length field cannot be valid (protocol violation, 08P01)
  too_large,       // valid framing but over the configured limit (54000)
};

struct Frame {
  FrameStatus status = FrameStatus::need_more;
  char type = 0;           // 0 for startup packets
  std::uint32_t size = 0;  // whole message in bytes, header included (when known)
  [[nodiscard]] std::size_t header_size() const { return type == 0 ? 4 : 5; }
  // The length cannot be valid, or passes the limit: the connection cannot go on.
  [[nodiscard]] bool bad() const {
    return status == FrameStatus::invalid_length || status == FrameStatus::too_large;
  }
  // The header is in (type and size known), the body may still be arriving.
  [[nodiscard]] bool header_known() const { return size != 0; }
};

// A typed message at the front of `buf`. Needs the 5-byte header to decide; the body may still
// be arriving (status need_more, size known) — callers that forward without inspecting may
// stream it. `max_size` bounds the whole message.
// (Inline: it runs for every message pgring relays, both ways.)
[[nodiscard]] inline Frame frame_message(std::string_view buf, std::uint32_t max_size) {
  Frame f;
  if (buf.size() < 5) return f;
  f.type = buf[0];
  auto u = reinterpret_cast<const unsigned char*>(buf.data() + 1);
  std::uint32_t len = (std::uint32_t{u[0]} << 24) | (std::uint32_t{u[1]} << 16) |
                      (std::uint32_t{u[2]} << 8) | std::uint32_t{u[3]};
  // len counts itself: less than 4 is impossible; more than 2^31 is beyond any protocol limit
  // and would overflow the +1 for the type byte.
  if (len < 4 || len > 0x7fffffffu) {
    f.status = FrameStatus::invalid_length;
    return f;
  }
  f.size = len + 1;
  if (f.size > max_size) {
    f.status = FrameStatus::too_large;
    return f;
  }
  f.status = buf.size() >= f.size ? FrameStatus::complete : FrameStatus::need_more;
  return f;
}

// The startup packet at the front of `buf` (8..kMaxStartupPacket bytes).
[[nodiscard]] Frame frame_startup(std::string_view buf);

enum class StartupKind { startup, ssl_request, gssenc_request, cancel_request, unknown };

// A whole startup packet, classified. For `startup`, `version` is the requested protocol.
struct StartupPacket {
  StartupKind kind = StartupKind::unknown;
  std::uint32_t code = 0;  // protocol version or special request code
  std::string_view body;   // after the code
};
[[nodiscard]] StartupPacket classify_startup(std::string_view packet);

// StartupMessage parameters: (name, value)* terminated by an empty name. Views point into the
// packet. nullopt when malformed (missing terminator, a name without value, no `user`).
struct StartupMessage {
  std::uint32_t version = 0;
  std::vector<std::pair<std::string_view, std::string_view>> params;  // excludes user/database
  std::string_view user;
  std::string_view database;  // defaults to user
  [[nodiscard]] std::string_view find(std::string_view name) const;
};
[[nodiscard]] std::optional<StartupMessage> parse_startup_message(const StartupPacket& packet);

// CancelRequest: Int32 pid, Byte[n] secret (n = 4 in 3.0, up to 256 in 3.2).
struct CancelRequest {
  std::int32_t pid = 0;
  std::string_view secret;
};
[[nodiscard]] std::optional<CancelRequest> parse_cancel_request(const StartupPacket& packet);

}  // namespace pgring::proto

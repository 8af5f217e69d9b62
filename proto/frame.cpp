#include "proto/frame.hpp"

#include "proto/bytes.hpp"

namespace pgring::proto {

namespace {
std::uint32_t be32(const char* p) {
  auto u = reinterpret_cast<const unsigned char*>(p);
  return (std::uint32_t{u[0]} << 24) | (std::uint32_t{u[1]} << 16) | (std::uint32_t{u[2]} << 8) |
         std::uint32_t{u[3]};
}
}  // namespace

Frame frame_startup(std::string_view buf) {
  Frame f;
  if (buf.size() < 4) return f;
  std::uint32_t len = be32(buf.data());
  f.size = len;
  if (len < 8) {
    f.status = FrameStatus::invalid_length;
  } else if (len > kMaxStartupPacket) {
    f.status = FrameStatus::too_large;
  } else {
    f.status = buf.size() >= len ? FrameStatus::complete : FrameStatus::need_more;
  }
  return f;
}

StartupPacket classify_startup(std::string_view packet) {
  StartupPacket p;
  if (packet.size() < 8) return p;
  p.code = be32(packet.data() + 4);
  p.body = packet.substr(8);
  switch (p.code) {
    case kSslRequestCode:
      p.kind = packet.size() == 8 ? StartupKind::ssl_request : StartupKind::unknown;
      break;
    case kGssEncRequestCode:
      p.kind = packet.size() == 8 ? StartupKind::gssenc_request : StartupKind::unknown;
      break;
    case kCancelRequestCode:
      p.kind = StartupKind::cancel_request;
      break;
    default:
      // Any 3.x version is a StartupMessage; newer minors are negotiated down (3.1 is never
      // used, 3.2 and up get NegotiateProtocolVersion until pgring speaks them).
      p.kind = (p.code >> 16) == 3 ? StartupKind::startup : StartupKind::unknown;
      break;
  }
  return p;
}

std::string_view StartupMessage::find(std::string_view name) const {
  for (const auto& [k, v] : params)
    if (k == name) return v;
  return {};
}

std::optional<StartupMessage> parse_startup_message(const StartupPacket& packet) {
  if (packet.kind != StartupKind::startup) return std::nullopt;
  StartupMessage m;
  m.version = packet.code;
  Reader r(packet.body);
  bool have_user = false, have_database = false;
  for (;;) {
    std::string_view name = r.cstring();
    if (!r.ok()) return std::nullopt;
    if (name.empty()) break;
    std::string_view value = r.cstring();
    if (!r.ok()) return std::nullopt;
    if (name == "user") {
      m.user = value;
      have_user = true;
    } else if (name == "database") {
      m.database = value;
      have_database = true;
    } else {
      m.params.emplace_back(name, value);
    }
  }
  if (!r.at_end() || !have_user || m.user.empty()) return std::nullopt;
  if (!have_database || m.database.empty()) m.database = m.user;
  return m;
}

std::optional<CancelRequest> parse_cancel_request(const StartupPacket& packet) {
  if (packet.kind != StartupKind::cancel_request) return std::nullopt;
  Reader r(packet.body);
  CancelRequest c;
  c.pid = r.i32();
  c.secret = r.rest();
  if (!r.ok() || c.secret.size() < 4 || c.secret.size() > 256) return std::nullopt;
  return c;
}

}  // namespace pgring::proto

// libFuzzer target: the upgrade's control-socket frames and records (proto/handover.hpp). What
// decodes must encode back to the same bytes: the decoder accepts exactly the encoder's output.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/handover.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace h = pgring::proto::handover;
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (auto header = h::parse_header(bytes)) {
    if (header->length > h::kMaxBody) __builtin_trap();
  }
  if (auto client = h::decode_client(bytes)) {
    if (h::encode(*client) != bytes) __builtin_trap();
  }
  if (auto listener = h::decode_listener(bytes)) {
    if (h::encode(*listener) != bytes) __builtin_trap();
  }
  if (auto key = h::decode_client_key(bytes)) {
    if (h::encode(*key) != bytes) __builtin_trap();
  }
  return 0;
}

// libFuzzer target for config/: any bytes in, a Config or a ConfigError out. parse_config turns
// yaml-cpp's own exceptions into ConfigError, so anything else escaping (or a sanitizer report)
// is a bug. Seeds: tests/fuzz/corpus/config/.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const pgring::config::Config config = pgring::config::parse_config(text);
    // Exercise the lookups on whatever parsed.
    for (const auto& [name, db] : config.databases) {
      for (const auto& [user_name, user] : config.users) {
        (void)config.resolve_pool(db, config.find_user(user_name));
      }
      (void)config.find_database(name);
    }
    (void)pgring::config::config_warnings(config);
  } catch (const pgring::config::ConfigError& e) {
    (void)e.what();
  }
  return 0;
}

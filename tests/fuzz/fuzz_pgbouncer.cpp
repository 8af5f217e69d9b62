// libFuzzer target for config/pgbouncer: any bytes in as pgbouncer.ini, userlist.txt and an HBA
// file (the input split at its first two NUL bytes). The conversion never throws, and what it
// writes is YAML that parse_config reads (into a Config or a ConfigError naming a key, never
// another exception). Seeds: tests/fuzz/corpus/pgbouncer/.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config.hpp"
#include "config/pgbouncer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  namespace pgb = pgring::config::pgbouncer;
  pgb::Sources sources;
  auto cut = [&]() {
    auto nul = text.find('\0');
    std::string_view part = text.substr(0, nul);
    text = nul == std::string_view::npos ? std::string_view() : text.substr(nul + 1);
    return part;
  };
  sources.ini = cut();
  if (!text.empty()) sources.userlist = cut();
  if (!text.empty()) sources.hba = cut();
  const pgb::Conversion result = pgb::convert(sources);
  if (result.yaml.empty()) std::abort();
  try {
    (void)pgring::config::parse_config(result.yaml);
  } catch (const pgring::config::ConfigError& e) {
    (void)e.what();
  }
  return 0;
}

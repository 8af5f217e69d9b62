#pragma once
// ASCII case folding, as PostgreSQL folds unquoted identifiers and parameter names. Locale-free
// (std::tolower depends on the C locale) and written once for proto/ and daemon/.

#include <string>
#include <string_view>

namespace pgring::proto {

[[nodiscard]] constexpr char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c | 0x20) : c;
}

// Equal ignoring ASCII case (both sides are folded).
[[nodiscard]] constexpr bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

[[nodiscard]] inline std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

}  // namespace pgring::proto

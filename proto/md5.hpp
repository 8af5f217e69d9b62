#pragma once
// PostgreSQL's MD5 password scheme, as pure functions.
//   stored secret:  "md5" + hex(md5(password || user))
//   wire response:  "md5" + hex(md5(hex(md5(password || user)) || salt))

#include <array>
#include <string>
#include <string_view>

namespace pgring::proto::md5 {

using Salt = std::array<char, 4>;

// "md5" + 32 lowercase hex digits.
[[nodiscard]] std::string password_hash(std::string_view user, std::string_view password);
// True when text looks like a stored MD5 secret ("md5" + 32 hex digits).
[[nodiscard]] bool is_md5_secret(std::string_view text);
// The PasswordMessage a client sends for AuthenticationMD5Password, from the stored secret
// ("md5..." as returned by password_hash).
[[nodiscard]] std::string response_from_secret(std::string_view md5_secret, const Salt& salt);
// Same, from the plain password.
[[nodiscard]] std::string response(std::string_view user, std::string_view password,
                                   const Salt& salt);

}  // namespace pgring::proto::md5

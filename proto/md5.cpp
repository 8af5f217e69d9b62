// PostgreSQL's MD5 password scheme. MD5 is long broken as a hash; it is here only because
// existing pg_authid rows and old clients still use it (deprecated since PostgreSQL 18).

#include "proto/md5.hpp"

#include <openssl/evp.h>

#include <cstddef>

namespace pgring::proto::md5 {
namespace {

constexpr std::string_view kPrefix = "md5";
constexpr std::size_t kHexLength = 32;

// "md5" + hex(md5(a || b)), or "" if libcrypto refuses MD5 (e.g. a FIPS-only provider).
// An empty string can never match a real response, so callers fail closed.
std::string md5_hex_of(std::string_view a, std::string_view b) {
  constexpr char kHex[] = "0123456789abcdef";
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = ctx != nullptr && EVP_DigestInit_ex(ctx, EVP_md5(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, a.data(), a.size()) == 1 &&
            EVP_DigestUpdate(ctx, b.data(), b.size()) == 1 &&
            EVP_DigestFinal_ex(ctx, digest, &len) == 1 && len == kHexLength / 2;
  EVP_MD_CTX_free(ctx);
  if (!ok) return {};
  std::string out(kPrefix);
  out.reserve(kPrefix.size() + kHexLength);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[digest[i] >> 4]);
    out.push_back(kHex[digest[i] & 0x0f]);
  }
  return out;
}

}  // namespace

std::string password_hash(std::string_view user, std::string_view password) {
  return md5_hex_of(password, user);
}

// Same test as PostgreSQL's get_password_type(): lowercase hex only, as PostgreSQL writes it.
bool is_md5_secret(std::string_view text) {
  if (text.size() != kPrefix.size() + kHexLength || text.substr(0, kPrefix.size()) != kPrefix) {
    return false;
  }
  for (char c : text.substr(kPrefix.size())) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Returns "" when md5_secret is not an MD5 secret: there is nothing sensible to hash, and an
// empty response never equals what a client sends, so a caller comparing fails closed.
std::string response_from_secret(std::string_view md5_secret, const Salt& salt) {
  if (!is_md5_secret(md5_secret)) return {};
  return md5_hex_of(md5_secret.substr(kPrefix.size()), std::string_view(salt.data(), salt.size()));
}

std::string response(std::string_view user, std::string_view password, const Salt& salt) {
  return response_from_secret(password_hash(user, password), salt);
}

}  // namespace pgring::proto::md5

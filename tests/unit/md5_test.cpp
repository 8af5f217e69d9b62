// PostgreSQL's MD5 password scheme. Expected values come from outside this code: the stored
// secret from PostgreSQL 15 itself (`SET password_encryption='md5'; CREATE ROLE app PASSWORD
// 'secret'` -> rolpassword, equal to `SELECT 'md5'||md5('secret'||'app')`), the responses from
// a shell pipeline:
//   inner=$(printf '%s' secretapp | md5sum | cut -c1-32)
//   { printf '%s' "$inner"; printf '\x93\x2a\x00\xff'; } | md5sum

#include "proto/md5.hpp"

#include <doctest/doctest.h>

#include <string>
#include <string_view>

namespace md5 = pgring::proto::md5;

namespace {

constexpr std::string_view kAppSecret = "md56a422f785c9e20873908ce25d1736ae2";
// Bytes outside ASCII and a NUL: the salt is 4 raw bytes, not a C string.
constexpr md5::Salt kBinarySalt = {'\x93', '\x2a', '\x00', '\xff'};
constexpr md5::Salt kAsciiSalt = {'a', 'b', 'c', 'd'};

}  // namespace

TEST_CASE("md5: password_hash matches PostgreSQL") {
  CHECK(md5::password_hash("app", "secret") == kAppSecret);
  CHECK(md5::password_hash("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d");
  CHECK(md5::password_hash("", "") == "md5d41d8cd98f00b204e9800998ecf8427e");
  // Order is password || user, so swapping them changes the hash.
  CHECK(md5::password_hash("secret", "app") != kAppSecret);
}

TEST_CASE("md5: response to AuthenticationMD5Password") {
  CHECK(md5::response("app", "secret", kBinarySalt) == "md5f7dc497f0a7ebfdb280834cb4c62d4ee");
  CHECK(md5::response("app", "secret", kAsciiSalt) == "md5883f61cc18cc4ae54ca301892bb10c29");
  CHECK(md5::response_from_secret(kAppSecret, kBinarySalt) ==
        "md5f7dc497f0a7ebfdb280834cb4c62d4ee");
  CHECK(md5::response_from_secret(kAppSecret, kAsciiSalt) == "md5883f61cc18cc4ae54ca301892bb10c29");
  CHECK(md5::response("app", "wrong", kAsciiSalt) != "md5883f61cc18cc4ae54ca301892bb10c29");
  CHECK(md5::response("app", "secret", md5::Salt{'a', 'b', 'c', 'e'}) !=
        "md5883f61cc18cc4ae54ca301892bb10c29");
}

TEST_CASE("md5: is_md5_secret") {
  CHECK(md5::is_md5_secret(kAppSecret));
  CHECK(md5::is_md5_secret(md5::password_hash("u", "p")));
  for (std::string_view bad : {
           "",
           "md5",
           "md56a422f785c9e20873908ce25d1736ae",    // 31 digits
           "md56a422f785c9e20873908ce25d1736ae22",  // 33 digits
           "MD56a422f785c9e20873908ce25d1736ae2",   // prefix case
           "md56A422F785C9E20873908CE25D1736AE2",   // PostgreSQL writes lowercase
           "md56a422f785c9e20873908ce25d1736aeg",   // not hex
           "md46a422f785c9e20873908ce25d1736ae2",
           " md56a422f785c9e20873908ce25d1736ae",
           "SCRAM-SHA-256$4096:NSYGGHlLyUyg76Dw4TJxrQ==$"
           "56yeAsCIknZmLUzJmQnLYtxigEIvFNMom2NoZX6Yiww=:"
           "uMVYPbu8iUKbevq8f3+/7LtK+wpZjIOPRRdRXnUX9OQ=",
       }) {
    CAPTURE(bad);
    CHECK_FALSE(md5::is_md5_secret(bad));
  }
  CHECK_FALSE(md5::is_md5_secret(std::string("md56a422f785c9e20873908ce25d1736a\0e", 35)));
}

TEST_CASE("md5: response_from_secret refuses what is not an MD5 secret") {
  CHECK(md5::response_from_secret("", kAsciiSalt).empty());
  CHECK(md5::response_from_secret("secret", kAsciiSalt).empty());
  CHECK(md5::response_from_secret("md5", kAsciiSalt).empty());
  CHECK(md5::response_from_secret(std::string(100000, 'm'), kAsciiSalt).empty());
  CHECK(md5::response_from_secret("MD56A422F785C9E20873908CE25D1736AE2", kAsciiSalt).empty());
}

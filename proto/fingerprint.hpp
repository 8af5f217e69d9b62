#pragma once
// A query's family (issue 19, "query fingerprints"): its text with the parts that change from
// call to call taken out, so that `SELECT * FROM t WHERE id = 5` and `select *  from t where
// id=7 -- again` are one row of statistics. Lexical, like proto/sql.hpp: no parser, no regex,
// one pass over the text (plus a memchr for '$' to number constants after the parameters).
//
//   constants (numbers, '...', E'...', B'...', X'...', U&'...', $tag$...$tag$)  ->  $n
//   runs of whitespace and comments (-- and nested /* */)                     ->  one space
//   unquoted names and keywords                                               ->  lower case
//   IN ($1, $2, ...) made of constants and parameters only                    ->  in (...)
//   "quoted identifiers" and $n parameters                                    ->  as they are
//   a trailing semicolon                                                       ->  dropped
//
// Tokens are written with one space between them (none after '(' or '.', none before ')',
// ',', ';' or '.'), so spacing never makes two families.

#include <cstdint>
#include <string>
#include <string_view>

namespace pgring::proto::sql {

// Writes the normalized text of `query` into `out` (cleared first; its capacity is reused) and
// returns its 64-bit FNV-1a hash, never 0.
std::uint64_t fingerprint(std::string_view query, std::string& out);
// The same id without building the text (the per-query path).
std::uint64_t fingerprint(std::string_view query);

}  // namespace pgring::proto::sql

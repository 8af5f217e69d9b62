#include "proto/sql.hpp"

#include <algorithm>
#include <cctype>
#include <vector>

#include "proto/ascii.hpp"

namespace pgring::proto::sql {

namespace {

bool ident_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$';
}

// Tokens of a query: words (lower-cased), quoted identifiers, string literals and punctuation.
// Comments and whitespace vanish. Enough to recognise statement shapes, not to parse SQL.
struct Token {
  enum class Kind { word, quoted_ident, string, number, punct } kind;
  std::string text;      // word lower-cased; quoted identifier unquoted
  std::string_view raw;  // exact source text
};

bool tokenize(std::string_view q, std::vector<Token>& out, std::size_t max_tokens) {
  std::size_t i = 0;
  while (i < q.size()) {
    char c = q[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (c == '-' && i + 1 < q.size() && q[i + 1] == '-') {
      while (i < q.size() && q[i] != '\n') ++i;
    } else if (c == '/' && i + 1 < q.size() && q[i + 1] == '*') {
      // Block comments nest in PostgreSQL.
      int depth = 0;
      do {
        if (q.compare(i, 2, "/*") == 0) {
          ++depth;
          i += 2;
        } else if (q.compare(i, 2, "*/") == 0) {
          --depth;
          i += 2;
        } else {
          ++i;
        }
      } while (depth > 0 && i < q.size());
      if (depth > 0) return false;
    } else if (c == '\'' || ((c == 'E' || c == 'e') && i + 1 < q.size() && q[i + 1] == '\'')) {
      std::size_t start = i;
      bool escapes = c != '\'';
      if (escapes) ++i;
      ++i;
      for (;;) {
        if (i >= q.size()) return false;
        if (escapes && q[i] == '\\') {
          i += 2;
          continue;
        }
        if (q[i] == '\'') {
          if (i + 1 < q.size() && q[i + 1] == '\'') {
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        ++i;
      }
      out.push_back({Token::Kind::string, {}, q.substr(start, i - start)});
    } else if (c == '$' && (i + 1 < q.size()) &&
               (q[i + 1] == '$' || std::isalpha(static_cast<unsigned char>(q[i + 1])) ||
                q[i + 1] == '_' || static_cast<unsigned char>(q[i + 1]) >= 0x80)) {
      // Dollar quoting: $tag$ ... $tag$ (a tag is an identifier: letters, '_', digits after the
      // first, any non-ASCII byte; no '$').
      std::size_t end_tag = q.find('$', i + 1);
      if (end_tag == std::string_view::npos) return false;
      std::string_view tag = q.substr(i, end_tag - i + 1);
      bool valid = true;
      for (char t : tag.substr(1, tag.size() - 2))
        valid &= (ident_char(t) || static_cast<unsigned char>(t) >= 0x80) && t != '$';
      if (!valid) {
        out.push_back({Token::Kind::punct, std::string(1, c), q.substr(i, 1)});
        ++i;
        continue;
      }
      std::size_t close = q.find(tag, end_tag + 1);
      if (close == std::string_view::npos) return false;
      std::size_t stop = close + tag.size();
      out.push_back({Token::Kind::string, {}, q.substr(i, stop - i)});
      i = stop;
    } else if (c == '"') {
      std::size_t start = i++;
      std::string text;
      for (;;) {
        if (i >= q.size()) return false;
        if (q[i] == '"') {
          if (i + 1 < q.size() && q[i + 1] == '"') {
            text.push_back('"');
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        text.push_back(q[i++]);
      }
      out.push_back({Token::Kind::quoted_ident, std::move(text), q.substr(start, i - start)});
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_' ||
               static_cast<unsigned char>(c) >= 0x80) {
      std::size_t start = i;
      while (i < q.size() && (ident_char(q[i]) || static_cast<unsigned char>(q[i]) >= 0x80)) ++i;
      std::string text(q.substr(start, i - start));
      for (char& t : text) t = ascii_lower(t);
      out.push_back({Token::Kind::word, std::move(text), q.substr(start, i - start)});
    } else if (std::isdigit(static_cast<unsigned char>(c)) ||
               (c == '.' && i + 1 < q.size() &&
                std::isdigit(static_cast<unsigned char>(q[i + 1])))) {
      std::size_t start = i;
      while (i < q.size() && (std::isalnum(static_cast<unsigned char>(q[i])) || q[i] == '.')) ++i;
      out.push_back({Token::Kind::number, {}, q.substr(start, i - start)});
    } else {
      out.push_back({Token::Kind::punct, std::string(1, c), q.substr(i, 1)});
      ++i;
    }
    if (out.size() > max_tokens) return false;
  }
  return true;
}

bool is_word(const Token& t, std::string_view w) {
  return t.kind == Token::Kind::word && t.text == w;
}

// Character classes of the word scan, by table: a call into the C library's locale tables per
// byte (std::isalnum) was a tenth of the per-query cost.
struct WordClasses {
  bool starts[256] = {};     // a word starts with a letter or '_'
  bool continues[256] = {};  // and goes on with letters, digits, '_', '$' and non-ASCII bytes
  constexpr WordClasses() {
    for (int c = 0; c < 256; ++c) {
      bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
      starts[c] = letter;
      continues[c] = letter || (c >= '0' && c <= '9') || c == '$' || c >= 0x80;
    }
  }
};
constexpr WordClasses kWordClasses;

// The Mention bit of one word (0 for almost all): by first letter, then exact comparison.
std::uint8_t mention_of(std::string_view word) {
  if (word.size() < 3 || word.size() > 27) return 0;
  auto is = [&](std::string_view keyword) { return iequals(word, keyword); };
  switch (ascii_lower(word[0])) {
    case 'd':
      return is("deallocate") ? kMentionsDeallocate : 0;
    case 'e':
      return is("execute") ? kMentionsExecute : 0;
    case 'h':
      return is("hold") ? kMentionsSessionWord : 0;
    case 'l':
      return is("listen") ? kMentionsSessionWord : 0;
    case 'n':
      return is("notify") ? kMentionsNotify : 0;
    case 'p':
      return is("prepare") || is("pg_advisory_lock") || is("pg_try_advisory_lock") ||
                     is("pg_advisory_lock_shared") || is("pg_try_advisory_lock_shared")
                 ? kMentionsSessionWord
             : is("pg_notify") ? kMentionsNotify
                               : 0;
    case 'r':
      return is("reset") ? kMentionsReset : 0;
    case 's':
      return is("set") ? kMentionsSet : is("set_config") ? kMentionsSessionWord : 0;
    case 't':
      return is("temp") || is("temporary") ? kMentionsSessionWord : 0;
    default:
      return 0;
  }
}

}  // namespace

std::uint8_t mentions(std::string_view query) {
  std::uint8_t found = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(query.data());
  std::size_t i = 0, n = query.size();
  while (i < n) {
    if (!kWordClasses.starts[p[i]]) {
      ++i;
      continue;
    }
    std::size_t start = i++;
    while (i < n && kWordClasses.continues[p[i]]) ++i;
    found |= mention_of(query.substr(start, i - start));
  }
  return found;
}

std::optional<SetStatement> parse_set_statement(std::string_view query, std::uint8_t mentioned) {
  if ((mentioned & (kMentionsSet | kMentionsReset)) == 0) return std::nullopt;
  std::vector<Token> t;
  if (query.size() > 4096 || !tokenize(query, t, 256) || t.empty()) return std::nullopt;
  // One statement only: a semicolon may only end it.
  for (std::size_t i = 0; i < t.size(); ++i)
    if (t[i].kind == Token::Kind::punct && t[i].text == ";" && i + 1 != t.size())
      return std::nullopt;
  if (t.back().kind == Token::Kind::punct && t.back().text == ";") t.pop_back();
  if (t.size() < 2) return std::nullopt;

  std::size_t i = 1;
  // name: ident(.ident)* — PostgreSQL lower-cases unquoted names.
  auto read_name = [&](std::string& name) {
    if (i >= t.size() || (t[i].kind != Token::Kind::word && t[i].kind != Token::Kind::quoted_ident))
      return false;
    name = t[i++].text;
    while (i + 1 < t.size() && t[i].kind == Token::Kind::punct && t[i].text == "." &&
           (t[i + 1].kind == Token::Kind::word || t[i + 1].kind == Token::Kind::quoted_ident)) {
      name += "." + t[i + 1].text;
      i += 2;
    }
    return true;
  };

  if (is_word(t[0], "reset")) {
    if (t.size() == 2 && is_word(t[1], "all"))
      return SetStatement{SetStatement::Kind::reset_all, {}, {}};
    SetStatement s{SetStatement::Kind::reset, {}, {}};
    if (!read_name(s.name)) return std::nullopt;
    if (s.name == "time" && i < t.size() && is_word(t[i], "zone")) {  // RESET TIME ZONE
      ++i;
      s.name = "timezone";
    }
    if (i != t.size()) return std::nullopt;
    if (s.name == "role" || s.name == "session")
      return std::nullopt;  // RESET ROLE / SESSION AUTHORIZATION
    return s;
  }
  if (!is_word(t[0], "set")) return std::nullopt;
  if (is_word(t[1], "session")) {
    if (t.size() > 2 && is_word(t[2], "authorization")) return std::nullopt;
    i = 2;
  }
  if (i < t.size() && is_word(t[i], "local")) return std::nullopt;  // transaction-scoped
  SetStatement s{SetStatement::Kind::set, {}, {}};
  if (!read_name(s.name)) return std::nullopt;
  // Statements that look like SET but are not session GUC assignments.
  if (s.name == "role" || s.name == "transaction" || s.name == "constraints" ||
      s.name == "characteristics")
    return std::nullopt;
  bool time_zone = false;
  if (s.name == "time" && i < t.size() && is_word(t[i], "zone")) {
    // SET TIME ZONE value: TimeZone is reported by the server; replay it as such.
    ++i;
    s.name = "timezone";
    time_zone = true;
  } else {
    if (i >= t.size()) return std::nullopt;
    if (is_word(t[i], "to") || (t[i].kind == Token::Kind::punct && t[i].text == "="))
      ++i;
    else
      return std::nullopt;
  }
  if (i >= t.size()) return std::nullopt;
  // SET x TO DEFAULT (and SET TIME ZONE DEFAULT | LOCAL) is a RESET: back to the session's
  // default, which is the client's startup value when it gave one.
  if (i + 1 == t.size() && t[i].kind == Token::Kind::word &&
      (is_word(t[i], "default") || (time_zone && is_word(t[i], "local"))))
    return SetStatement{SetStatement::Kind::reset, s.name, {}};
  // The value is the rest of the statement, verbatim.
  const char* begin = t[i].raw.data();
  const char* end = t.back().raw.data() + t.back().raw.size();
  s.value.assign(begin, end);
  return s;
}

std::optional<Deallocate> parse_deallocate(std::string_view query, std::uint8_t mentioned) {
  if ((mentioned & kMentionsDeallocate) == 0) return std::nullopt;
  std::vector<Token> t;
  if (query.size() > 4096 || !tokenize(query, t, 16) || t.empty()) return std::nullopt;
  if (t.back().kind == Token::Kind::punct && t.back().text == ";") t.pop_back();
  std::size_t i = 0;
  if (i >= t.size() || !is_word(t[i++], "deallocate")) return std::nullopt;
  if (i < t.size() && is_word(t[i], "prepare")) ++i;
  if (i + 1 != t.size()) return std::nullopt;
  if (t[i].kind == Token::Kind::word && t[i].text == "all") return Deallocate{true, {}};
  if (t[i].kind != Token::Kind::word && t[i].kind != Token::Kind::quoted_ident) return std::nullopt;
  return Deallocate{false, t[i].text, static_cast<std::size_t>(t[i].raw.data() - query.data()),
                    t[i].raw.size()};
}

namespace {

// The query's first word (letters after leading whitespace), for the statements recognised by
// it: a query that starts otherwise costs this one short scan, no tokenizing.
std::string_view first_word(std::string_view query) {
  std::size_t start = query.find_first_not_of(" \t\r\n");
  if (start == std::string_view::npos) return {};
  std::size_t end = start;
  while (end < query.size() && std::isalpha(static_cast<unsigned char>(query[end]))) ++end;
  return query.substr(start, end - start);
}

// One statement: a semicolon may only end it (and is dropped from `t`).
bool one_statement(std::vector<Token>& t) {
  for (std::size_t i = 0; i + 1 < t.size(); ++i)
    if (t[i].kind == Token::Kind::punct && t[i].text == ";") return false;
  if (!t.empty() && t.back().kind == Token::Kind::punct && t.back().text == ";") t.pop_back();
  return !t.empty();
}

// Keywords PostgreSQL's grammar does not take as a statement name unquoted (reserved, and
// type/function-name keywords): `PREPARE select AS ...` is a syntax error there, and must stay
// one (not become pgring's name).
bool reserved_word(std::string_view word) {
  static constexpr std::string_view kReserved[] = {"all",
                                                   "analyse",
                                                   "analyze",
                                                   "and",
                                                   "any",
                                                   "array",
                                                   "as",
                                                   "asc",
                                                   "asymmetric",
                                                   "authorization",
                                                   "binary",
                                                   "both",
                                                   "case",
                                                   "cast",
                                                   "check",
                                                   "collate",
                                                   "collation",
                                                   "column",
                                                   "concurrently",
                                                   "constraint",
                                                   "create",
                                                   "cross",
                                                   "current_catalog",
                                                   "current_date",
                                                   "current_role",
                                                   "current_schema",
                                                   "current_time",
                                                   "current_timestamp",
                                                   "current_user",
                                                   "default",
                                                   "deferrable",
                                                   "desc",
                                                   "distinct",
                                                   "do",
                                                   "else",
                                                   "end",
                                                   "except",
                                                   "false",
                                                   "fetch",
                                                   "for",
                                                   "foreign",
                                                   "freeze",
                                                   "from",
                                                   "full",
                                                   "grant",
                                                   "group",
                                                   "having",
                                                   "ilike",
                                                   "in",
                                                   "initially",
                                                   "inner",
                                                   "intersect",
                                                   "into",
                                                   "is",
                                                   "isnull",
                                                   "join",
                                                   "lateral",
                                                   "leading",
                                                   "left",
                                                   "like",
                                                   "limit",
                                                   "localtime",
                                                   "localtimestamp",
                                                   "natural",
                                                   "not",
                                                   "notnull",
                                                   "null",
                                                   "offset",
                                                   "on",
                                                   "only",
                                                   "or",
                                                   "order",
                                                   "outer",
                                                   "overlaps",
                                                   "placing",
                                                   "primary",
                                                   "references",
                                                   "returning",
                                                   "right",
                                                   "select",
                                                   "session_user",
                                                   "similar",
                                                   "some",
                                                   "symmetric",
                                                   "system_user",
                                                   "table",
                                                   "tablesample",
                                                   "then",
                                                   "to",
                                                   "trailing",
                                                   "true",
                                                   "union",
                                                   "unique",
                                                   "user",
                                                   "using",
                                                   "variadic",
                                                   "verbose",
                                                   "when",
                                                   "where",
                                                   "window",
                                                   "with"};
  for (std::string_view r : kReserved)
    if (word == r) return true;
  return false;
}

// A statement name PostgreSQL would keep as written (not truncated to NAMEDATALEN - 1 bytes).
bool statement_name(const Token& tok) {
  if (tok.kind == Token::Kind::word) return tok.text.size() <= 63 && !reserved_word(tok.text);
  return tok.kind == Token::Kind::quoted_ident && !tok.text.empty() && tok.text.size() <= 63;
}

bool is_punct(const Token& tok, char c) {
  return tok.kind == Token::Kind::punct && tok.text.size() == 1 && tok.text[0] == c;
}

}  // namespace

std::optional<Prepare> parse_prepare(std::string_view query, std::uint8_t mentioned) {
  // (A query that starts otherwise costs one short scan: CREATE TEMP ... mentions a session
  // word too.)
  if ((mentioned & kMentionsSessionWord) == 0 || !iequals(first_word(query), "prepare"))
    return std::nullopt;
  std::vector<Token> t;
  if (!tokenize(query, t, 1u << 16) || !one_statement(t) || t.size() < 4) return std::nullopt;
  // (PREPARE TRANSACTION 'gid' is two-phase commit, not a statement named "transaction".)
  if (!is_word(t[0], "prepare") || !statement_name(t[1]) || is_word(t[1], "transaction"))
    return std::nullopt;
  std::size_t i = 2;
  if (is_punct(t[i], '(')) {
    int depth = 0;
    for (; i < t.size(); ++i) {
      if (is_punct(t[i], '(')) ++depth;
      if (is_punct(t[i], ')') && --depth == 0) break;
    }
    ++i;
  }
  if (i + 1 >= t.size() || !is_word(t[i], "as")) return std::nullopt;
  const char* begin = t[1].raw.data() + t[1].raw.size();
  const char* end = t.back().raw.data() + t.back().raw.size();
  std::string_view rest(begin, static_cast<std::size_t>(end - begin));
  rest.remove_prefix(std::min(rest.find_first_not_of(" \t\r\n"), rest.size()));
  return Prepare{t[1].text, static_cast<std::size_t>(t[1].raw.data() - query.data()),
                 t[1].raw.size(), rest};
}

std::optional<Execute> find_execute(std::string_view query, std::uint8_t mentioned) {
  if ((mentioned & kMentionsExecute) == 0) return std::nullopt;
  std::string_view first = first_word(query);
  if (!iequals(first, "execute") && !iequals(first, "explain") && !iequals(first, "create"))
    return std::nullopt;  // (GRANT EXECUTE ...: one short scan)
  std::vector<Token> t;
  if (!tokenize(query, t, 1u << 16) || !one_statement(t)) return std::nullopt;
  std::size_t at = t.size();  // the EXECUTE keyword
  if (is_word(t[0], "execute")) {
    at = 0;
  } else if (is_word(t[0], "explain")) {
    // EXPLAIN [ANALYZE] [VERBOSE] [(option, ...)] EXECUTE
    std::size_t i = 1;
    for (; i < t.size(); ++i) {
      if (is_word(t[i], "analyze") || is_word(t[i], "analyse") || is_word(t[i], "verbose"))
        continue;
      if (!is_punct(t[i], '(')) break;
      int depth = 0;
      for (; i < t.size(); ++i) {
        if (is_punct(t[i], '(')) ++depth;
        if (is_punct(t[i], ')') && --depth == 0) break;
      }
    }
    if (i < t.size() && is_word(t[i], "execute")) at = i;
  } else if (is_word(t[0], "create")) {
    // CREATE [TEMP] TABLE name [(columns)] [WITH (...)] ... AS EXECUTE name
    int depth = 0;
    for (std::size_t i = 1; i + 1 < t.size(); ++i) {
      if (is_punct(t[i], '(')) ++depth;
      if (is_punct(t[i], ')')) --depth;
      if (depth == 0 && is_word(t[i], "as") && is_word(t[i + 1], "execute")) {
        at = i + 1;
        break;
      }
    }
  }
  if (at + 1 >= t.size() || !statement_name(t[at + 1])) return std::nullopt;
  const Token& name = t[at + 1];
  return Execute{name.text, static_cast<std::size_t>(name.raw.data() - query.data()),
                 name.raw.size()};
}

std::optional<Listen> parse_listen(std::string_view query) {
  std::string_view first = first_word(query);
  bool listen = iequals(first, "listen");
  if (!listen && !iequals(first, "unlisten")) return std::nullopt;
  std::vector<Token> t;
  if (query.size() > 4096 || !tokenize(query, t, 8) || t.empty()) return std::nullopt;
  if (t.back().kind == Token::Kind::punct && t.back().text == ";") t.pop_back();
  if (t.size() != 2 || !is_word(t[0], listen ? "listen" : "unlisten")) return std::nullopt;
  if (!listen && t[1].kind == Token::Kind::punct && t[1].text == "*")
    return Listen{Listen::Kind::unlisten_all, {}};
  if (t[1].kind != Token::Kind::word && t[1].kind != Token::Kind::quoted_ident) return std::nullopt;
  if (t[1].text.empty() || t[1].text.size() > 63) return std::nullopt;
  return Listen{listen ? Listen::Kind::listen : Listen::Kind::unlisten, t[1].text};
}

std::optional<std::string> database_needed_alone(std::string_view query) {
  std::string_view first = first_word(query);
  if (!iequals(first, "create") && !iequals(first, "alter") && !iequals(first, "drop"))
    return std::nullopt;
  std::vector<Token> t;
  if (query.size() > 4096 || !tokenize(query, t, 256) || t.size() < 3) return std::nullopt;
  if (!is_word(t[1], "database")) return std::nullopt;
  auto name_at = [&](std::size_t i) -> std::optional<std::string> {
    if (i >= t.size() || (t[i].kind != Token::Kind::word && t[i].kind != Token::Kind::quoted_ident))
      return std::nullopt;
    return t[i].text;
  };
  if (is_word(t[0], "drop")) {
    std::size_t i = 2;
    if (i + 1 < t.size() && is_word(t[i], "if") && is_word(t[i + 1], "exists")) i += 2;
    return name_at(i);
  }
  if (is_word(t[0], "alter")) {
    if (t.size() > 3 && is_word(t[3], "rename")) return name_at(2);
    return std::nullopt;
  }
  if (is_word(t[0], "create")) {
    for (std::size_t i = 3; i < t.size(); ++i) {
      if (!is_word(t[i], "template")) continue;
      std::size_t n = i + 1;
      if (n < t.size() && t[n].kind == Token::Kind::punct && t[n].text == "=") ++n;
      return name_at(n);
    }
  }
  return std::nullopt;
}

std::uint8_t scan_session_release(std::string_view query) {
  // SELECT only in its short form, so a long SELECT costs one comparison.
  std::string_view first = first_word(query);
  if (!(iequals(first, "unlisten") || iequals(first, "discard") || iequals(first, "close") ||
        iequals(first, "deallocate") || (iequals(first, "select") && query.size() < 64)))
    return kNone;
  std::vector<Token> t;
  if (!tokenize(query, t, 16) || t.empty()) return kNone;
  if (t.back().kind == Token::Kind::punct && t.back().text == ";") t.pop_back();
  auto is = [&](std::initializer_list<std::string_view> words) {
    if (t.size() != words.size()) return false;
    std::size_t i = 0;
    for (std::string_view w : words) {
      const Token& tok = t[i++];
      if (w.size() == 1 && !std::isalpha(static_cast<unsigned char>(w[0]))) {
        if (tok.kind != Token::Kind::punct || tok.text != w) return false;
      } else if (!is_word(tok, w)) {
        return false;
      }
    }
    return true;
  };
  if (is({"unlisten", "*"})) return kListen;
  if (is({"discard", "all"}))
    return kTemporaryObject | kHoldCursor | kAdvisoryLock | kListen | kSqlPrepare | kRoleChange |
           kUntrackedSet;
  if (is({"discard", "temp"}) || is({"discard", "temporary"})) return kTemporaryObject;
  if (is({"close", "all"})) return kHoldCursor;
  if (is({"deallocate", "all"}) || is({"deallocate", "prepare", "all"})) return kSqlPrepare;
  if (is({"select", "pg_advisory_unlock_all", "(", ")"})) return kAdvisoryLock;
  return kNone;
}

// Settings the server reports (ParameterStatus) are tracked whatever the statement looks like;
// transaction-scoped forms (SET LOCAL, SET TRANSACTION, SET CONSTRAINTS) end with the transaction.
bool tracked_anyway(std::string_view name) {
  static constexpr std::string_view kTracked[] = {
      "local",     "transaction", "constraints", "application_name", "client_encoding",
      "datestyle", "timezone",    "time",        "intervalstyle",    "standard_conforming_strings"};
  for (std::string_view tracked : kTracked)
    if (iequals(name, tracked)) return true;
  return false;
}

// `set_config(name, value, is_local)` with its "(" at t[open]: a session-level setting pgring
// cannot replay unless is_local is literally true or the name is a reported parameter.
std::uint8_t set_config_state(const std::vector<Token>& t, std::size_t open) {
  std::vector<std::pair<std::size_t, std::size_t>> args;  // [first, last) token of each argument
  int depth = 0;
  std::size_t first = open + 1;
  for (std::size_t k = open; k < t.size(); ++k) {
    if (t[k].kind != Token::Kind::punct) continue;
    if (t[k].text == "(") {
      ++depth;
    } else if (t[k].text == ")" && --depth == 0) {
      args.emplace_back(first, k);
      break;
    } else if (t[k].text == "," && depth == 1) {
      args.emplace_back(first, k);
      first = k + 1;
    }
  }
  if (args.size() != 3) return kUntrackedSet;  // not a call we can read: assume the worst
  auto [local_first, local_last] = args[2];
  if (local_last == local_first + 1 && is_word(t[local_first], "true")) return kNone;
  auto [name_first, name_last] = args[0];
  if (name_last == name_first + 1 && t[name_first].kind == Token::Kind::string &&
      t[name_first].raw.size() >= 2 && t[name_first].raw.front() == '\'' &&
      tracked_anyway(t[name_first].raw.substr(1, t[name_first].raw.size() - 2)))
    return kNone;
  return kUntrackedSet;
}

namespace {
// `CREATE TEMP TABLE ... ON COMMIT DROP` (the statement from token `create`): the table is gone
// when its transaction ends, and with it the session state. (In a CREATE TABLE the three words
// can only be that clause: in its AS query, ON takes an expression.)
bool drops_at_commit(const std::vector<Token>& t, std::size_t create) {
  for (std::size_t j = create + 1; j + 2 < t.size(); ++j) {
    if (t[j].kind == Token::Kind::punct && t[j].text == ";") return false;
    if (is_word(t[j], "on") && is_word(t[j + 1], "commit") && is_word(t[j + 2], "drop"))
      return true;
  }
  return false;
}
}  // namespace

std::uint8_t scan_session_state(std::string_view query, std::uint8_t mentioned) {
  if ((mentioned & (kMentionsSet | kMentionsSessionWord)) == 0) return kNone;
  std::vector<Token> t;
  // Unparseable text (an unterminated literal, or huge) gets no flags: the server will reject
  // broken SQL itself, and huge statements are data loads, not session setup.
  if (!tokenize(query, t, 1u << 16)) return kNone;
  std::uint8_t flags = kNone;
  bool statement_start = true;
  for (std::size_t i = 0; i < t.size(); ++i) {
    const Token& tok = t[i];
    if (tok.kind == Token::Kind::punct && tok.text == ";") {
      statement_start = true;
      continue;
    }
    if (tok.kind == Token::Kind::word) {
      const std::string& w = tok.text;
      if (w == "create") {
        bool temp = false;
        for (std::size_t j = i + 1; j < t.size() && j < i + 4; ++j)
          temp |= is_word(t[j], "temp") || is_word(t[j], "temporary");
        if (temp && !drops_at_commit(t, i)) flags |= kTemporaryObject;
      } else if (w == "with" && i + 1 < t.size() && is_word(t[i + 1], "hold")) {
        flags |= kHoldCursor;
      } else if ((w == "pg_advisory_lock" || w == "pg_try_advisory_lock" ||
                  w == "pg_advisory_lock_shared" || w == "pg_try_advisory_lock_shared") &&
                 i + 1 < t.size() && t[i + 1].text == "(") {
        flags |= kAdvisoryLock;
      } else if (statement_start && w == "listen") {
        flags |= kListen;
      } else if (statement_start && w == "prepare" && i + 1 < t.size() &&
                 !is_word(t[i + 1], "transaction")) {
        flags |= kSqlPrepare;
      } else if (w == "into" && i + 2 < t.size() &&
                 (is_word(t[i + 1], "temp") || is_word(t[i + 1], "temporary")) &&
                 (t[i + 2].kind == Token::Kind::word ||
                  t[i + 2].kind == Token::Kind::quoted_ident) &&
                 !is_word(t[i + 2], "values") && !is_word(t[i + 2], "select") &&
                 !is_word(t[i + 2], "default") && !is_word(t[i + 2], "overriding")) {
        flags |= kTemporaryObject;  // SELECT ... INTO TEMP [TABLE] name (not INSERT INTO temp)
      } else if (w == "set_config" && i + 1 < t.size() && t[i + 1].text == "(") {
        flags |= set_config_state(t, i + 1);
      } else if (statement_start && w == "set") {
        std::size_t j = i + 1;
        if (j < t.size() && is_word(t[j], "session")) ++j;
        if (j < t.size() && (is_word(t[j], "role") || is_word(t[j], "authorization"))) {
          flags |= kRoleChange;
        } else if (j < t.size() && t[j].kind == Token::Kind::word && !tracked_anyway(t[j].text)) {
          flags |= kUntrackedSet;
        }
      }
    }
    statement_start = false;
  }
  return flags;
}

std::string describe_session_state(std::uint8_t flags) {
  std::string out;
  auto add = [&](std::uint8_t bit, std::string_view what) {
    if (!(flags & bit)) return;
    if (!out.empty()) out += ", ";
    out += what;
  };
  add(kTemporaryObject, "temporary object");
  add(kHoldCursor, "WITH HOLD cursor");
  add(kAdvisoryLock, "session advisory lock");
  add(kListen, "LISTEN");
  add(kSqlPrepare, "SQL PREPARE");
  add(kRoleChange, "SET ROLE / SESSION AUTHORIZATION");
  add(kUntrackedSet, "SET that pgring cannot replay");
  return out;
}

std::string quote_channel(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string quote_literal(std::string_view value) {
  bool backslash = value.find('\\') != std::string_view::npos;
  std::string out = backslash ? "E'" : "'";
  for (char c : value) {
    if (c == '\'')
      out += "''";
    else if (c == '\\')
      out += "\\\\";
    else
      out.push_back(c);
  }
  out.push_back('\'');
  return out;
}

std::string quote_identifier(std::string_view name) {
  bool plain = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0]));
  for (char c : name)
    plain &= (std::islower(static_cast<unsigned char>(c)) ||
              std::isdigit(static_cast<unsigned char>(c)) || c == '_' || c == '.');
  if (plain) return std::string(name);
  // Dotted custom settings (myapp.x) are quoted as one identifier per part.
  std::string out;
  std::size_t start = 0;
  while (true) {
    std::size_t dot = name.find('.', start);
    std::string_view part =
        name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    out.push_back('"');
    for (char c : part) {
      if (c == '"')
        out += "\"\"";
      else
        out.push_back(c);
    }
    out.push_back('"');
    if (dot == std::string_view::npos) break;
    out.push_back('.');
    start = dot + 1;
  }
  return out;
}

}  // namespace pgring::proto::sql

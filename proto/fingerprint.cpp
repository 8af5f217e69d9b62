#include "proto/fingerprint.hpp"

#include <array>
#include <cstring>
#include <tuple>

namespace pgring::proto::sql {

namespace {

// Character classes, one table lookup each.
enum : std::uint8_t { kNameStart = 1, kNameChar = 2, kDigit = 4, kOperator = 8, kSpace = 16 };
constexpr std::array<std::uint8_t, 256> make_classes() {
  std::array<std::uint8_t, 256> t{};
  for (int c = 0; c < 256; ++c) {
    bool start = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
    if (start) t[static_cast<std::size_t>(c)] |= kNameStart | kNameChar;
    if (c >= '0' && c <= '9') t[static_cast<std::size_t>(c)] |= kDigit | kNameChar;
    if (c == '$') t[static_cast<std::size_t>(c)] |= kNameChar;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v')
      t[static_cast<std::size_t>(c)] |= kSpace;
  }
  for (const char* p = "+-*/<>=~!@#%^&|`?:"; *p != 0; ++p)
    t[static_cast<unsigned char>(*p)] |= kOperator;
  return t;
}
constexpr std::array<std::uint8_t, 256> kClasses = make_classes();
bool name_start(unsigned char c) {
  return (kClasses[c] & kNameStart) != 0;
}
bool name_char(unsigned char c) {
  return (kClasses[c] & kNameChar) != 0;
}
bool digit(unsigned char c) {
  return (kClasses[c] & kDigit) != 0;
}
bool operator_char(unsigned char c) {
  return (kClasses[c] & kOperator) != 0;
}
bool space(unsigned char c) {
  return (kClasses[c] & kSpace) != 0;
}

// The highest $n parameter in the text: constants are numbered after it.
int highest_parameter(std::string_view q) {
  int highest = 0;
  for (std::size_t i = 0; i < q.size(); ++i) {
    const void* p = std::memchr(q.data() + i, '$', q.size() - i);
    if (p == nullptr) break;
    i = static_cast<std::size_t>(static_cast<const char*>(p) - q.data());
    int n = 0;
    std::size_t j = i + 1;
    while (j < q.size() && digit(static_cast<unsigned char>(q[j])) && n < 100000)
      n = n * 10 + (q[j++] - '0');
    if (j > i + 1 && n > highest) highest = n;
  }
  return highest;
}

// Where a quoted run that opened at `i` (the quote) ends: one past its closing quote, or the
// end. A doubled quote is part of the run; with `backslash`, so is a backslash and what follows.
std::size_t quoted_end(std::string_view q, std::size_t i, char quote, bool backslash) {
  std::size_t j = i + 1;
  while (j < q.size()) {
    char c = q[j];
    if (backslash && c == '\\') {
      j += 2;
      continue;
    }
    if (c == quote) {
      if (j + 1 < q.size() && q[j + 1] == quote) {
        j += 2;
        continue;
      }
      return j + 1;
    }
    ++j;
  }
  return q.size();
}

// Where the normal text goes: into a string (SHOW QUERIES' text), or straight into its hash
// (the per-query path: nothing is built). Both see the same bytes, so the ids agree.
class TextSink {
 public:
  explicit TextSink(std::string& out) : out_(out) { out_.clear(); }
  void put(char c) { out_ += c; }
  void put(std::string_view s) { out_ += s; }
  void put_lower(std::string_view s) {
    for (char c : s) out_ += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  [[nodiscard]] bool empty() const { return out_.empty(); }
  [[nodiscard]] char last() const { return out_.back(); }
  void mark() { mark_ = out_.size(); }
  void restore() { out_.resize(mark_); }

 private:
  std::string& out_;
  std::size_t mark_ = 0;
};

class HashSink {
 public:
  void put(char c) {
    h_ ^= static_cast<unsigned char>(c);
    h_ *= 1099511628211ull;
    last_ = c;
    empty_ = false;
  }
  void put(std::string_view s) {
    if (s.empty()) return;
    std::uint64_t h = h_;
    for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    h_ = h;
    last_ = s.back();
    empty_ = false;
  }
  void put_lower(std::string_view s) {
    if (s.empty()) return;
    std::uint64_t h = h_;
    char c = 0;
    for (char raw : s) {
      c = (raw >= 'A' && raw <= 'Z') ? static_cast<char>(raw - 'A' + 'a') : raw;
      h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    }
    h_ = h;
    last_ = c;
    empty_ = false;
  }
  [[nodiscard]] bool empty() const { return empty_; }
  [[nodiscard]] char last() const { return last_; }
  void mark() { saved_ = {h_, last_, empty_}; }
  void restore() { std::tie(h_, last_, empty_) = saved_; }
  [[nodiscard]] std::uint64_t hash() const { return h_; }

 private:
  std::uint64_t h_ = 14695981039346656037ull;  // FNV-1a
  char last_ = 0;
  bool empty_ = true;
  std::tuple<std::uint64_t, char, bool> saved_{};
};

template <typename Sink>
class Normalizer {
 public:
  Normalizer(std::string_view q, Sink& sink) : q_(q), out_(sink) {
    next_constant_ = highest_parameter(q) + 1;
  }

  void run() {
    std::size_t i = 0;
    while (i < q_.size()) {
      auto c = static_cast<unsigned char>(q_[i]);
      if (space(c)) {
        ++i;
      } else if (c == '-' && i + 1 < q_.size() && q_[i + 1] == '-') {
        while (i < q_.size() && q_[i] != '\n') ++i;
      } else if (c == '/' && i + 1 < q_.size() && q_[i + 1] == '*') {
        i = comment_end(i);
      } else if (c == '\'') {
        i = quoted_end(q_, i, '\'', false);
        constant();
      } else if (c == '"') {
        std::size_t end = quoted_end(q_, i, '"', false);
        token(q_.substr(i, end - i), Kind::name);
        i = end;
      } else if (c == '$') {
        i = dollar(i);
      } else if (digit(c) || (c == '.' && i + 1 < q_.size() && digit(q_[i + 1]))) {
        i = number(i);
      } else if (name_start(c)) {
        i = name(i);
      } else if (operator_char(c)) {
        std::size_t end = i;
        while (end < q_.size() && operator_char(static_cast<unsigned char>(q_[end]))) ++end;
        // "--" and "/*" inside a run start a comment.
        for (std::size_t k = i; k + 1 < end; ++k)
          if ((q_[k] == '-' && q_[k + 1] == '-') || (q_[k] == '/' && q_[k + 1] == '*')) {
            end = k;
            break;
          }
        if (end == i) end = i + 1;
        token(q_.substr(i, end - i), Kind::op);
        i = end;
      } else {
        token(q_.substr(i, 1), Kind::punct);
        ++i;
      }
    }
    // (Semicolons still pending are trailing ones: dropped.)
  }

 private:
  enum class Kind { name, op, punct, constant, parameter };

  std::size_t comment_end(std::size_t i) {
    int depth = 0;
    while (i < q_.size()) {
      if (q_[i] == '/' && i + 1 < q_.size() && q_[i + 1] == '*') {
        ++depth;
        i += 2;
      } else if (q_[i] == '*' && i + 1 < q_.size() && q_[i + 1] == '/') {
        i += 2;
        if (--depth == 0) return i;
      } else {
        ++i;
      }
    }
    return i;
  }

  std::size_t dollar(std::size_t i) {
    std::size_t j = i + 1;
    if (j < q_.size() && digit(static_cast<unsigned char>(q_[j]))) {  // $n: a parameter
      while (j < q_.size() && digit(static_cast<unsigned char>(q_[j]))) ++j;
      token(q_.substr(i, j - i), Kind::parameter);
      return j;
    }
    while (j < q_.size() && name_char(static_cast<unsigned char>(q_[j])) && q_[j] != '$') ++j;
    if (j < q_.size() && q_[j] == '$') {  // $tag$ ... $tag$: a constant
      std::string_view tag = q_.substr(i, j - i + 1);
      std::size_t close = q_.find(tag, j + 1);
      constant();
      return close == std::string_view::npos ? q_.size() : close + tag.size();
    }
    token(q_.substr(i, 1), Kind::op);
    return i + 1;
  }

  std::size_t number(std::size_t i) {
    std::size_t j = i;
    if (q_[j] == '0' && j + 1 < q_.size() &&
        (q_[j + 1] == 'x' || q_[j + 1] == 'X' || q_[j + 1] == 'o' || q_[j + 1] == 'O' ||
         q_[j + 1] == 'b' || q_[j + 1] == 'B'))
      j += 2;
    while (j < q_.size()) {
      auto c = static_cast<unsigned char>(q_[j]);
      if (digit(c) || c == '.' || c == '_' || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) {
        if ((c == 'e' || c == 'E') && j + 1 < q_.size() && (q_[j + 1] == '+' || q_[j + 1] == '-'))
          ++j;
        ++j;
      } else {
        break;
      }
    }
    constant();
    return j;
  }

  std::size_t name(std::size_t i) {
    std::size_t j = i;
    while (j < q_.size() && name_char(static_cast<unsigned char>(q_[j]))) ++j;
    std::string_view word = q_.substr(i, j - i);
    // A prefixed string: E'...', B'...', X'...', N'...', U&'...'.
    bool prefix = word.size() == 1 && std::strchr("eEbBxXnN", word[0]) != nullptr;
    if (prefix && j < q_.size() && q_[j] == '\'') {
      std::size_t end = quoted_end(q_, j, '\'', word[0] == 'e' || word[0] == 'E');
      constant();
      return end;
    }
    if (word.size() == 1 && (word[0] == 'u' || word[0] == 'U') && j + 1 < q_.size() &&
        q_[j] == '&' && q_[j + 1] == '\'') {
      std::size_t end = quoted_end(q_, j + 1, '\'', false);
      constant();
      return end;
    }
    token(word, Kind::name);
    return j;
  }

  void constant() {
    char text[16];
    int n = next_constant_++;
    int len = 0;
    char digits[12];
    do {
      digits[len++] = static_cast<char>('0' + n % 10);
      n /= 10;
    } while (n > 0 && len < 11);
    text[0] = '$';
    for (int k = 0; k < len; ++k) text[1 + k] = digits[len - 1 - k];
    token(std::string_view(text, static_cast<std::size_t>(len) + 1), Kind::constant);
  }

  void token(std::string_view text, Kind kind) {
    char first = text.empty() ? '\0' : text.front();
    if (kind == Kind::punct && first == ';') {  // written once something follows it
      ++semicolons_;
      list_open_ = false;
      return;
    }
    for (; semicolons_ > 0; --semicolons_) emit(";", Kind::punct);
    emit(text, kind);
  }

  void emit(std::string_view text, Kind kind) {
    char first = text.empty() ? '\0' : text.front();
    bool closes = kind == Kind::punct &&
                  (first == ')' || first == ',' || first == ';' || first == '.' || first == ']');
    bool after_open =
        !out_.empty() && (out_.last() == '(' || out_.last() == '.' || out_.last() == '[');
    if (!out_.empty() && !closes && !after_open && !(kind == Kind::punct && first == '.'))
      out_.put(' ');
    // IN (...) of constants only: mark where the list opened; collapse when it closes.
    if (kind == Kind::punct && first == '(') {
      out_.put('(');
      list_open_ = last_was_in_;
      if (list_open_) out_.mark();
      list_items_ = 0;
      last_was_in_ = false;
      return;
    }
    if (list_open_) {
      if (kind == Kind::constant || kind == Kind::parameter) {
        ++list_items_;
      } else if (kind == Kind::punct && first == ')' && list_items_ > 0) {
        out_.restore();
        out_.put("...)");
        list_open_ = false;
        last_was_in_ = false;
        return;
      } else if (!(kind == Kind::punct && first == ',')) {
        list_open_ = false;
      }
    }
    last_was_in_ = false;
    if (kind == Kind::name && first != '"') {
      out_.put_lower(text);
      last_was_in_ = text.size() == 2 && (text[0] | 0x20) == 'i' && (text[1] | 0x20) == 'n';
    } else {
      out_.put(text);
    }
  }

  std::string_view q_;
  Sink& out_;
  int next_constant_ = 1;
  bool last_was_in_ = false;
  bool list_open_ = false;  // inside "in (": out_ is marked just after the '('
  int list_items_ = 0;
  int semicolons_ = 0;  // read, not yet written
};

}  // namespace

std::uint64_t fingerprint(std::string_view query, std::string& out) {
  TextSink sink(out);
  Normalizer<TextSink>(query, sink).run();
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a, as HashSink
  for (char c : out) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h == 0 ? 1 : h;
}

std::uint64_t fingerprint(std::string_view query) {
  HashSink sink;
  Normalizer<HashSink>(query, sink).run();
  return sink.hash() == 0 ? 1 : sink.hash();
}

}  // namespace pgring::proto::sql

#include "daemon/conn/startup.hpp"

#include <algorithm>

#include "proto/ascii.hpp"
#include "proto/sql.hpp"

namespace pgring {

const std::string* find_value(const NameValues& list, std::string_view name) {
  for (const auto& [k, v] : list)
    if (proto::iequals(k, name)) return &v;
  return nullptr;
}

void put_value(NameValues& list, std::string_view name, std::string_view value) {
  for (auto& [k, v] : list) {
    if (proto::iequals(k, name)) {
      v.assign(value);
      return;
    }
  }
  list.emplace_back(std::string(name), std::string(value));
}

NameValues parse_startup_options(std::string_view options) {
  std::vector<std::string> words;
  std::string word;
  bool have = false;
  for (std::size_t i = 0; i < options.size(); ++i) {
    char c = options[i];
    if (c == '\\' && i + 1 < options.size()) {
      word.push_back(options[++i]);
      have = true;
    } else if (c == ' ' || c == '\t') {
      if (have) words.push_back(std::move(word));
      word.clear();
      have = false;
    } else {
      word.push_back(c);
      have = true;
    }
  }
  if (have) words.push_back(std::move(word));
  NameValues out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    std::string_view setting;
    if (words[i] == "-c" && i + 1 < words.size())
      setting = words[++i];
    else if (words[i].starts_with("-c"))
      setting = std::string_view(words[i]).substr(2);
    else if (words[i].starts_with("--"))
      setting = std::string_view(words[i]).substr(2);
    else
      continue;
    auto eq = setting.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    std::string name = proto::to_lower(setting.substr(0, eq));
    for (char& c : name)
      if (c == '-') c = '_';
    out.emplace_back(std::move(name), std::string(setting.substr(eq + 1)));
  }
  return out;
}

void StartupTable::set_ignored(const std::vector<std::string>& names) {
  if (names == ignored_) return;
  ignored_ = names;
  // Startups interned under the old list are not handed out again (their clients keep them;
  // each one's deleter leaves the entries that are not its own alone).
  entries_->clear();
}

bool StartupTable::ignored(std::string_view name) const {
  return std::any_of(ignored_.begin(), ignored_.end(),
                     [&](const std::string& i) { return proto::iequals(i, name); });
}

std::shared_ptr<const Startup> StartupTable::intern(std::string_view packet) {
  if (auto it = entries_->find(packet); it != entries_->end())
    if (std::shared_ptr<const Startup> shared = it->second.lock()) return shared;
  auto startup = std::make_unique<Startup>();
  startup->packet.assign(packet);
  auto message = proto::parse_startup_message(proto::classify_startup(startup->packet));
  if (!message) return nullptr;
  startup->message = *message;
  auto add = [&](std::string_view name, std::string_view value) {
    put_value(startup->settings, proto::to_lower(name), proto::sql::quote_literal(value));
    put_value(startup->values, name, value);
  };
  for (const auto& [name, value] : startup->message.params) {
    if (name == "replication" || name.starts_with("_pq_.") || ignored(name)) continue;
    startup->server_params.emplace_back(name, value);
    if (name == "options") {
      for (const auto& [n, v] : parse_startup_options(value))
        if (!ignored(n)) add(n, v);
    } else {
      add(name, value);
    }
  }
  std::string_view key = startup->packet;
  std::shared_ptr<const Startup> shared(startup.release(), [entries = entries_](const Startup* s) {
    auto it = entries->find(std::string_view(s->packet));
    if (it != entries->end() && it->second.expired()) entries->erase(it);
    delete s;
  });
  (*entries_)[key] = shared;
  return shared;
}

}  // namespace pgring

#include "daemon/conn/request_queue.hpp"

#include "proto/messages.hpp"

namespace pgring {

std::string_view to_string(Request kind) {
  switch (kind) {
    case Request::query:
      return "Query";
    case Request::sync:
      return "Sync";
    case Request::function_call:
      return "FunctionCall";
    case Request::execute:
      return "Execute";
    case Request::parse:
      return "Parse";
    case Request::bind:
      return "Bind";
    case Request::close:
      return "Close";
    case Request::describe:
      return "Describe";
    case Request::copy_end:
      return "CopyDone/CopyFail";
    case Request::owed_parse_complete:
      return "owed ParseComplete";
    case Request::owed_close_complete:
      return "owed CloseComplete";
    case Request::owed_error:
      return "owed ErrorResponse";
    case Request::owed_deallocate:
      return "owed DEALLOCATE";
  }
  return "?";
}

bool is_owed(Request kind) {
  return kind == Request::owed_parse_complete || kind == Request::owed_close_complete ||
         kind == Request::owed_error || kind == Request::owed_deallocate;
}

bool is_extended(Request kind) {
  return kind == Request::parse || kind == Request::bind || kind == Request::describe ||
         kind == Request::close || kind == Request::execute;
}

bool ends_cycle(Request kind) {
  return kind == Request::query || kind == Request::sync || kind == Request::function_call;
}

std::optional<Request> request_for(char frontend_type) {
  namespace fe = proto::frontend;
  switch (frontend_type) {
    case fe::kQuery:
      return Request::query;
    case fe::kSync:
      return Request::sync;
    case fe::kFunctionCall:
      return Request::function_call;
    case fe::kExecute:
      return Request::execute;
    case fe::kParse:
      return Request::parse;
    case fe::kBind:
      return Request::bind;
    case fe::kClose:
      return Request::close;
    case fe::kDescribe:
      return Request::describe;
    case fe::kCopyDone:
    case fe::kCopyFail:
      return Request::copy_end;
    default:
      return std::nullopt;
  }
}

RequestQueue::Entry& RequestQueue::push(Request kind, Clock::time_point now) {
  if (empty()) {
    busy_since_ = now;
    entries_.clear();
    head_ = 0;
  } else if (head_ > 64 && head_ * 2 > entries_.size()) {
    // A long pipeline: drop the answered prefix now and then instead of at every reply.
    entries_.erase(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(head_));
    head_ = 0;
  }
  entries_.emplace_back();
  Entry& e = entries_.back();
  e.kind = kind;
  if (skipping_to_sync_) {
    if (kind == Request::sync)
      skipping_to_sync_ = false;  // PostgreSQL answers this Sync
    else
      e.server_skips = true;
  }
  return e;
}

bool RequestQueue::pop_reply(Request kind) {
  if (!head_is(kind)) return false;
  Entry& e = entries_[head_];
  bool skip = e.skip;
  e.set.reset();
  ++head_;
  return skip;
}

RequestQueue::Completed RequestQueue::on_command_complete() {
  Completed done;
  if (!empty()) {
    Entry& head = entries_[head_];
    if (head.kind == Request::execute) {
      done.execute = true;
      done.set = std::move(head.set);
      ++head_;
    } else if (head.kind == Request::query) {
      if (head.set) done.set = std::make_unique<proto::sql::SetStatement>(*head.set);
      done.session_release = head.session_release;
    }
  }
  if (copy_in_) end_copy();
  return done;
}

void RequestQueue::end_copy() {
  copy_in_ = false;
  for (std::size_t i = head_; i < entries_.size(); ++i) {
    Request kind = entries_[i].kind;
    if (kind != Request::copy_end && kind != Request::sync) continue;
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
    if (kind == Request::copy_end) break;
    --i;
  }
}

void RequestQueue::drop_all_but_last() {
  if (entries_.size() - head_ < 2) return;
  entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(head_), entries_.end() - 1);
}

}  // namespace pgring

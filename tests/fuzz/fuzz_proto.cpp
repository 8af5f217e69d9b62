// libFuzzer target: startup-packet and message framing, then every typed view on whatever
// frames. Any crash, sanitizer report or out-of-bounds view is a bug.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "proto/builders.hpp"
#include "proto/frame.hpp"
#include "proto/listen_batch.hpp"
#include "proto/messages.hpp"

using namespace pgring::proto;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);

  Frame startup = frame_startup(input);
  if (startup.status == FrameStatus::complete) {
    StartupPacket packet = classify_startup(input.substr(0, startup.size));
    if (auto m = parse_startup_message(packet)) (void)m->find("application_name");
    (void)parse_cancel_request(packet);
  }

  // A LISTEN's extended-protocol batch: what is taken lies inside the input, and reads the same
  // on its own.
  {
    std::string_view front = input.substr(0, kMaxListenBatch);
    ListenBatch batch;
    if (read_listen_batch(front, batch) == ListenBatchStatus::yes) {
      auto inside = [&](std::string_view view) {
        return view.empty() || (view.data() >= front.data() &&
                                view.data() + view.size() <= front.data() + batch.length);
      };
      if (batch.length == 0 || batch.length > front.size() || !inside(batch.statement) ||
          !inside(batch.portal) || !inside(batch.parse_tail) || batch.replies.empty() ||
          batch.parsed.has_value() != !batch.parse_tail.empty())
        __builtin_trap();
      ListenBatch again;
      if (read_listen_batch(front.substr(0, batch.length), again) != ListenBatchStatus::yes ||
          again.length != batch.length || again.replies != batch.replies)
        __builtin_trap();
    }
  }

  // A stream of typed messages, each body given to every view.
  std::string_view rest = input;
  while (!rest.empty()) {
    Frame f = frame_message(rest, 1 << 20);
    if (f.status != FrameStatus::complete) break;
    if (f.size > rest.size()) __builtin_trap();
    std::string_view body = rest.substr(5, f.size - 5);
    if (auto a = parse_authentication(body)) (void)sasl_offers(a->data, "SCRAM-SHA-256");
    (void)parse_parameter_status(body);
    (void)parse_backend_key_data(body);
    (void)parse_ready_for_query(body);
    (void)command_rows(body);
    if (auto n = parse_notification(body)) {
      std::string again;
      if (!build::notification_response(again, n->pid, n->channel, n->payload) ||
          again.substr(5) != body)
        __builtin_trap();  // what is parsed is built back byte for byte
    }
    (void)command_changes_types(body);
    (void)parse_error_fields(body);
    {
      // An error renamed into a client's terms: a whole message, or nothing appended.
      build::QueryRename rename{.client_name = "q",
                                .server_name = "pgring_7",
                                .prefix_chars = 3,
                                .name_at = 8,
                                .client_chars = 1,
                                .server_chars = 8};
      std::string renamed = "x";
      if (build::renamed_fields(renamed, 'E', body, rename)) {
        Frame again = frame_message(std::string_view(renamed).substr(1), 1 << 22);
        if (again.status != FrameStatus::complete || again.size != renamed.size() - 1)
          __builtin_trap();
      } else if (renamed != "x") {
        __builtin_trap();
      }
    }
    (void)parse_password_message(body);
    (void)parse_sasl_initial_response(body);
    (void)parse_query(body);
    if (auto p = parse_parse(body)) {
      if (p->tail.size() > body.size() || p->query.size() >= p->tail.size()) __builtin_trap();
    }
    if (auto b = parse_bind(body)) {
      if (b->portal.size() + b->statement.size() + 2 + b->rest.size() != body.size())
        __builtin_trap();
    }
    (void)parse_describe(body);
    (void)parse_close(body);
    if (auto row = parse_data_row(body)) {
      std::size_t total = 2;
      for (const auto& value : *row) total += 4 + (value ? value->size() : 0);
      if (total != body.size()) __builtin_trap();  // every byte accounted for
    }
    rest.remove_prefix(f.size);
  }
  return 0;
}

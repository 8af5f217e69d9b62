#pragma once
// What a message handler decided about one message. The handlers (Client::on_request,
// Server::on_reply) read the message and decide; the read loops around them
// (Client::forward_to_server, Server::forward_to_client) carry the decision out on the streams,
// so forwarding, dropping and streaming the rest of a large message are written once per side.

#include <cstdint>

namespace pgring {

enum class Verdict : std::uint8_t {
  forward,  // pass it on to the peer (the rest streams through as it arrives)
  drop,     // take it out of the input unforwarded: answered, rewritten or swallowed here
  taken,    // the handler already took it out of the input (a reply it had to consume whole)
  wait,     // cannot be decided yet (not all of it is here, a shape check is pending): stop
  stop,     // the connection is closing or the link ended: stop reading at once
};

}  // namespace pgring

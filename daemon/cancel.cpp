#include "daemon/cancel.hpp"

#include "daemon/reactor.hpp"

namespace pgring {

Canceller::Canceller(Reactor& reactor, Server& target, std::uint64_t link_generation)
    : reactor_(reactor),
      target_(&target),
      link_generation_(link_generation),
      stream_(reactor.buffers(), Operation::Kind::cancel_recv, Operation::Kind::cancel_send, this),
      connect_op_{Operation::Kind::cancel_connect, this} {}

}  // namespace pgring

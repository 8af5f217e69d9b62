#pragma once
// Upgrade in place (docs/operations.md, "Upgrading in place"): a new pgring process takes over
// from a running one without refusing a connection or dropping a client.
//
// Every pgring serves a control socket (upgrade.socket). `pgring --takeover` connects to it:
//   1. the old process sends its listening sockets (SCM_RIGHTS): the new reactors accept on the
//      very same sockets, so the backlog is never closed and no connection is refused;
//   2. the new process says it is ready; the old stops accepting (closing its copies only) and
//      enters handover mode (Reactor::ShutdownMode::handover);
//   3. each client idle between transactions (transaction or statement mode, plain TCP or unix
//      socket, nothing pinned) is handed over with its socket and its session (Reactor::close
//      with Reason::handed_over; proto/handover.hpp has what is sent); a client inside a
//      transaction goes at its end; TLS and session-mode clients stay until they leave or
//      timeouts.shutdown passes. The new process adopts each one on the reactor its cancel key
//      names (Reactor::adopt) and opens its own server connections;
//   4. the old closes its servers as they go idle and exits when it has nothing left, sending
//      "done" last.
// The new process then serves the control socket itself: the next upgrade can follow at once.
//
// Threads: the control socket is served by a thread of its own (blocking socket calls, never on
// a reactor); reactors only queue handed-over clients (hand_over) and take listening sockets.

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pgring {

class Shared;

class Upgrade {
 public:
  Upgrade(Shared& shared, std::string path);
  ~Upgrade();
  Upgrade(const Upgrade&) = delete;
  Upgrade& operator=(const Upgrade&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }

  // ---- the new process (--takeover) ----
  // Connects to the pgring serving path() and receives its listening sockets. Throws with what
  // went wrong (nobody answers, another takeover is under way, a foreign peer).
  void connect();
  // The listening sockets the old process had under `name` that reactor `index` of `workers`
  // takes over (reactor i of the old process's go to reactor i % workers).
  [[nodiscard]] std::vector<int> take_listeners(const std::string& name, int index, int workers);
  // Closes those no reactor took (a listen address the new configuration no longer has).
  void drop_untaken();
  // The reactors accept: the old process is told, and its clients are adopted from now on.
  void begin_adopting();
  [[nodiscard]] bool took_over() const { return took_over_; }
  // The listening sockets are (or were) another process's too: never shut them down.
  [[nodiscard]] bool shared_listeners() const { return took_over_ || shared_listeners_; }

  // ---- every process ----
  // Serves the control socket for the next upgrade (a thread).
  void serve();
  // A reactor's listening socket (`name` as in its log line), passed on to a new process.
  void add_listener(const std::string& name, int reactor, int fd);
  void remove_listener(int fd);
  // A client handed over: its record (proto::handover::Client, encoded) and its socket, which
  // is closed here once sent. Any reactor thread.
  void hand_over(std::string record, int fd);
  // SIGUSR2: starts `<this binary> --config <config_path> --takeover` (the executable's path as
  // it was when this process started: a package upgrade replaces the file there).
  void spawn_takeover(const std::string& config_path);
  // The reactors are stopping: no more clients are adopted, no takeover begins (before the
  // reactors go away).
  void stop_adopting();
  // The process is about to exit: what is queued goes, then "done"; threads end; the socket
  // path is removed if it is still this process's.
  void finish();

 private:
  struct Listener {
    std::string name;
    int reactor;
    int fd;
  };
  struct Queued {
    std::string record;
    int fd;
  };
  void serve_loop();
  // One new process on the control socket: listeners, ready, then the clients.
  void take_over_by(int conn);
  // False when the new process went away: the handover is abandoned.
  bool send_clients(int conn);
  void abandon(std::deque<Queued>& batch, std::uint64_t sent);
  bool bind_control();
  void adopt_loop();

  Shared& shared_;
  const std::string path_;
  std::mutex mutex_;
  std::condition_variable queued_;
  std::vector<Listener> listeners_;
  std::deque<Queued> queue_;
  bool finishing_ = false;
  std::atomic<bool> handing_over_{false};
  std::atomic<bool> shared_listeners_{false};  // sent to a process that took over (or tried)
  std::atomic<bool> took_over_{false};         // this process took over from another
  std::atomic<bool> adopting_{false};          // ... and is still adopting its clients
  bool reactors_stopping_ = false;             // (mutex_) nothing may be posted to them

  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: finish() wakes the server thread out of poll
  dev_t dev_ = 0;     // the socket file this process bound (removed at exit if still there)
  ino_t ino_ = 0;
  std::thread server_;

  // The new process: the connection to the old one, and what came over it.
  int peer_ = -1;
  pid_t old_pid_ = 0;
  std::vector<Listener> inherited_;
  std::thread adopter_;
  std::uint64_t adopted_ = 0;
  std::string executable_;  // /proc/self/exe, read at start
};

}  // namespace pgring

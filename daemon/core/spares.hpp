#pragma once
// A few spare objects of one kind, for state a connection needs only while it is busy: a busy
// connection takes a warm one (no allocation, capacities kept) and gives it back when done, so
// idle connections hold none and the data path does not allocate. T::reset() empties an object
// for its next user (and drops capacity a large message left behind).

#include <cstddef>
#include <memory>
#include <vector>

namespace pgring {

template <typename T, std::size_t kKeep = 64>
class Spares {
 public:
  std::unique_ptr<T> take() {
    if (spares_.empty()) return std::make_unique<T>();
    std::unique_ptr<T> object = std::move(spares_.back());
    spares_.pop_back();
    return object;
  }
  void give_back(std::unique_ptr<T> object) {
    if (spares_.size() >= kKeep) return;  // freed here: more were busy at once than are kept
    object->reset();
    spares_.push_back(std::move(object));
  }

 private:
  std::vector<std::unique_ptr<T>> spares_;
};

}  // namespace pgring

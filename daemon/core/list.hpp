#pragma once
// An intrusive doubly-linked list: a connection's state is the list it is on (STYLE.md 2).
// Linking and unlinking never allocate; a node knows its list so set_state() can unlink it.

#include <cstddef>

namespace pgring {

template <typename T>
class List;

template <typename T>
struct ListNode {
  T* prev = nullptr;
  T* next = nullptr;
  List<T>* list = nullptr;
};

// T has a public member `ListNode<T> node_`.
template <typename T>
class List {
 public:
  List() = default;
  List(const List&) = delete;
  List& operator=(const List&) = delete;

  [[nodiscard]] bool empty() const { return head_ == nullptr; }
  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] T* front() const { return head_; }
  [[nodiscard]] T* back() const { return tail_; }

  void push_back(T* item) {
    auto& n = item->node_;
    n.prev = tail_;
    n.next = nullptr;
    n.list = this;
    if (tail_ != nullptr)
      tail_->node_.next = item;
    else
      head_ = item;
    tail_ = item;
    ++size_;
  }

  void remove(T* item) {
    auto& n = item->node_;
    if (n.prev != nullptr)
      n.prev->node_.next = n.next;
    else
      head_ = n.next;
    if (n.next != nullptr)
      n.next->node_.prev = n.prev;
    else
      tail_ = n.prev;
    n = {};
    --size_;
  }

  T* pop_front() {
    T* item = head_;
    if (item != nullptr) remove(item);
    return item;
  }

  // Iteration that tolerates removal of the current element: for (T* x = l.front(); x; x = next).
  static T* next(T* item) { return item->node_.next; }
  static T* prev(T* item) { return item->node_.prev; }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
  std::size_t size_ = 0;
};

template <typename T>
void unlink(T* item) {
  if (item->node_.list != nullptr) item->node_.list->remove(item);
}

}  // namespace pgring

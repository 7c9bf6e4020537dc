// A C++ class behind the page-store C ABI (page_store.h) without writing the trampolines.
//
//  - page_store_ops<T>():  the ts_page_store_ops table of any class T with
//        int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
//        int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
//        int remove(uint64_t ns, const uint64_t *pages, size_t n);
//        void retain();  void release();
//    (other member names: page_store_ops<T, &T::my_get, &T::my_put, &T::my_remove>()).
//    make_page_store(self, page_size, name) fills the ts_page_store; page_store_self<T>(s) gives
//    the T back (nullptr for a store of another class or another addon).
//
//  - NativeStore<Derived>: the usual tier on top of that: it owns the ts_page_store, the
//    reference count (one for the creator; the object is deleted at the last release) and the
//    closed flag, and answers the ABI's common cases before calling the tier:
//        closed → TS_E_CLOSED, an empty batch → TS_OK, null arrays → TS_E_BAD_ARGUMENT.
//    The tier writes do_get (and do_put / do_remove; without them writes answer TS_E_NO_SPACE,
//    the ABI's "take the JavaScript path": a read-only handle).
//
//        class MyTier : public tierstack::NativeStore<MyTier> {
//         public:
//          MyTier() : NativeStore("my-tier", 4096) {}
//          int do_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
//          int do_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
//          int do_remove(uint64_t ns, const uint64_t *pages, size_t n);
//        };
//        auto *t = new MyTier();                          // one reference
//        Napi::Value h = wrap_page_store(env, t->handle()); t->release();   // now JS holds it
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "page_store.h"

namespace tierstack {

template <class T, auto Get = &T::get, auto Put = &T::put, auto Remove = &T::remove, auto Retain = &T::retain,
          auto Release = &T::release>
struct PageStoreOps {
  static int get(void *self, uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
    return (static_cast<T *>(self)->*Get)(ns, pages, n, bufs, status);
  }
  static int put(void *self, uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
    return (static_cast<T *>(self)->*Put)(ns, pages, n, bufs, flags);
  }
  static int remove(void *self, uint64_t ns, const uint64_t *pages, size_t n) {
    return (static_cast<T *>(self)->*Remove)(ns, pages, n);
  }
  static void retain(void *self) { (static_cast<T *>(self)->*Retain)(); }
  static void release(void *self) { (static_cast<T *>(self)->*Release)(); }
  static constexpr ts_page_store_ops table = {TS_PAGE_STORE_ABI_VERSION, sizeof(ts_page_store_ops), &get, &put, &remove,
                                              &retain, &release};
};

template <class T, auto... Members>
const ts_page_store_ops *page_store_ops() {
  return &PageStoreOps<T, Members...>::table;
}

template <class T, auto... Members>
ts_page_store make_page_store(T *self, uint32_t page_size, const char *name) {
  return ts_page_store{TS_PAGE_STORE_ABI_VERSION, page_size, name, page_store_ops<T, Members...>(), self};
}

// The object behind `s` if page_store_ops<T, Members...>() of this binary built it.
template <class T, auto... Members>
T *page_store_self(const ts_page_store *s) {
  return s != nullptr && s->ops == page_store_ops<T, Members...>() ? static_cast<T *>(s->self) : nullptr;
}

template <class Derived>
class NativeStore {
 public:
  NativeStore(const NativeStore &) = delete;
  NativeStore &operator=(const NativeStore &) = delete;

  ts_page_store *handle() { return &handle_; }
  uint32_t page_size() const { return handle_.page_size; }
  const std::string &name() const { return name_; }

  void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete static_cast<Derived *>(this);
  }
  // Later calls through the ABI answer TS_E_CLOSED; memory lives until the last release.
  void close() { closed_.store(true, std::memory_order_release); }
  bool closed() const { return closed_.load(std::memory_order_acquire); }

  // The Derived behind a handle, if this class (in this addon) made it.
  static Derived *from(const ts_page_store *s) { return page_store_self<Derived>(s); }

  // ---- the ABI entry points (the ops table calls these) ----
  int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
    if (closed()) return TS_E_CLOSED;
    if (n == 0) return TS_OK;
    if (!pages || !bufs || !status) return TS_E_BAD_ARGUMENT;
    return self().do_get(ns, pages, n, bufs, status);
  }
  int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
    if (closed()) return TS_E_CLOSED;
    if (n == 0) return TS_OK;
    if (!pages || !bufs) return TS_E_BAD_ARGUMENT;
    return self().do_put(ns, pages, n, bufs, flags);
  }
  int remove(uint64_t ns, const uint64_t *pages, size_t n) {
    if (closed()) return TS_E_CLOSED;
    if (n == 0) return TS_OK;
    if (!pages) return TS_E_BAD_ARGUMENT;
    return self().do_remove(ns, pages, n);
  }

 protected:
  // One reference, the creator's. `page_size` may be set later (set_page_size), before the
  // handle is handed out.
  explicit NativeStore(std::string name, uint32_t page_size = 0)
      : name_(std::move(name)), handle_(make_page_store(static_cast<Derived *>(this), page_size, nullptr)) {
    handle_.name = name_.c_str();
  }
  ~NativeStore() = default;
  void set_page_size(uint32_t page_size) { handle_.page_size = page_size; }

  // A read-only handle by default: writes take the JavaScript path.
  int do_put(uint64_t, const uint64_t *, size_t, const void *const *, uint32_t) { return TS_E_NO_SPACE; }
  int do_remove(uint64_t, const uint64_t *, size_t) { return TS_E_NO_SPACE; }

 private:
  Derived &self() { return *static_cast<Derived *>(this); }

  std::string name_;
  ts_page_store handle_;
  std::atomic<int> refs_{1};
  std::atomic<bool> closed_{false};
};

}  // namespace tierstack

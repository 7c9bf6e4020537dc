// N-API surface of @tierstack/interposer (the `tierstack run` server side):
//  - the CowStore over a tier stack (cow_store.hpp), as a page-store handle plus its controls;
//  - the listening socket and HELLO receipt (a message plus the program's uffd and memfd as
//    SCM_RIGHTS: Node's `net` cannot receive descriptors). Later messages are read by JS.
// Blocking work runs on its own thread and resolves a promise.
#include <napi.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <tierstack/napi_args.hpp>
#include <tierstack/unix_socket.hpp>
#include <tierstack/napi_error.hpp>
#include <tierstack/page_store_napi.hpp>
#include <tierstack/run_on_thread.hpp>
#include <tierstack/stack_client.hpp>

#include "cow_store.hpp"

namespace tsrun {
namespace {

using tierstack::errno_error;
using tierstack::make_error;
using tierstack::run_on_thread;
using tierstack::status_error;
using tierstack::throw_errno;
using tierstack::throw_error;

uint64_t u64(Napi::Value v) {
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  return static_cast<uint64_t>(v.ToNumber().Int64Value());
}

// ---- CowStore ----

struct CowHolder {
  CowStore *store = nullptr;  // one reference
  std::shared_ptr<tierstack::StackClient> client;
  ~CowHolder() {
    if (store) store->release();
  }
};
using CowRef = std::shared_ptr<CowHolder>;
using CowMethod = Napi::Value (*)(const Napi::CallbackInfo &, const CowRef &);


Napi::Value resolve_undefined(Napi::Env env, std::function<void()> work) {
  return run_on_thread(env, std::move(work), [](Napi::Env env, Napi::Promise::Deferred &d) { d.Resolve(env.Undefined()); });
}

// addLayer(child: bigint, source: bigint, pending: BigUint64Array) → Promise<void>
Napi::Value AddLayer(const Napi::CallbackInfo &info, const CowRef &h) {
  uint64_t child = u64(info[0]), source = u64(info[1]);
  auto a = info[2].As<Napi::BigUint64Array>();
  std::vector<uint64_t> bits(a.ElementLength());
  for (size_t i = 0; i < bits.size(); i++) bits[i] = a[i];
  return resolve_undefined(info.Env(), [h, child, source, bits]() mutable { h->store->add_layer(child, source, std::move(bits)); });
}

// dropLayer(ns: bigint) → Promise<void>
Napi::Value DropLayer(const Napi::CallbackInfo &info, const CowRef &h) {
  uint64_t ns = u64(info[0]);
  return resolve_undefined(info.Env(), [h, ns] { h->store->drop_layer(ns); });
}

// pendingPages(ns: bigint) → Promise<number>
Napi::Value PendingPages(const Napi::CallbackInfo &info, const CowRef &h) {
  uint64_t ns = u64(info[0]);
  auto n = std::make_shared<uint64_t>(0);
  return run_on_thread(
      info.Env(), [h, ns, n] { *n = h->store->pending_pages(ns); },
      [n](Napi::Env env, Napi::Promise::Deferred &d) { d.Resolve(Napi::Number::New(env, static_cast<double>(*n))); });
}

// op('get'|'put'|'remove', ns: bigint, pages: Float64Array, data?: Buffer) → Promise<Int32Array | void>:
// the same calls the uffd engine makes, from JavaScript (on a thread of their own).
Napi::Value Op(const Napi::CallbackInfo &info, const CowRef &h) {
  Napi::Env env = info.Env();
  std::string op = info[0].ToString().Utf8Value();
  uint64_t ns = u64(info[1]);
  auto arr = info[2].As<Napi::Float64Array>();
  auto pages = std::make_shared<std::vector<uint64_t>>(arr.ElementLength());
  for (size_t i = 0; i < pages->size(); i++) (*pages)[i] = static_cast<uint64_t>(arr[i]);
  const size_t ps = h->store->store()->page_size;
  uint8_t *data = nullptr;
  if (op == "get" || op == "put") {
    if (info.Length() < 4 || !info[3].IsBuffer() || info[3].As<Napi::Buffer<uint8_t>>().Length() < pages->size() * ps)
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "op needs a buffer of pages");
    data = info[3].As<Napi::Buffer<uint8_t>>().Data();
  } else if (op != "remove") {
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "op is get, put or remove");
  }
  auto status = std::make_shared<std::vector<int32_t>>(pages->size(), TS_PAGE_MISS);
  auto rc = std::make_shared<int>(TS_OK);
  ts_page_store *s = h->store->store();
  return run_on_thread(
      env,
      [h, s, op, ns, pages, data, ps, status, rc] {
        std::vector<void *> bufs(pages->size());
        for (size_t i = 0; i < bufs.size(); i++) bufs[i] = data ? data + i * ps : nullptr;
        if (op == "get")
          *rc = s->ops->get(s->self, ns, pages->data(), pages->size(), bufs.data(), status->data());
        else if (op == "put")
          *rc = s->ops->put(s->self, ns, pages->data(), pages->size(), const_cast<const void *const *>(bufs.data()), TS_PUT_DIRTY);
        else
          *rc = s->ops->remove(s->self, ns, pages->data(), pages->size());
      },
      [status, rc](Napi::Env env, Napi::Promise::Deferred &d) {
        if (*rc != TS_OK) {
          d.Reject(status_error(env, *rc, "tierstack-run store call failed").Value());
          return;
        }
        auto out = Napi::Int32Array::New(env, status->size());
        for (size_t i = 0; i < status->size(); i++) out[i] = (*status)[i];
        d.Resolve(out);
      },
      {info.Length() > 3 ? info[3] : env.Undefined()});  // the buffer stays alive while the thread uses it
}

Napi::Value Stats(const Napi::CallbackInfo &info, const CowRef &h) {
  Napi::Env env = info.Env();
  const CowStore::Stats &s = h->store->stats();
  Napi::Object o = Napi::Object::New(env);
  auto num = [&](const char *k, const std::atomic<uint64_t> &v) {
    o.Set(k, Napi::Number::New(env, static_cast<double>(v.load(std::memory_order_relaxed))));
  };
  num("gets", s.gets);
  num("puts", s.puts);
  num("removes", s.removes);
  num("pagesRead", s.pages_read);
  num("pagesFound", s.pages_found);
  num("pagesWritten", s.pages_written);
  num("pagesRemoved", s.pages_removed);
  num("nativePages", s.native_pages);
  num("jsPathPages", s.js_pages);
  num("cowReads", s.cow_reads);
  num("cowCopies", s.cow_copies);
  num("errors", s.errors);
  num("queuedWrites", s.queued_writes);
  num("queueHits", s.queue_hits);
  num("writeRetries", s.write_retries);
  return o;
}

// drain() → Promise<status>: every queued write is in the stack (status: the last write error, 0 if none).
Napi::Value Drain(const Napi::CallbackInfo &info, const CowRef &h) {
  auto rc = std::make_shared<int>(0);
  return run_on_thread(
      info.Env(), [h, rc] { *rc = h->store->drain(); },
      [rc](Napi::Env env, Napi::Promise::Deferred &d) { d.Resolve(Napi::Number::New(env, *rc)); });
}

// close(): stops the writer and fails the JS-path requests of the store's client (after drain(),
// once the engine stopped).
Napi::Value Close(const Napi::CallbackInfo &info, const CowRef &h) {
  h->store->stop();
  if (h->client) h->client->close();
  return info.Env().Undefined();
}

// createCowStore(jsPath) → { handle, addLayer, dropLayer, pendingPages, op, stats, close }
Napi::Value CreateCowStore(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "createCowStore(jsPath)");
  tierstack::StackClientOptions opts;
  auto client = tierstack::StackClient::create(env, info[0].As<Napi::Object>(), opts);
  if (!client) return env.Undefined();
  client->unref(env);  // an idle server must not be kept alive by it
  auto h = std::make_shared<CowHolder>();
  h->client = client;
  h->store = new CowStore(client, client->page_size());
  Napi::Object o = Napi::Object::New(env);
  o.Set("handle", tierstack::wrap_page_store(env, h->store->store()));
  tierstack::set_method(env, o, "addLayer", AddLayer, h);
  tierstack::set_method(env, o, "dropLayer", DropLayer, h);
  tierstack::set_method(env, o, "pendingPages", PendingPages, h);
  tierstack::set_method(env, o, "op", Op, h);
  tierstack::set_method(env, o, "stats", Stats, h);
  tierstack::set_method(env, o, "drain", Drain, h);
  tierstack::set_method(env, o, "close", Close, h);
  return o;
}

// ---- the listening socket ----

using tierstack::wait_readable;

// listenUnix(path) → fd (mode 0600: only the owner and root may connect).
Napi::Value ListenUnix(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string path = info[0].ToString().Utf8Value();
  int fd = tierstack::listen_unix(path, 64);
  if (fd == -ENAMETOOLONG) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "socket path too long: " + path);
  if (fd < 0) return throw_errno(env, -fd, "cannot listen on " + path);
  return Napi::Number::New(env, fd);
}

struct Hello {
  int conn = -1;
  std::vector<int> fds;
  std::vector<uint8_t> message;
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  int err = 0;
  std::string what;
};

// Accepts one connection and receives its first message (exactly `size` bytes) with up to 4 fds.
Hello accept_hello(int listen_fd, int timeout_ms, size_t size) {
  Hello r;
  const char *what = nullptr;
  int conn = tierstack::accept_within(listen_fd, timeout_ms, &what);
  if (conn < 0) {
    r.err = -conn;
    r.what = what;
    return r;
  }
  r.conn = conn;
  tierstack::peer_credentials(conn, &r.pid, &r.uid, &r.gid);
  int w = 0;
  r.message.resize(size);
  size_t got = 0;
  while (got < size) {
    // A client that connects and says nothing must not hold this thread forever.
    w = wait_readable(conn, 10000);
    if (w < 0) {
      r.err = -w;
      r.what = "waiting for HELLO";
      break;
    }
    int fds[4];
    size_t nfds = 0;
    ssize_t n = tierstack::recv_fds(conn, r.message.data() + got, size - got, fds, 4, &nfds);
    r.fds.insert(r.fds.end(), fds, fds + nfds);
    if (n <= 0) {
      r.err = n < 0 ? static_cast<int>(-n) : EPIPE;
      r.what = "receiving HELLO";
      break;
    }
    got += static_cast<size_t>(n);
  }
  if (r.err != 0) {
    for (int fd : r.fds) close(fd);
    r.fds.clear();
  }
  return r;
}

// acceptHello(listenFd, timeoutMs, size) → Promise<{ conn, fds, message, pid, uid, gid }>
Napi::Value AcceptHello(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = info[0].ToNumber().Int32Value();
  int timeout = info[1].IsNumber() ? info[1].ToNumber().Int32Value() : -1;
  size_t size = static_cast<size_t>(info[2].ToNumber().Uint32Value());
  auto res = std::make_shared<Hello>();
  return run_on_thread(
      env, [fd, timeout, size, res] { *res = accept_hello(fd, timeout, size); },
      [res](Napi::Env env, Napi::Promise::Deferred &d) {
        if (res->err == 0) {
          Napi::Object o = Napi::Object::New(env);
          o.Set("conn", res->conn);
          Napi::Array fds = Napi::Array::New(env, res->fds.size());
          for (size_t i = 0; i < res->fds.size(); i++) fds.Set(static_cast<uint32_t>(i), res->fds[i]);
          o.Set("fds", fds);
          o.Set("message", Napi::Buffer<uint8_t>::Copy(env, res->message.data(), res->message.size()));
          o.Set("pid", static_cast<double>(res->pid));
          o.Set("uid", static_cast<double>(res->uid));
          o.Set("gid", static_cast<double>(res->gid));
          d.Resolve(o);
          return;
        }
        Napi::Error e = errno_error(env, res->err, "accepting a tierstack-run client failed (" + res->what + ")");
        e.Set("conn", Napi::Number::New(env, res->conn));
        d.Reject(e.Value());
      });
}


Napi::Object Init(Napi::Env env, Napi::Object exports) {
  return tierstack::export_functions(env, exports,
                                     {{"createCowStore", CreateCowStore},
                                      {"listenUnix", ListenUnix},
                                      {"acceptHello", AcceptHello},
                                      {"shutdownFd", tierstack::shutdown_fd},
                                      {"closeFd", tierstack::close_fd}});
}

}  // namespace
}  // namespace tsrun

static Napi::Object InitTierstackInterposer(Napi::Env env, Napi::Object exports) { return tsrun::Init(env, exports); }
NODE_API_MODULE(tierstack_interposer, InitTierstackInterposer)

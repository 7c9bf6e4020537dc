/*
 * tierstack page-store C ABI, version 1.
 *
 * The second level of tierstack's page interface (the first is the TypeScript PageStore).
 * Native tiers (CXL, RDMA pool) implement it; native front-ends (userfaultfd, ublk) call it
 * from their own threads, so a page held by a native tier is served with no JavaScript on the
 * path. The TypeScript side only carries a handle: a napi_external holding a `ts_page_store*`,
 * type-tagged with TS_PAGE_STORE_TYPE_TAG_{LOWER,UPPER}.
 *
 * Rules for implementers
 * - Every function may be called from any thread, concurrently; implementations synchronise.
 * - No function calls into JavaScript, throws, or blocks on the JS thread.
 * - Batches: `pages[i]` is a page number of namespace `ns` (a 64-bit id, see
 *   ts_namespace_id()); `bufs[i]` points at `page_size` bytes for that page.
 * - get() writes, for each page, status[i] = TS_PAGE_FOUND (bytes copied into bufs[i]),
 *   TS_PAGE_MISS (bufs[i] untouched), or a negative TS_E_* code for that page alone (for
 *   example TS_E_CHECKSUM: bytes are never handed out when their checksum fails). It returns
 *   TS_OK, or a negative TS_E_* code if the whole batch failed (then status[] is undefined).
 * - put() stores copies of the pages; flags may carry TS_PUT_DIRTY (the data is newer than
 *   the tiers below). A cache that would have to drop a dirty page to make room and cannot
 *   hand it to its write-back path from this thread must skip that victim; when nothing can
 *   be reclaimed it returns TS_E_NO_SPACE and the caller falls back to the JavaScript path.
 * - remove() forgets pages; removing an absent page is not an error.
 * - Lifetime: retain()/release() count references. The JS wrapper holds one; a front-end
 *   that keeps a store for its threads retains it and releases it when its threads stopped.
 *   After the JS side closes the store, calls return TS_E_CLOSED; memory is freed at the
 *   last release.
 */
#ifndef TIERSTACK_PAGE_STORE_H
#define TIERSTACK_PAGE_STORE_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TS_PAGE_STORE_ABI_VERSION 1u

/* Status codes. JavaScript names them in core/src/errors.ts (TsStatus) and maps them to TS_ERR_*
 * strings (NativeStatus); native code maps them with ts_status_code() below. */
#define TS_OK 0
#define TS_E_CLOSED (-1)
#define TS_E_PAGE_SIZE (-2)
#define TS_E_BAD_ARGUMENT (-3)
#define TS_E_NOT_FOUND (-4)
#define TS_E_CHECKSUM (-5)
#define TS_E_UNAVAILABLE (-6)
#define TS_E_CORRUPT (-7)
#define TS_E_NO_SPACE (-8)
#define TS_E_IO (-9)
#define TS_E_UNSUPPORTED (-10)
#define TS_E_DEADLOCK (-11)
#define TS_E_TIMEOUT (-12)

/* Per-page status written by get(). */
#define TS_PAGE_MISS 0
#define TS_PAGE_FOUND 1

/* put() flags. */
#define TS_PUT_DIRTY 1u
/* A promotion: a copy of the page from a tier below. It must not replace a dirty copy of the same
 * page (a dirty copy is newer than anything below). Tiers that can be written outside the
 * JavaScript stack (through this ABI) must honor it; others may ignore it. */
#define TS_PUT_PROMOTION 2u

/* napi type tag of the external that carries a ts_page_store* ("tierstac" "pagestor"). */
#define TS_PAGE_STORE_TYPE_TAG_LOWER 0x7469657273746163ULL
#define TS_PAGE_STORE_TYPE_TAG_UPPER 0x7061676573746f72ULL

typedef struct ts_page_store_ops {
  uint32_t abi_version; /* TS_PAGE_STORE_ABI_VERSION of the implementer */
  uint32_t struct_size; /* sizeof(ts_page_store_ops) of the implementer, for additive growth */
  int (*get)(void *self, uint64_t ns, const uint64_t *pages, size_t count, void *const *bufs,
             int32_t *status);
  int (*put)(void *self, uint64_t ns, const uint64_t *pages, size_t count,
             const void *const *bufs, uint32_t flags);
  int (*remove)(void *self, uint64_t ns, const uint64_t *pages, size_t count);
  void (*retain)(void *self);
  void (*release)(void *self);
} ts_page_store_ops;

typedef struct ts_page_store {
  uint32_t abi_version; /* TS_PAGE_STORE_ABI_VERSION */
  uint32_t page_size;   /* bytes per page */
  const char *name;     /* tier name, for logs and stats */
  const ts_page_store_ops *ops;
  void *self;           /* passed as the first argument of every op */
} ts_page_store;

/* FNV-1a 64 of a namespace's UTF-8 bytes: the same id as namespaceId() in @tierstack/core. */
static inline uint64_t ts_namespace_id(const char *name, size_t len) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) {
    h ^= (uint8_t)name[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/* The stable JavaScript error code (core's ErrorCode) of a TS_E_* status: "TS_ERR_IO" for
 * unknown ones. Addons set it as `code` on the errors they throw. */
static inline const char *ts_status_code(int status) {
  switch (status) {
    case TS_E_CLOSED: return "TS_ERR_CLOSED";
    case TS_E_PAGE_SIZE: return "TS_ERR_PAGE_SIZE";
    case TS_E_BAD_ARGUMENT: return "TS_ERR_BAD_ARGUMENT";
    case TS_E_NOT_FOUND: return "TS_ERR_NOT_FOUND";
    case TS_E_CHECKSUM: return "TS_ERR_CHECKSUM";
    case TS_E_UNAVAILABLE: return "TS_ERR_UNAVAILABLE";
    case TS_E_CORRUPT: return "TS_ERR_CORRUPT";
    case TS_E_NO_SPACE: return "TS_ERR_NO_SPACE";
    case TS_E_UNSUPPORTED: return "TS_ERR_UNSUPPORTED";
    case TS_E_DEADLOCK: return "TS_ERR_DEADLOCK";
    case TS_E_TIMEOUT: return "TS_ERR_TIMEOUT";
    default: return "TS_ERR_IO";
  }
}

/* The stable JavaScript error code of an errno value (either sign), for a failed system call
 * that the caller has no more specific meaning for. One policy for every addon:
 *   EPERM, EACCES                                  TS_ERR_PERMISSION  the system refused: a privilege,
 *                                                                     a sysctl or a file mode is missing
 *   ENOSYS, EOPNOTSUPP (= ENOTSUP), ENODEV, ENXIO  TS_ERR_UNSUPPORTED this kernel, driver or filesystem
 *                                                                     does not offer it
 *   ENOENT                                         TS_ERR_NOT_FOUND   a path or device node is absent
 *   EINVAL                                         TS_ERR_BAD_ARGUMENT
 *   EEXIST                                         TS_ERR_EXISTS
 *   ENOSPC, EDQUOT                                 TS_ERR_NO_SPACE
 *   ETIMEDOUT                                      TS_ERR_TIMEOUT
 *   EDEADLK                                        TS_ERR_DEADLOCK
 *   EBADMSG, EPROTO                                TS_ERR_PROTOCOL
 *   ECONNREFUSED, ECONNRESET, EHOSTUNREACH, ENETUNREACH  TS_ERR_UNAVAILABLE
 *   anything else                                  TS_ERR_IO
 * A call site that knows better (a timeout it asked for, a socket it shut down itself) passes its
 * own code; the errno still goes on the error (tierstack/napi_error.hpp). */
static inline const char *ts_errno_code(int err) {
  switch (err < 0 ? -err : err) {
    case EPERM:
    case EACCES: return "TS_ERR_PERMISSION";
    case ENOSYS:
    case EOPNOTSUPP:
#if defined(ENOTSUP) && ENOTSUP != EOPNOTSUPP
    case ENOTSUP:
#endif
    case ENODEV:
    case ENXIO: return "TS_ERR_UNSUPPORTED";
    case ENOENT: return "TS_ERR_NOT_FOUND";
    case EINVAL: return "TS_ERR_BAD_ARGUMENT";
    case EEXIST: return "TS_ERR_EXISTS";
    case ENOSPC:
    case EDQUOT: return "TS_ERR_NO_SPACE";
    case ETIMEDOUT: return "TS_ERR_TIMEOUT";
    case EDEADLK: return "TS_ERR_DEADLOCK";
    case EBADMSG:
    case EPROTO: return "TS_ERR_PROTOCOL";
    case ECONNREFUSED:
    case ECONNRESET:
    case EHOSTUNREACH:
    case ENETUNREACH: return "TS_ERR_UNAVAILABLE";
    default: return "TS_ERR_IO";
  }
}

/* True if a caller built against this header can use `store`. */
static inline int ts_page_store_compatible(const ts_page_store *store) {
  return store != NULL && store->abi_version == TS_PAGE_STORE_ABI_VERSION && store->ops != NULL &&
         store->ops->abi_version == TS_PAGE_STORE_ABI_VERSION &&
         store->ops->struct_size >= sizeof(ts_page_store_ops);
}

#ifdef __cplusplus
}
#endif

#endif /* TIERSTACK_PAGE_STORE_H */

#include "block_handler.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace tsublk {

uint8_t *BlockHandler::Scratch::page() {
  if (pool_used == pool.size()) pool.emplace_back(new uint8_t[kPageSize]);
  return pool[pool_used++].get();
}

int32_t BlockHandler::errno_of(int ts_status) {
  switch (ts_status) {
    case TS_E_NO_SPACE: return -ENOSPC;
    case TS_E_BAD_ARGUMENT: return -EINVAL;
    case TS_E_UNSUPPORTED: return -EOPNOTSUPP;
    default: return -EIO;
  }
}

void BlockHandler::process(BlockRequest *reqs, size_t n, Scratch &s) {
  size_t i = 0;
  while (i < n) {
    BlockRequest &r = reqs[i];
    bool rw = r.op == BlockOp::Read || r.op == BlockOp::Write;
    if (rw || r.op == BlockOp::Discard || r.op == BlockOp::WriteZeroes) {
      if (r.offset > size_ || r.length > size_ - r.offset) {
        r.result = -EINVAL;  // beyond the end of the device
        i++;
        continue;
      }
    }
    if (rw) {
      size_t j = i + 1;
      while (j < n && (reqs[j].op == BlockOp::Read || reqs[j].op == BlockOp::Write) && reqs[j].offset <= size_ &&
             reqs[j].length <= size_ - reqs[j].offset)
        j++;
      process_rw(reqs + i, j - i, s);
      i = j;
    } else if (r.op == BlockOp::Discard || r.op == BlockOp::WriteZeroes) {
      process_discard(r, s);
      i++;
    } else if (r.op == BlockOp::Flush) {
      int rc = backend_->flush();
      r.result = rc == TS_OK ? 0 : errno_of(rc);
      i++;
    } else {
      r.result = -EOPNOTSUPP;
      i++;
    }
  }
}

void BlockHandler::process_rw(BlockRequest *reqs, size_t n, Scratch &s) {
  s.pages.clear();
  s.bufs.clear();
  s.owner.clear();
  s.partial_reads.clear();
  s.rmw.clear();
  s.rmw_pages.clear();
  s.rmw_bufs.clear();
  s.rmw_bad.clear();
  s.puts.clear();
  s.pool_used = 0;
  for (size_t k = 0; k < n; k++) {
    reqs[k].result = static_cast<int32_t>(reqs[k].length);
    reqs[k].level = reqs[k].op == BlockOp::Read ? kLevelMiss : kLevelStack;
  }

  // 1. Pages that some write covers only partly need their old contents (read-modify-write).
  for (size_t k = 0; k < n; k++) {
    const BlockRequest &r = reqs[k];
    if (r.op != BlockOp::Write || r.length == 0) continue;
    uint64_t first = r.offset / kPageSize, last = (r.offset + r.length - 1) / kPageSize;
    auto note = [&](uint64_t p) {
      if (s.rmw.emplace(p, static_cast<uint32_t>(s.rmw_pages.size())).second) {
        s.rmw_pages.push_back(p);
        s.rmw_bufs.push_back(s.page());
        s.rmw_bad.push_back(0);
      }
    };
    if (r.offset % kPageSize) note(first);
    if ((r.offset + r.length) % kPageSize) note(last);
  }
  // Lock the stripes of RMW pages (sorted, so threads never deadlock on each other).
  s.stripes.clear();
  for (uint64_t p : s.rmw_pages) s.stripes.push_back(static_cast<uint32_t>(p % kStripes));
  std::sort(s.stripes.begin(), s.stripes.end());
  s.stripes.erase(std::unique(s.stripes.begin(), s.stripes.end()), s.stripes.end());
  for (uint32_t st : s.stripes) stripes_[st].lock();

  // 2. One get for every page a read touches plus the RMW pages.
  for (size_t k = 0; k < n; k++) {
    BlockRequest &r = reqs[k];
    if (r.op != BlockOp::Read || r.length == 0) continue;
    uint64_t pos = r.offset, end = r.offset + r.length;
    while (pos < end) {
      uint64_t p = pos / kPageSize;
      uint32_t in = static_cast<uint32_t>(pos % kPageSize);
      uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(kPageSize - in, end - pos));
      uint8_t *dst = r.buf + (pos - r.offset);
      s.pages.push_back(p);
      s.owner.push_back(static_cast<int32_t>(k));
      if (len == kPageSize) {
        s.bufs.push_back(dst);
      } else {
        uint8_t *tmp = s.page();
        s.bufs.push_back(tmp);
        s.partial_reads.push_back({static_cast<uint32_t>(k), tmp + in, dst, len});
      }
      pos += len;
    }
  }
  for (size_t i = 0; i < s.rmw_pages.size(); i++) {
    s.pages.push_back(s.rmw_pages[i]);
    s.bufs.push_back(s.rmw_bufs[i]);
    s.owner.push_back(-1 - static_cast<int32_t>(i));
  }
  if (!s.pages.empty()) {
    s.status.assign(s.pages.size(), TS_PAGE_MISS);
    s.levels.assign(s.pages.size(), 0);
    int rc = backend_->get(s.pages.data(), s.pages.size(), s.bufs.data(), s.status.data(), s.levels.data());
    for (size_t e = 0; e < s.pages.size(); e++) {
      int32_t st = rc == TS_OK ? s.status[e] : rc;
      if (st == TS_PAGE_FOUND) {
        // A request's level is the deepest one any of its pages came from (what its latency paid).
        int32_t own = s.owner[e];
        if (own >= 0 && (reqs[own].level == kLevelMiss || s.levels[e] > reqs[own].level)) reqs[own].level = s.levels[e];
        continue;
      }
      if (st == TS_PAGE_MISS) {
        std::memset(s.bufs[e], 0, kPageSize);  // never written (or discarded): zeros
        continue;
      }
      int32_t own = s.owner[e];
      if (own >= 0) reqs[own].result = errno_of(st);
      else s.rmw_bad[-1 - own] = 1;
    }
    for (const auto &pr : s.partial_reads)
      if (reqs[pr.req].result >= 0) std::memcpy(pr.dst, pr.src, pr.len);
  }

  // 3. Apply writes in request order: into RMW slots, or as whole pages straight from the request.
  for (size_t k = 0; k < n; k++) {
    BlockRequest &r = reqs[k];
    if (r.op != BlockOp::Write || r.length == 0) continue;
    uint64_t pos = r.offset, end = r.offset + r.length;
    bool bad = false;
    for (uint64_t q = pos; q < end && !s.rmw_pages.empty(); q = (q / kPageSize + 1) * kPageSize) {
      auto it = s.rmw.find(q / kPageSize);
      if (it != s.rmw.end() && s.rmw_bad[it->second]) bad = true;
    }
    if (bad) {
      reqs[k].result = -EIO;  // its old contents could not be read: the write cannot be merged
      continue;
    }
    while (pos < end) {
      uint64_t p = pos / kPageSize;
      uint32_t in = static_cast<uint32_t>(pos % kPageSize);
      uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(kPageSize - in, end - pos));
      const uint8_t *src = r.buf + (pos - r.offset);
      auto it = s.rmw_pages.empty() ? s.rmw.end() : s.rmw.find(p);
      if (it != s.rmw.end()) {
        std::memcpy(s.rmw_bufs[it->second] + in, src, len);
      } else {
        s.puts.emplace_back(p, src);
      }
      pos += len;
    }
  }
  // A page written twice in one batch: the later write wins (stable sort keeps request order).
  if (s.puts.size() > 1) {
    std::stable_sort(s.puts.begin(), s.puts.end(), [](const auto &a, const auto &b) { return a.first < b.first; });
    size_t keep = 0;
    for (size_t i = 0; i < s.puts.size(); i++) {
      if (keep > 0 && s.puts[keep - 1].first == s.puts[i].first) s.puts[keep - 1] = s.puts[i];
      else s.puts[keep++] = s.puts[i];
    }
    s.puts.resize(keep);
  }
  s.pages.clear();
  s.cbufs.clear();
  for (const auto &kv : s.puts) {
    s.pages.push_back(kv.first);
    s.cbufs.push_back(kv.second);
  }
  for (size_t i = 0; i < s.rmw_pages.size(); i++) {
    if (s.rmw_bad[i]) continue;
    s.pages.push_back(s.rmw_pages[i]);
    s.cbufs.push_back(s.rmw_bufs[i]);
  }
  int put_rc = TS_OK;
  if (!s.pages.empty()) put_rc = backend_->put(s.pages.data(), s.pages.size(), s.cbufs.data());
  for (auto it = s.stripes.rbegin(); it != s.stripes.rend(); ++it) stripes_[*it].unlock();
  if (put_rc != TS_OK)
    for (size_t k = 0; k < n; k++)
      if (reqs[k].op == BlockOp::Write && reqs[k].result >= 0) reqs[k].result = errno_of(put_rc);
}

void BlockHandler::process_discard(BlockRequest &r, Scratch &s) {
  r.result = static_cast<int32_t>(std::min<uint64_t>(r.length, INT32_MAX));
  if (r.length == 0) return;
  uint64_t end = r.offset + r.length;
  uint64_t first_full = (r.offset + kPageSize - 1) / kPageSize;
  uint64_t end_full = end / kPageSize;
  if (s.zero_page.size() != kPageSize) s.zero_page.assign(kPageSize, 0);
  // Partial edges are zeroed through the write path (read-modify-write).
  BlockRequest edges[2];
  size_t ne = 0;
  if (first_full > end_full) {  // inside one page
    edges[ne++] = {BlockOp::Write, r.offset, r.length, s.zero_page.data(), 0};
  } else {
    if (r.offset % kPageSize) edges[ne++] = {BlockOp::Write, r.offset, first_full * kPageSize - r.offset, s.zero_page.data(), 0};
    if (end % kPageSize && end_full * kPageSize >= r.offset) edges[ne++] = {BlockOp::Write, end_full * kPageSize, end - end_full * kPageSize, s.zero_page.data(), 0};
  }
  for (size_t e = 0; e < ne; e++) {
    process_rw(&edges[e], 1, s);
    if (edges[e].result < 0) r.result = edges[e].result;
  }
  // Whole pages: removed in chunks (a discard of a whole device is millions of pages).
  constexpr uint64_t kChunk = 4096;
  for (uint64_t p = first_full; p < end_full && r.result >= 0; p += kChunk) {
    uint64_t cnt = std::min(kChunk, end_full - p);
    s.pages.resize(cnt);
    for (uint64_t k = 0; k < cnt; k++) s.pages[k] = p + k;
    int rc = backend_->remove(s.pages.data(), cnt);
    if (rc != TS_OK) r.result = errno_of(rc);
  }
}

}  // namespace tsublk

// Internals shared by the engine's source files (engine.cc: sources and the fault reader;
// fill.cc: fetching and installing pages, prefetch; managed.cc: eviction and write-back).
#pragma once

#include <cstdint>
#include <vector>

#include "engine.hpp"

namespace tsuffd {

constexpr size_t kMsgBatch = 128;
constexpr int kMaxEagain = 100000;
// What fill() does with each wanted page.
enum Action : uint8_t { kCopy, kZero, kPoison, kSkip, kFetch };

// Per-thread scratch: every vector grows to the largest batch once and is reused, so a fault
// allocates nothing.
struct Engine::Scratch {
  std::vector<uffd_msg> msgs = std::vector<uffd_msg>(kMsgBatch);
  std::vector<uffd_msg> drain = std::vector<uffd_msg>(32);
  std::vector<std::pair<Region *, Fault>> queued;  // page faults read, not yet served
  std::vector<std::pair<Region *, Fault>> batch;
  std::vector<Fault> faults;
  std::vector<Want> wants, uniq;
  std::vector<uint64_t> blocks;
  std::vector<uint8_t> buf;
  std::vector<uint64_t> pages;
  std::vector<void *> bufs;
  std::vector<int32_t> status;
  std::vector<uint8_t> level;
  std::vector<uint8_t> action;
  std::vector<int8_t> result;
  std::vector<uint32_t> gens;
  std::vector<size_t> sub;  // indexes of a sub-list (native-only fetches)
  std::vector<uint64_t> sub_pages;
  std::vector<void *> sub_bufs;
  std::vector<int32_t> sub_status;
  std::vector<uint8_t> sub_level;
  tierstack::NativeChain::Scratch chain;
  void reserve(size_t n, size_t ps) {
    if (buf.size() < n * ps) buf.resize(n * ps);
    pages.resize(n);
    bufs.resize(n);
    status.resize(n);
    level.resize(n);
    action.resize(n);
    result.resize(n);
    gens.resize(n);
  }
};

}  // namespace tsuffd

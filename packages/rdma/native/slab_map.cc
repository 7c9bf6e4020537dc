#include "slab_map.hpp"

namespace tsrdma {

namespace {
// Takes s.io exclusively: waits when `busy` is null; else only tries, setting *busy on failure.
bool lock_io(Slab &s, bool *busy) {
  if (!busy) {
    s.io.lock();
    return true;
  }
  if (s.io.try_lock()) return true;
  *busy = true;
  return false;
}
}  // namespace

std::shared_ptr<Slab> SlabMap::find(uint64_t ns, uint64_t index) {
  std::shared_lock<std::shared_mutex> lk(mu_);
  auto it = map_.find(Key{ns, index});
  return it == map_.end() ? nullptr : it->second;
}

void SlabMap::add(uint64_t ns, uint64_t index, const std::vector<Replica> &reps) {
  auto s = std::make_shared<Slab>();
  s->crc.assign(slab_pages_, 0);
  s->state.assign(slab_pages_, kAbsent);
  s->dirty.assign(slab_pages_, 0);
  for (size_t i = 0; i < reps.size() && i < kMaxReplicas; i++) s->reps[i] = reps[i];
  std::unique_lock<std::shared_mutex> lk(mu_);
  map_.emplace(Key{ns, index}, std::move(s));
}

int SlabMap::add_replica(uint64_t ns, uint64_t index, const Replica &rep) {
  auto s = find(ns, index);
  if (!s) return -1;
  std::lock_guard<std::mutex> lk(s->reps_mu);
  for (int i = 0; i < kMaxReplicas; i++) {
    if (s->reps[i].state == kNone || s->reps[i].state == kDead) {
      s->reps[i] = rep;
      s->reps[i].state = kSyncing;  // written by puts from now on, read once copied
      return i;
    }
  }
  return -1;
}

bool SlabMap::set_replica_state(uint64_t ns, uint64_t index, int slot, uint8_t state) {
  auto s = find(ns, index);
  if (!s || slot < 0 || slot >= kMaxReplicas) return false;
  std::lock_guard<std::mutex> lk(s->reps_mu);
  s->reps[slot].state = state;
  return true;
}

bool SlabMap::drop_replica(uint64_t ns, uint64_t index, int slot, bool *busy) {
  auto s = find(ns, index);
  if (!s || slot < 0 || slot >= kMaxReplicas) return false;
  // Exclusive io: no put is writing it while it goes away.
  if (!lock_io(*s, busy)) return false;
  std::unique_lock<IoLock> io(s->io, std::adopt_lock);
  std::lock_guard<std::mutex> lk(s->reps_mu);
  s->reps[slot] = Replica{};
  return true;
}

std::vector<uint64_t> SlabMap::replace_lost(uint64_t ns, uint64_t index, const Replica &rep, bool *busy) {
  std::vector<uint64_t> lost;
  auto s = find(ns, index);
  if (!s) return lost;
  if (!lock_io(*s, busy)) return lost;
  std::unique_lock<IoLock> io(s->io, std::adopt_lock);
  {
    std::lock_guard<std::mutex> lk(s->reps_mu);
    for (auto &r : s->reps) r = Replica{};
    s->reps[0] = rep;
    s->reps[0].state = kActive;
  }
  for (uint64_t off = 0; off < slab_pages_; off++) {
    uint8_t st = load(s->state[off]);
    astore(s->dirty[off], static_cast<uint8_t>(0));
    if (st == kPresent || st == kLost) {
      astore(s->state[off], static_cast<uint8_t>(kLost));
      lost.push_back(index * slab_pages_ + off);
    }
  }
  s->present.store(0);
  return lost;
}

std::vector<Replica> SlabMap::drop_empty(uint64_t ns, uint64_t index, bool *busy) {
  std::vector<Replica> out;
  auto s = find(ns, index);
  if (!s) return out;
  // A slab still holding pages stays (the usual answer to a remove), said without the lock: as
  // if this came before whatever is changing it. Otherwise the check is made under the lock.
  if (s->present.load() != 0) return out;
  if (!lock_io(*s, busy)) return out;
  std::unique_lock<IoLock> io(s->io, std::adopt_lock);  // no put is writing it
  if (s->present.load() != 0) return out;
  for (uint64_t off = 0; off < slab_pages_; off++)
    if (load(s->state[off]) != kAbsent) return out;
  {
    std::unique_lock<std::shared_mutex> ml(mu_);
    auto it = map_.find(Key{ns, index});
    if (it == map_.end() || it->second != s) return out;
    map_.erase(it);
  }
  s->dropped = true;
  std::lock_guard<std::mutex> lk(s->reps_mu);
  for (auto &r : s->reps)
    if (r.state != kNone) out.push_back(r);
  return out;
}

std::vector<SlabView> SlabMap::views() {
  std::vector<SlabView> out;
  std::shared_lock<std::shared_mutex> ml(mu_);
  for (auto &kv : map_) {
    SlabView v{kv.first.ns, kv.first.index, {}, kv.second->present.load()};
    std::lock_guard<std::mutex> lk(kv.second->reps_mu);
    for (int i = 0; i < kMaxReplicas; i++) v.reps[i] = kv.second->reps[i];
    out.push_back(v);
  }
  return out;
}

std::vector<std::pair<int32_t, uint64_t>> SlabMap::take_touched() {
  std::vector<std::pair<int32_t, uint64_t>> out;
  std::shared_lock<std::shared_mutex> ml(mu_);
  for (auto &kv : map_) {
    if (!kv.second->touched.exchange(false)) continue;
    std::lock_guard<std::mutex> lk(kv.second->reps_mu);
    for (auto &r : kv.second->reps)
      if (r.state == kActive || r.state == kSyncing) out.emplace_back(r.conn, r.slab_id);
  }
  return out;
}

void SlabMap::mark_conn_dead(int32_t conn) {
  std::shared_lock<std::shared_mutex> ml(mu_);
  for (auto &kv : map_) {
    std::lock_guard<std::mutex> lk(kv.second->reps_mu);
    for (auto &r : kv.second->reps)
      if (r.conn == conn && r.state != kNone) r.state = kDead;
  }
  degraded_.fetch_add(1);
}

void SlabMap::mark_replica_dead(Slab &s, int slot) {
  std::lock_guard<std::mutex> lk(s.reps_mu);
  if (s.reps[slot].state == kActive || s.reps[slot].state == kSyncing) {
    s.reps[slot].state = kDead;
    degraded_.fetch_add(1);
  }
}

void SlabMap::clear() {
  std::unique_lock<std::shared_mutex> ml(mu_);
  map_.clear();
}

}  // namespace tsrdma

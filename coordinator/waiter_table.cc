#include "coordinator/waiter_table.h"

#include <algorithm>

namespace kvpool::coordinator {

void WaiterTable::add(std::uint64_t id, Waiter w) {
  for (std::size_t k = 0; k < w.keys.size(); ++k) {
    if (!w.committed[k]) wait_index_[WaitKey{w.ns, w.keys[k]}].emplace_back(id, static_cast<std::uint32_t>(k));
  }
  deadlines_.emplace(w.deadline, id);
  waiters_.emplace(id, std::move(w));
}

void WaiterTable::finish(std::uint64_t id, ReadyCallbacks* ready) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  Waiter& w = it->second;
  for (std::size_t pos = 0; pos < w.keys.size(); ++pos) {
    if (w.committed[pos]) continue;
    auto wi = wait_index_.find(WaitKey{w.ns, w.keys[pos]});
    if (wi == wait_index_.end()) continue;
    auto& v = wi->second;
    v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& p) { return p.first == id; }), v.end());
    if (v.empty()) wait_index_.erase(wi);
  }
  deadlines_.erase({w.deadline, id});
  if (ready != nullptr) ready->emplace_back(std::move(w.done), std::move(w.committed));
  waiters_.erase(it);
}

void WaiterTable::notify_committed(std::uint32_t ns, const Key128& key, ReadyCallbacks& ready) {
  if (wait_index_.empty()) return;
  auto it = wait_index_.find(WaitKey{ns, key});
  if (it == wait_index_.end()) return;
  const auto list = std::move(it->second);
  wait_index_.erase(it);
  for (const auto& [id, pos] : list) {
    auto wit = waiters_.find(id);
    if (wit == waiters_.end() || wit->second.committed[pos]) continue;
    wit->second.committed[pos] = true;
    if (--wit->second.remaining == 0) finish(id, &ready);
  }
}

std::size_t WaiterTable::fire_due(Clock::time_point now, ReadyCallbacks& ready) {
  std::size_t fired = 0;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    finish(deadlines_.begin()->second, &ready);
    ++fired;
  }
  return fired;
}

}  // namespace kvpool::coordinator

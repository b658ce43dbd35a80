// Replies deferred until agents acknowledge: pending removes and eviction
// waits (server_impl.h says why they are two).

#include <memory>
#include <utility>
#include <vector>

#include "coordinator/server_impl.h"

namespace kvpool::coordinator {

using server_detail::logger;

void CoordinatorServer::Impl::finish_removes(const std::function<bool(const SlotKey&, const PendingRemove&)>& done) {
  std::vector<std::shared_ptr<PendingRemove>> ready;
  {
    std::lock_guard lock(mu);
    for (auto it = remove_waits.begin(); it != remove_waits.end();) {
      if (done(it->first, *it->second)) {
        if (--it->second->left == 0) ready.push_back(it->second);
        it = remove_waits.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& p : ready) p->resp.reply(std::move(p->reply));
}

void CoordinatorServer::Impl::acknowledge_removes(const rpc::InvalidateMessage& m) {
  std::vector<std::shared_ptr<PendingRemove>> ready;
  {
    std::lock_guard lock(mu);
    if (remove_waits.empty()) return;
    for (const auto& sl : m.slots) {
      auto it = remove_waits.find(SlotKey{m.agent, sl.header_offset, sl.generation});
      if (it == remove_waits.end()) continue;
      if (--it->second->left == 0) ready.push_back(it->second);
      remove_waits.erase(it);
    }
  }
  for (auto& p : ready) p->resp.reply(std::move(p->reply));
}

void CoordinatorServer::Impl::reply_after_removed(const MeteredResponder& resp, std::string rep,
                                                  const std::vector<Location>& removed,
                                                  const std::vector<Location>& removed_leased,
                                                  const std::vector<InvalidateRequest>& invalidations,
                                                  Clock::time_point now) {
  if (removed.empty() && removed_leased.empty()) {
    send_invalidations(invalidations);
    return resp.reply(std::move(rep));
  }
  auto pending = std::make_shared<PendingRemove>(PendingRemove{resp, std::move(rep), 0, now + kRemoveAckWait});
  {
    std::lock_guard lock(mu);
    for (const auto* list : {&removed, &removed_leased}) {
      for (const Location& l : *list) {
        if (remove_waits.emplace(SlotKey{to_u32(l.agent), l.header_offset, l.generation}, pending).second) {
          ++pending->left;
        }
      }
    }
  }
  // Sent only now, so no acknowledgement can come before the wait is set.
  send_removed_leased(removed_leased);
  send_invalidations(invalidations);
}

void CoordinatorServer::Impl::after_evictions(std::vector<EvictingSlot> slots, Clock::time_point deadline,
                                              std::function<void(bool expired)> resume) {
  {
    std::lock_guard lock(mu);
    if (core->any_evicting(slots)) {
      auto w = std::make_shared<EvictWait>(EvictWait{std::move(slots), deadline, std::move(resume), false});
      for (const EvictingSlot& e : w->slots) evict_waits[slot_key(e)].push_back(w);
      return;
    }
  }
  resume(false);
}

void CoordinatorServer::Impl::acknowledge_evictions(const rpc::InvalidateMessage& m) {
  std::vector<std::shared_ptr<EvictWait>> ready;
  {
    std::lock_guard lock(mu);
    if (evict_waits.empty()) return;
    for (const auto& sl : m.slots) {
      auto it = evict_waits.find(SlotKey{m.agent, sl.header_offset, sl.generation});
      if (it == evict_waits.end()) continue;
      for (auto& w : it->second) {
        if (!w->done && !core->any_evicting(w->slots)) {
          w->done = true;
          ready.push_back(w);
        }
      }
      evict_waits.erase(it);
    }
  }
  for (auto& w : ready) w->resume(false);
}

void CoordinatorServer::Impl::finish_evict_waits(Clock::time_point now) {
  std::vector<std::pair<std::shared_ptr<EvictWait>, bool>> ready;
  {
    std::lock_guard lock(mu);
    for (auto it = evict_waits.begin(); it != evict_waits.end();) {
      for (auto& w : it->second) {
        if (w->done) continue;
        const bool expired = w->deadline <= now;
        if (expired || !core->any_evicting(w->slots)) {
          w->done = true;
          ready.emplace_back(w, expired);
        }
      }
      std::erase_if(it->second, [](const auto& w) { return w->done; });
      it = it->second.empty() ? evict_waits.erase(it) : std::next(it);
    }
  }
  for (auto& [w, expired] : ready) {
    if (expired) {
      logger()->warn("an eviction was not acknowledged within {} s: answering anyway", kEvictAckWait.count());
    }
    w->resume(expired);
  }
}

}  // namespace kvpool::coordinator

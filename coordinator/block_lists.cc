#include "coordinator/block_lists.h"

#include <algorithm>
#include <cassert>

namespace kvpool::coordinator {

void BlockLists::push_front(BlockSlab& slab, List& l, std::uint32_t i) {
  BlockEntry& e = slab[i];
  e.prev = kNil;
  e.next = l.head;
  if (l.head != kNil) slab[l.head].prev = i;
  l.head = i;
  if (l.tail == kNil) l.tail = i;
  ++l.count;
}

void BlockLists::remove(BlockSlab& slab, List& l, std::uint32_t i) {
  BlockEntry& e = slab[i];
  if (e.prev != kNil) {
    slab[e.prev].next = e.next;
  } else {
    l.head = e.next;
  }
  if (e.next != kNil) {
    slab[e.next].prev = e.prev;
  } else {
    l.tail = e.prev;
  }
  e.prev = e.next = kNil;
  --l.count;
}

BlockLists::SizeClass* BlockLists::find_class(std::uint32_t granules) {
  auto it = std::lower_bound(classes_.begin(), classes_.end(), granules,
                             [](const SizeClass& c, std::uint32_t g) { return c.granules < g; });
  return it != classes_.end() && it->granules == granules ? &*it : nullptr;
}

const BlockLists::SizeClass* BlockLists::find_class(std::uint32_t granules) const {
  return const_cast<BlockLists*>(this)->find_class(granules);
}

void BlockLists::link_lru(BlockSlab& slab, std::uint32_t i) {
  assert(slab[i].list == kNone);
  const std::uint32_t granules = slot_granules(slab[i].length);
  SizeClass* c = find_class(granules);
  if (c == nullptr) {
    auto it = std::lower_bound(classes_.begin(), classes_.end(), granules,
                               [](const SizeClass& sc, std::uint32_t g) { return sc.granules < g; });
    c = &*classes_.insert(it, SizeClass{granules, List{}});
  }
  push_front(slab, c->list, i);
  slab[i].list = kLru;
  ++lru_count_;
}

void BlockLists::link_busy(BlockSlab& slab, std::uint32_t i) {
  assert(slab[i].list == kNone);
  push_front(slab, busy_, i);
  slab[i].list = kBusy;
}

void BlockLists::unlink(BlockSlab& slab, std::uint32_t i) {
  BlockEntry& e = slab[i];
  if (e.list == kLru) {
    SizeClass* c = find_class(slot_granules(e.length));
    assert(c != nullptr);
    remove(slab, c->list, i);
    --lru_count_;
  } else if (e.list == kBusy) {
    remove(slab, busy_, i);
  }
  e.list = kNone;
}

std::uint32_t BlockLists::oldest(const BlockSlab& slab) const {
  std::uint32_t best = kNil;
  for (const SizeClass& c : classes_) {
    if (c.list.tail == kNil) continue;
    if (best == kNil || slab[c.list.tail].stamp < slab[best].stamp) best = c.list.tail;
  }
  return best;
}

std::uint32_t BlockLists::oldest_of_size(std::uint32_t granules) const {
  const SizeClass* c = find_class(granules);
  return c == nullptr ? kNil : c->list.tail;
}

std::uint32_t BlockLists::oldest_larger_than(std::uint32_t granules) const {
  for (const SizeClass& c : classes_) {
    if (c.granules > granules && c.list.tail != kNil) return c.list.tail;
  }
  return kNil;
}

}  // namespace kvpool::coordinator

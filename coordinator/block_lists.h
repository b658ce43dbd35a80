#pragma once
// BlockLists: the intrusive lists that hold every block of one agent.
//
// Each entry of an agent sits on exactly one list:
//  - an LRU list of its size class (slot length in granules) when it is
//    evictable: committed and pinned by no read lease. Head = most recently
//    used, tail = least. Per size class, so eviction can prefer blocks of the
//    size an allocation needs (slot_allocator.h: evicting random small
//    blocks leaves free space in crumbs); the agent-wide LRU order is the
//    smallest stamp among the class tails.
//  - the busy list otherwise (being written, pinned, removed-but-pinned).
// So dropping an agent walks exactly its entries, and eviction never meets a
// block it may not evict.
//
// Links are the entries' u32 prev/next (block_slab.h): no allocation per
// block. One agent usually holds a few size classes (one per namespace block
// size), so the classes are a small sorted vector.
//
// Thread-compatible: no lock.

#include <cstdint>
#include <vector>

#include "coordinator/block_slab.h"

namespace kvpool::coordinator {

class BlockLists {
 public:
  static constexpr std::uint8_t kNone = 0;
  static constexpr std::uint8_t kLru = 1;
  static constexpr std::uint8_t kBusy = 2;

  // Links i at the most-recent end of its size class; e.stamp must be set.
  void link_lru(BlockSlab& slab, std::uint32_t i);
  void link_busy(BlockSlab& slab, std::uint32_t i);
  // Takes i off whichever list holds it (no-op when none does).
  void unlink(BlockSlab& slab, std::uint32_t i);

  // The least recently used evictable block of the agent, or kNil.
  std::uint32_t oldest(const BlockSlab& slab) const;
  // The least recently used evictable block of exactly `granules`, or kNil.
  std::uint32_t oldest_of_size(std::uint32_t granules) const;
  // The least recently used evictable block of the smallest size class
  // larger than `granules` that has one, or kNil.
  std::uint32_t oldest_larger_than(std::uint32_t granules) const;

  std::uint64_t evictable_count() const { return lru_count_; }
  std::uint64_t busy_count() const { return busy_.count; }

  // Calls f(i) for every entry on the busy list only. f must not change the lists.
  template <typename F>
  void for_each_busy(const BlockSlab& slab, F&& f) const {
    walk(slab, busy_, f);
  }
  // Calls f(i) for every entry on every list. f must not change the lists.
  template <typename F>
  void for_each(const BlockSlab& slab, F&& f) const {
    for (const SizeClass& c : classes_) walk(slab, c.list, f);
    walk(slab, busy_, f);
  }

 private:
  struct List {
    std::uint32_t head = kNil;
    std::uint32_t tail = kNil;
    std::uint64_t count = 0;
  };
  struct SizeClass {
    std::uint32_t granules = 0;
    List list;
  };

  template <typename F>
  static void walk(const BlockSlab& slab, const List& l, F& f) {
    for (std::uint32_t i = l.head; i != kNil;) {
      const std::uint32_t next = slab[i].next;
      f(i);
      i = next;
    }
  }
  static void push_front(BlockSlab& slab, List& l, std::uint32_t i);
  static void remove(BlockSlab& slab, List& l, std::uint32_t i);
  SizeClass* find_class(std::uint32_t granules);
  const SizeClass* find_class(std::uint32_t granules) const;

  std::vector<SizeClass> classes_;  // ascending granules; a class stays once created
  List busy_;
  std::uint64_t lru_count_ = 0;
};

}  // namespace kvpool::coordinator

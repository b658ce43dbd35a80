#pragma once
// Two Transports in one process for the transport tests: an owner serving
// one allocated region (optionally with a progress thread) and a client
// connected to it, the region imported.
#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include "transport/transport.h"

namespace kvpool::transport {

// An owner and a client Transport in one process.
struct Pair {
  std::unique_ptr<Transport> owner;
  std::unique_ptr<Transport> client;
  MemoryRegion region;
  std::unique_ptr<Peer> peer;
  RemoteRegion remote;
  ~Pair() {
    remote = RemoteRegion();
    peer.reset();
    region = MemoryRegion();
  }
};

inline std::unique_ptr<Pair> make_pair(const std::string& tls, ErrorMode mode, bool progress_thread,
                                       std::size_t bytes = 8 << 20) {
  auto p = std::make_unique<Pair>();
  auto owner = Transport::create({.tls = tls, .serve_owner_reads = true});
  REQUIRE(owner);
  p->owner = std::move(*owner);
  auto client = Transport::create({.tls = tls});
  REQUIRE(client);
  p->client = std::move(*client);
  auto region = p->owner->allocate(bytes);
  REQUIRE(region);
  p->region = std::move(*region);
  REQUIRE(p->owner->serve(p->region).ok());
  if (progress_thread) REQUIRE(p->owner->start_progress_thread(ProgressMode::kEvent).ok());
  auto info = p->owner->describe(p->region);
  REQUIRE(info);
  auto peer = p->client->connect(info->worker_address, mode);
  REQUIRE(peer);
  p->peer = std::move(*peer);
  auto remote = p->peer->import_region(*info);
  REQUIRE(remote);
  p->remote = std::move(*remote);
  return p;
}

}  // namespace kvpool::transport

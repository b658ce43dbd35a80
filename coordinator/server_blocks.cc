// The data path: allocate, commit, abort, lookup, release, remove, wait_for.

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/server_impl.h"

namespace kvpool::coordinator {
namespace {

std::uint32_t ms_until(Clock::time_point t, Clock::time_point now) {
  if (t <= now) return 0;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count();
  return static_cast<std::uint32_t>(std::min<long long>(ms, UINT32_MAX));
}

}  // namespace

using server_detail::logger;
using server_detail::to_wire;

void CoordinatorServer::Impl::allocate(const Call& c, rpc::AllocateRequest& m) {
  if (Status s = check_isolation(c.req, m.ns); !s.ok()) return c.resp.fail(s);
  std::vector<BlockRequest> blocks;
  blocks.reserve(m.items.size());
  for (const auto& it : m.items) blocks.push_back({it.key, it.length});
  auto res = core->allocate(m.ns, blocks, WriterInfo{c.req.peer_id, m.writer_host}, c.now);
  if (!res) return c.resp.fail(res.error());
  send_invalidations(res->invalidations);
  rpc::AllocateReply rep;
  rep.epoch = options.epoch;
  rep.results.reserve(res->items.size());
  for (const auto& item : res->items) {
    rpc::AllocateResult r;
    switch (item.outcome) {
      case AllocateOutcome::kPlaced:
        r.outcome = rpc::AllocateOutcome::kPlaced;
        r.location = to_wire(item.location);
        r.lease = to_u64(item.lease);
        r.lease_ms = ms_until(item.lease_deadline, c.now);
        gate->note_lease(c.req.tenant, r.lease);
        break;
      case AllocateOutcome::kExists:
        r.outcome = rpc::AllocateOutcome::kExists;
        break;
      case AllocateOutcome::kPending:
        r.outcome = rpc::AllocateOutcome::kPending;
        break;
      case AllocateOutcome::kError:
        r.outcome = rpc::AllocateOutcome::kError;
        r.error = rpc::StatusWire::from(item.status);
        break;
    }
    allocate_outcomes[static_cast<std::size_t>(r.outcome)]->inc();
    rep.results.push_back(std::move(r));
  }
  c.resp.reply(rpc::encode(rep));
}

Status CoordinatorServer::Impl::check_epoch(const char* what, std::uint64_t carried) const {
  if (carried == options.epoch) return Status();
  const std::string head = std::string(what) + " carries leader epoch " + std::to_string(carried) + " of shard " +
                           std::to_string(options.shard) + ", but this coordinator's epoch is " +
                           std::to_string(options.epoch);
  if (carried < options.epoch) {
    return Status(StatusCode::kFailedPrecondition,
                  head + ": its leases were issued by an earlier leader and ended with it (write the blocks again)");
  }
  return Status(StatusCode::kUnavailable, head + ": this is a deposed leader; find the leader in etcd");
}

bool CoordinatorServer::Impl::lease_epoch_ok(const Call& c, const rpc::LeaseBatch& m) {
  const char* what = c.req.type == rpc::kCommit ? "commit" : "abort";
  if (Status s = check_epoch(what, m.epoch); !s.ok()) {
    logger()->warn("{} of {} leases from {} refused: {}", what, m.leases.size(), c.req.peer_id, s.message());
    c.resp.fail(s);
    return false;
  }
  return true;
}

void CoordinatorServer::Impl::commit_leases(const Call& c, rpc::LeaseBatch& m) {
  if (!lease_epoch_ok(c, m)) return;
  std::vector<LeaseId> leases;
  for (auto l : m.leases) leases.push_back(LeaseId{l});
  rpc::StatusBatch rep;
  auto statuses = core->commit(leases, c.now);
  for (std::size_t i = 0; i < statuses.size(); ++i) {
    const Status& s = statuses[i];
    if (s.ok()) gate->forget_lease(c.req.tenant, m.leases[i]);
    (s.ok() ? commits_ok : commits_failed)->inc();
    rep.results.push_back(rpc::StatusWire::from(s));
  }
  c.resp.reply(rpc::encode(rep));
}

void CoordinatorServer::Impl::abort_leases(const Call& c, rpc::LeaseBatch& m) {
  if (!lease_epoch_ok(c, m)) return;
  std::vector<LeaseId> leases;
  for (auto l : m.leases) leases.push_back(LeaseId{l});
  rpc::StatusBatch rep;
  BatchResult br = core->abort(leases, c.now);
  send_invalidations(br.invalidations);
  for (const auto& s : br.statuses) rep.results.push_back(rpc::StatusWire::from(s));
  c.resp.reply(rpc::encode(rep));
}

void CoordinatorServer::Impl::lookup(const Call& c, rpc::LookupRequest& m) {
  if (Status s = check_isolation(c.req, m.ns); !s.ok()) return c.resp.fail(s);
  run_lookup(c.req.tenant, m, c.resp, c.now + kEvictAckWait);
}

void CoordinatorServer::Impl::run_lookup(const std::string& tenant, rpc::LookupRequest& m, const MeteredResponder& resp,
                                         Clock::time_point wait_deadline) {
  const auto now = Clock::now();
  auto res = core->lookup(m.ns, m.keys, m.take_lease, now, now < wait_deadline);
  if (!res) return resp.fail(res.error());
  if (!res->evicting.empty()) {
    auto held = std::make_shared<rpc::LookupRequest>(std::move(m));
    return after_evictions(std::move(res->evicting), wait_deadline, [this, tenant, held, resp, wait_deadline](bool) {
      if (options.fence) {
        if (Status fenced = options.fence(); !fenced.ok()) return resp.fail(fenced);
      }
      run_lookup(tenant, *held, resp, wait_deadline);
    });
  }
  rpc::LookupReply rep;
  rep.epoch = options.epoch;
  rep.lease = to_u64(res->read_lease);
  gate->note_lease(tenant, rep.lease);
  rep.locations.reserve(res->locations.size());
  for (const auto& l : res->locations) rep.locations.push_back(to_wire(l));
  resp.reply(rpc::encode(rep));
}

void CoordinatorServer::Impl::release(const Call& c, rpc::ReleaseRequest& m) {
  if (Status e = check_epoch("release", m.epoch); !e.ok()) return c.resp.fail(e);
  Status s = core->release(LeaseId{m.lease}, c.now);
  return s.ok() ? c.resp.reply({}) : c.resp.fail(s);
}

void CoordinatorServer::Impl::remove_blocks(const Call& c, rpc::KeysRequest& m) {
  auto res = core->remove(m.ns, m.keys, c.now);
  if (!res) return c.resp.fail(res.error());
  rpc::StatusBatch rep;
  for (const auto& s : res->statuses) {
    (s.ok() ? removes_ok : removes_failed)->inc();
    rep.results.push_back(rpc::StatusWire::from(s));
  }
  reply_after_removed(c.resp, rpc::encode(rep), res->removed, res->removed_leased, res->invalidations, c.now);
}

void CoordinatorServer::Impl::wait_for(const Call& c, rpc::WaitForRequest& m) {
  if (Status s = check_isolation(c.req, m.ns); !s.ok()) return c.resp.fail(s);
  auto deadline = c.now + std::chrono::milliseconds(m.timeout_ms);
  // The callback may run at once (all committed), from a commit on
  // another connection, or from tick at the deadline; the responder is
  // a no-op if this client has gone.
  auto keys = std::make_shared<std::vector<Key128>>(std::move(m.keys));
  auto res = core->wait_for(
      m.ns, *keys, deadline,
      [this, resp = c.resp, ns = m.ns, keys](std::vector<bool> committed) {
        answer_wait_for(resp, ns, *keys, std::move(committed));
      },
      c.now);
  if (!res) c.resp.fail(res.error());
}

void CoordinatorServer::Impl::answer_wait_for(const MeteredResponder& resp, NamespaceId ns,
                                              const std::vector<Key128>& keys, std::vector<bool> committed) {
  std::vector<Key128> missing;
  for (std::size_t k = 0; k < committed.size() && k < keys.size(); ++k) {
    if (!committed[k]) missing.push_back(keys[k]);
  }
  std::vector<EvictingSlot> slots;
  if (!missing.empty()) slots = core->evicting(ns, missing);
  std::string reply = rpc::encode(rpc::WaitForReply{std::move(committed)});
  if (slots.empty()) return resp.reply(std::move(reply));
  after_evictions(std::move(slots), Clock::now() + kEvictAckWait,
                  [resp, reply = std::move(reply)](bool) mutable { resp.reply(std::move(reply)); });
}

}  // namespace kvpool::coordinator

#include "coordinator/leader.h"

#include <algorithm>

#include "runtime/common/logging.h"
#include "runtime/common/units.h"

namespace kvpool::coordinator {
namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("coordinator");
  return l;
}

std::int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

}  // namespace

Result<std::unique_ptr<LeaderElection>> LeaderElection::create(const LeaderOptions& options) {
  auto client = etcd::Client::create(options.etcd);
  if (!client) return tl::unexpected(client.error());
  if (options.lease_ttl_seconds < 1) return make_error(StatusCode::kInvalidArgument, "--lease-ttl must be at least 1s");
  std::unique_ptr<LeaderElection> e(new LeaderElection());
  e->options_ = options;
  e->client_ = std::move(*client);
  e->key_ = etcd::leader_key(options.shard);
  return e;
}

LeaderElection::~LeaderElection() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (renewer_.joinable()) renewer_.join();
}

Result<std::int64_t> LeaderElection::campaign(const std::atomic<bool>& stop) {
  // Woken by the watch when the key changes; polls anyway every second in
  // case a watch stream is stuck.
  std::mutex wake_mu;
  std::condition_variable wake;
  bool changed = false;
  std::unique_ptr<etcd::Watch> watch;
  std::string last_seen;
  bool waited = false;
  while (!stop.load()) {
    const std::int64_t sent = now_ns();
    auto lease = client_->lease_grant(options_.lease_ttl_seconds);
    if (lease) {
      etcd::LeaderInfo me{"", 0, options_.id};
      auto txn = client_->txn({etcd::Compare::created(key_, 0)}, {etcd::TxnOp::put(key_, etcd::encode_leader(me), lease->id)},
                              {etcd::TxnOp::get(key_)});
      if (txn && txn->succeeded) {
        lease_ = lease->id;
        ttl_ = lease->ttl;
        epoch_ = txn->revision;
        renewed_at_ = sent;
        logger()->info("shard {}: leading, epoch {} (etcd lease {:#x}, TTL {} s)", options_.shard, epoch_, lease_,
                       ttl_);
        return epoch_;
      }
      (void)client_->lease_revoke(lease->id);
      if (txn) {
        std::string holder = "unknown";
        std::int64_t rev = txn->revision;
        if (!txn->ranges.empty() && !txn->ranges[0].kvs.empty()) {
          const auto& kv = txn->ranges[0].kvs[0];
          auto info = etcd::decode_leader(kv.value);
          holder = info ? (info->address.empty() ? info->id : info->address) : kv.value;
          holder += ", epoch " + std::to_string(kv.create_revision);
        }
        if (holder != last_seen) logger()->info("shard {}: standing by; the leader is {}", options_.shard, holder);
        last_seen = holder;
        if (watch == nullptr) {
          // From the revision of the answer on: a delete after it wakes us.
          auto w = etcd::Watch::start(
              options_.etcd, key_, false, rev + 1,
              [&](const std::vector<etcd::WatchEvent>&) {
                {
                  std::lock_guard lock(wake_mu);
                  changed = true;
                }
                wake.notify_all();
              },
              [&] {
                {
                  std::lock_guard lock(wake_mu);
                  changed = true;
                }
                wake.notify_all();
              });
          if (w) watch = std::move(*w);
        }
      } else if (!waited) {
        logger()->warn("shard {}: campaign: {}", options_.shard, txn.error().to_string());
      }
    } else if (!waited) {
      logger()->warn("shard {}: campaign: etcd lease grant: {}", options_.shard, lease.error().to_string());
    }
    waited = true;
    std::unique_lock lock(wake_mu);
    wake.wait_for(lock, std::chrono::milliseconds(1000), [&] { return changed || stop.load(); });
    changed = false;
  }
  return make_error(StatusCode::kFailedPrecondition, "stopped before leading");
}

Status LeaderElection::publish(const std::string& address, std::function<void(const Status&)> on_lost) {
  etcd::LeaderInfo me{address, epoch_, options_.id};
  // Only while the key is still the one this leadership created.
  auto txn = client_->txn({etcd::Compare::created(key_, epoch_)},
                          {etcd::TxnOp::put(key_, etcd::encode_leader(me), lease_)});
  if (!txn) return txn.error();
  if (!txn->succeeded) {
    return Status(StatusCode::kFailedPrecondition,
                  "shard " + std::to_string(options_.shard) + ": leadership of epoch " + std::to_string(epoch_) +
                      " lost before the address was published");
  }
  on_lost_ = std::move(on_lost);
  renewer_ = std::thread([this] { renew_loop(); });
  logger()->info("shard {}: serving on {} as leader of epoch {}", options_.shard, address, epoch_);
  return Status();
}

Status LeaderElection::fence() const {
  if (lost_.load()) {
    return Status(StatusCode::kUnavailable, "not the leader of shard " + std::to_string(options_.shard) +
                                                " any more (etcd lease lost); find the leader in etcd");
  }
  // The lease runs TTL from the last acknowledged renewal's sending; stop a
  // quarter TTL before that, for clock drift and a standby's start.
  const std::int64_t ttl_ns = ttl_ * 1'000'000'000;
  if (now_ns() - renewed_at_.load() > ttl_ns - ttl_ns / 4) {
    return Status(StatusCode::kUnavailable, "not surely the leader of shard " + std::to_string(options_.shard) +
                                                ": etcd lease not renewed in time; find the leader in etcd");
  }
  return Status();
}

void LeaderElection::renew_loop() {
  const auto interval = std::chrono::milliseconds(std::max<std::int64_t>(100, ttl_ * 1000 / 6));
  etcd::ClientOptions o = options_.etcd;
  o.timeout = std::min(o.timeout, std::chrono::milliseconds(ttl_ * 1000 / 3));
  auto quick = etcd::Client::create(o);
  Status lost;
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, interval, [&] { return stopping_; })) return;
    }
    const std::int64_t sent = now_ns();
    auto ttl = (*quick)->lease_keepalive(lease_);
    if (ttl) {
      // Frozen between sending and now? The renewal still counts from its
      // sending, which fence() compares against.
      renewed_at_ = std::max(renewed_at_.load(), sent);
      continue;
    }
    if (ttl.error().code() == StatusCode::kNotFound) {
      lost = Status(StatusCode::kUnavailable, "etcd lease expired or revoked");
      break;
    }
    if (!fence().ok()) {
      lost = Status(StatusCode::kUnavailable, "etcd unreachable past the lease: " + ttl.error().to_string());
      break;
    }
    logger()->warn("shard {}: lease renewal: {}", options_.shard, ttl.error().to_string());
  }
  lost_ = true;
  logger()->error("shard {}: leadership of epoch {} lost ({}); stepping down", options_.shard, epoch_,
                  lost.to_string());
  if (on_lost_) on_lost_(lost);
}

void LeaderElection::resign() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (renewer_.joinable()) renewer_.join();
  if (lease_ != 0 && !lost_.load()) {
    if (Status s = client_->lease_revoke(lease_); !s.ok()) {
      logger()->warn("shard {}: resign: {}", options_.shard, s.to_string());
    } else {
      logger()->info("shard {}: resigned leadership of epoch {}", options_.shard, epoch_);
    }
  }
  lost_ = true;
}

}  // namespace kvpool::coordinator

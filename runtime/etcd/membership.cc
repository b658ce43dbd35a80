#include "runtime/etcd/membership.h"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "runtime/common/logging.h"

namespace kvpool::etcd {

using json = nlohmann::json;

namespace {
std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace

std::string member_key(const std::string& name) { return std::string(kAgentsPrefix) + name; }

std::string encode_member(const MemberInfo& info) {
  return json{{"name", info.name},         {"host", info.host},
              {"incarnation", hex(info.incarnation)}, {"shard", info.shard},
              {"address", info.address},   {"region_bytes", info.region_bytes}}
      .dump();
}

Result<MemberInfo> decode_member(const std::string& value) {
  auto bad = [&](const std::string& why) {
    return make_error(StatusCode::kInvalidArgument, "agent member record: " + why + ": '" + value.substr(0, 200) + "'");
  };
  json j = json::parse(value, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  MemberInfo m;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get<std::string>().empty()) return bad("no \"name\"");
  m.name = name->get<std::string>();
  auto inc = j.find("incarnation");
  if (inc == j.end()) return bad("no \"incarnation\"");
  if (inc->is_number_unsigned()) {
    m.incarnation = inc->get<std::uint64_t>();
  } else if (inc->is_string()) {
    const std::string s = inc->get<std::string>();
    char* end = nullptr;
    m.incarnation = std::strtoull(s.c_str(), &end, 0);
    if (s.empty() || end == nullptr || *end != '\0') return bad("\"incarnation\" is not a number");
  } else {
    return bad("\"incarnation\" is not a number");
  }
  if (auto s = j.find("shard"); s != j.end()) {
    if (!s->is_number_unsigned() || s->get<std::uint64_t>() > 0xffffffffull) return bad("bad \"shard\"");
    m.shard = s->get<std::uint32_t>();
  }
  if (auto h = j.find("host"); h != j.end() && h->is_string()) m.host = h->get<std::string>();
  if (auto a = j.find("address"); a != j.end() && a->is_string()) m.address = a->get<std::string>();
  if (auto b = j.find("region_bytes"); b != j.end() && b->is_number_unsigned()) m.region_bytes = b->get<std::uint64_t>();
  return m;
}

Result<std::vector<MemberInfo>> list_members(const Client& client, std::int64_t* revision,
                                             std::vector<std::string>* malformed) {
  auto r = client.get_prefix(kAgentsPrefix);
  if (!r) return tl::unexpected(r.error());
  if (revision != nullptr) *revision = r->revision;
  std::vector<MemberInfo> out;
  for (const auto& kv : r->kvs) {
    auto m = decode_member(kv.value);
    if (!m) {
      if (malformed != nullptr) malformed->push_back(kv.key);
      continue;
    }
    m->lease = kv.lease;
    out.push_back(std::move(*m));
  }
  return out;
}

Result<std::unique_ptr<MembershipLease>> MembershipLease::start(const ClientOptions& options, const MemberInfo& info,
                                                                std::int64_t ttl_seconds) {
  std::unique_ptr<MembershipLease> m(new MembershipLease());
  auto c = Client::create(options);
  if (!c) return tl::unexpected(c.error());
  m->client_ = std::move(*c);
  m->info_ = info;
  m->key_ = member_key(info.name);
  m->ttl_ = ttl_seconds;
  // Two agents of one name in different shards would replace each other's
  // record (and each coordinator would drop its agent on the other's put).
  auto held = m->client_->get(m->key_);
  if (!held) return tl::unexpected(held.error());
  if (!held->kvs.empty()) {
    auto other = decode_member(held->kvs[0].value);
    if (other && other->shard != info.shard && other->incarnation != info.incarnation) {
      return make_error(StatusCode::kFailedPrecondition,
                        "etcd key " + m->key_ + " is held by agent '" + other->name + "' of shard " +
                            std::to_string(other->shard) + " (host " + other->host + ", incarnation " +
                            hex(other->incarnation) + "): give each agent of a host a name of its own (--name)");
    }
  }
  if (Status s = m->grant_and_put(); !s.ok()) return tl::unexpected(s);
  m->renewer_ = std::thread([p = m.get()] { p->renew_loop(); });
  return m;
}

Status MembershipLease::grant_and_put() {
  auto lease = client_->lease_grant(ttl_);
  if (!lease) return lease.error();
  auto put = client_->put(key_, encode_member(info_), lease->id);
  if (!put) {
    (void)client_->lease_revoke(lease->id);
    return put.error();
  }
  ttl_ = lease->ttl;
  lease_ = lease->id;
  return Status();
}

void MembershipLease::renew_loop() {
  auto log = log::get("agent");
  bool failing = false;
  std::unique_lock lock(mu_);
  while (!stopping_) {
    const auto every = std::chrono::milliseconds(std::max<std::int64_t>(ttl_ * 1000 / 3, 200));
    cv_.wait_for(lock, failing ? std::chrono::milliseconds(250) : every, [&] { return stopping_; });
    if (stopping_) break;
    lock.unlock();
    auto left = client_->lease_keepalive(lease_.load());
    Status s = left ? Status() : left.error();
    if (!s.ok() && s.code() == StatusCode::kNotFound) {
      // The lease ran out (frozen, or cut off from etcd past the TTL): the
      // coordinators have dropped this agent (it rejoins through its
      // heartbeats); the record comes back under a new lease.
      log->warn("etcd membership lease {} of agent '{}' is gone; granting a new one", lease_.load(), info_.name);
      s = grant_and_put();
      if (s.ok()) {
        ++regrants_;
        log->info("agent '{}' is a member in etcd again (lease {})", info_.name, lease_.load());
      }
    }
    if (!s.ok() && !failing) log->warn("etcd membership of agent '{}': {}; retrying", info_.name, s.to_string());
    failing = !s.ok();
    lock.lock();
  }
}

void MembershipLease::stop(bool revoke) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !renewer_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (renewer_.joinable()) renewer_.join();
  if (revoke && lease_.load() != 0) {
    if (Status s = client_->lease_revoke(lease_.load()); !s.ok() && s.code() != StatusCode::kNotFound) {
      log::get("agent")->warn("revoking etcd membership lease of agent '{}': {}", info_.name, s.to_string());
    }
    lease_ = 0;
  }
}

MembershipLease::~MembershipLease() { stop(false); }

}  // namespace kvpool::etcd

#include "coordinator/range_mover.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <unordered_map>

#include "kvpool/client.h"
#include "runtime/common/logging.h"
#include "runtime/common/secret.h"
#include "runtime/etcd/etcd_client.h"
#include "runtime/etcd/membership.h"

namespace kvpool::coordinator {

namespace {

std::shared_ptr<spdlog::logger> logger() {
  static auto l = log::get("coordinator");
  return l;
}

constexpr std::uint32_t kListLimit = 1024;
constexpr std::size_t kCopyBatch = 64;

// A tenant credential (`kvpool-tenant NAME KEY`, runtime/common/secret.h)
// in a private file: a new mkdtemp directory (mode 0700) under the temporary
// directory holding one file of mode 0600, both removed when this goes.
class CredentialFile {
 public:
  static Result<std::unique_ptr<CredentialFile>> write(const Tenant& tenant) {
    std::error_code ec;
    auto base = std::filesystem::temp_directory_path(ec);
    if (ec) base = "/tmp";
    std::string tmpl = (base / "kvpool-mover-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return tl::unexpected(Status(StatusCode::kInternal, "creating a private directory like " + tmpl +
                                                              " for tenant '" + tenant.name +
                                                              "''s credential: " + std::strerror(errno)));
    }
    auto f = std::unique_ptr<CredentialFile>(new CredentialFile(tmpl, tmpl + "/credential"));
    const int fd = ::open(f->path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      return tl::unexpected(Status(StatusCode::kInternal, "creating " + f->path_ + ": " + std::strerror(errno)));
    }
    std::string line = std::string(kTenantCredentialTag) + " " + tenant.name + " " + tenant.key + "\n";
    std::size_t at = 0;
    while (at < line.size()) {
      const ssize_t n = ::write(fd, line.data() + at, line.size() - at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      at += static_cast<std::size_t>(n);
    }
    std::fill(line.begin(), line.end(), '\0');
    const bool ok = at == line.size() && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) return tl::unexpected(Status(StatusCode::kInternal, "writing " + f->path_ + ": " + std::strerror(errno)));
    return f;
  }
  ~CredentialFile() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  CredentialFile(const CredentialFile&) = delete;
  CredentialFile& operator=(const CredentialFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  CredentialFile(std::string dir, std::string path) : dir_(std::move(dir)), path_(std::move(path)) {}
  std::string dir_, path_;
};

// The clients one credential copies with: `src` of this shard (read,
// remove), `dst` of the new owner (put). `credential` outlives them.
struct ClientPair {
  std::unique_ptr<CredentialFile> credential;  // null: the cluster secret
  std::unique_ptr<Client> src, dst;
  std::unordered_map<NamespaceId, bool> registered;  // on both sides
};

}  // namespace

RangeMover::RangeMover(RangeMoverOptions options) : options_(std::move(options)) {
  thread_ = std::thread([this] { run(); });
}

RangeMover::~RangeMover() { stop(); }

void RangeMover::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool RangeMover::sleep_for(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return stopping_; });
}

// One run of the mover, in its steps: connecting, copying the range round
// by round, publishing the map without the move.
struct RangeMover::Move {
  explicit Move(RangeMover& m)
      : mover(m),
        options(m.options_),
        r(m.options_.range),
        what("moving keys [" + std::to_string(r.start) + ", " + std::to_string(r.end) + ") from shard " +
             std::to_string(options.shard) + " to shard " + std::to_string(r.shard)),
        started(Clock::now()) {}

  // Clients of this shard (read, remove) and of the new owner (put), found
  // through etcd like any worker's.
  // Retries (logged) until connected or stopping (null) unless `why` is
  // given: then one attempt, its error in `why`.
  std::unique_ptr<Client> connect(std::uint32_t shard, const std::string& secret_file, const std::string& as,
                                  std::string* why = nullptr) {
    for (;;) {
      ClientOptions o;
      o.coordinator = "etcd://" + options.etcd_endpoints + "/" + std::to_string(shard);
      o.client_id = "range-mover-" + std::to_string(options.shard) + "-" + std::to_string(shard) +
                    (as.empty() ? std::string() : "-" + as);
      o.secret_file = secret_file;
      o.timeout = std::chrono::seconds(10);
      auto c = Client::connect(o);
      if (c) return std::move(*c);
      if (why != nullptr) {
        *why = "connecting to shard " + std::to_string(shard) + " as the tenant: " + c.error().to_string();
        return nullptr;
      }
      logger()->warn("{}: connecting to shard {}: {}; trying again", what, shard, c.error().to_string());
      if (!mover.sleep_for(std::chrono::seconds(1))) return nullptr;
    }
  }

  // etcd and the cluster secret's clients; false when stopping or etcd
  // cannot be named.
  bool connect_cluster() {
    auto eps = etcd::parse_endpoints(options.etcd_endpoints);
    if (!eps) return false;
    auto c = etcd::Client::create({*eps, std::chrono::milliseconds(3000)});
    if (!c) return false;
    ec = std::move(*c);
    ClientPair& cluster = pairs[""];
    cluster.src = connect(options.shard, options.secret_file, "");
    if (!cluster.src) return false;
    cluster.dst = connect(r.shard, options.secret_file, "");
    return cluster.dst != nullptr;
  }

  // The clients that may copy namespace `ns`: the cluster secret's, or for
  // a namespace in an isolated tenant's regions that tenant's (null, logged,
  // when no credential for it can be had or either shard refuses it: that
  // namespace waits, tried again next round; the others move on).
  ClientPair* pair_for(NamespaceId ns) {
    auto owner = options.core->namespace_tenant(ns);
    const std::string t = owner ? *owner : std::string();
    if (auto it = pairs.find(t); it != pairs.end()) return &it->second;
    std::string why;
    const Tenant* tenant = options.tenants ? options.tenants->find(t) : nullptr;
    if (tenant == nullptr) {
      why = "this coordinator's --tenants file " +
            std::string(options.tenants ? "does not name tenant '" + t + "'" : "is not given") +
            ", so its blocks cannot be read here (the cluster secret is refused on an isolated tenant's namespaces)";
    } else {
      auto& pending = credentials[t];  // kept across rounds until its clients connect
      if (!pending) {
        auto cred = CredentialFile::write(*tenant);
        if (cred) pending = std::move(*cred);
        else why = cred.error().to_string();
      }
      if (pending) {
        ClientPair p;
        p.credential = std::move(pending);
        credentials.erase(t);
        p.src = connect(options.shard, p.credential->path(), t, &why);
        if (p.src) p.dst = connect(r.shard, p.credential->path(), t, &why);
        if (p.dst) {
          logger()->info("{}: copying the namespaces of isolated tenant '{}' with its credential", what, t);
          unusable.erase(t);
          return &(pairs[t] = std::move(p));
        }
        p.src.reset();
        credentials[t] = std::move(p.credential);
      }
    }
    if (unusable[t] != why) {
      logger()->warn("{}: namespace {:#x} lies in the isolated regions of tenant '{}': {}; waiting", what, ns, t, why);
      unusable[t] = why;
    }
    return nullptr;
  }

  // Copies the range round by round until nothing of it is left here;
  // false when stopping.
  bool copy_range() {
    t0 = Clock::now();
    for (;;) {
      {
        std::lock_guard lock(mover.mu_);
        if (mover.stopping_) return false;
      }
      auto listing = options.core->list_keys(r.start, r.end, 0, kListLimit);
      if (listing.keys.empty()) {
        if (agents_rejoined()) return true;
        if (!mover.sleep_for(std::chrono::milliseconds(100))) return false;
        continue;
      }
      std::map<NamespaceId, std::vector<Key128>> by_ns;
      for (const auto& [ns, key] : listing.keys) by_ns[ns].push_back(key);
      std::uint64_t progress = 0;
      for (auto& [ns, keys] : by_ns) progress += copy_namespace(ns, keys);
      if (progress == 0 && !mover.sleep_for(std::chrono::seconds(1))) return false;
    }
  }

  // Nothing of the range in the index. After a failover the index is
  // rebuilt as the agents rejoin: end only once every agent of this
  // shard that is a member in etcd has rejoined (its incarnation alive
  // here), none is still sending its scan, and a live agent without
  // membership has had the agent timeout to rejoin.
  bool agents_rejoined() {
    auto members = etcd::list_members(*ec);
    if (members) std::erase_if(*members, [&](const etcd::MemberInfo& m) { return m.shard != options.shard; });
    const auto agents = options.core->agents();
    std::size_t recovering = 0;
    for (const auto& a : agents) recovering += a.recovering ? 1 : 0;
    std::string absent;
    for (const auto& m : members ? *members : std::vector<etcd::MemberInfo>{}) {
      bool here = false;
      for (const auto& a : agents) here |= a.incarnation == m.incarnation && a.alive && !a.recovering;
      if (!here) absent += (absent.empty() ? "" : ", ") + m.name;
    }
    if (members && absent.empty() && recovering == 0 && Clock::now() - started >= options.rejoin_wait) return true;
    const std::string why = !members ? "reading the agents' membership in etcd: " + members.error().to_string()
                                     : std::to_string(recovering) + " recovering; not rejoined yet: " +
                                           (absent.empty() ? std::string("none") : absent);
    if (why != waiting_for) {
      logger()->info(
          "{}: nothing of the range indexed here; before ending the move, waiting for the agents ({}; "
          "the agent timeout is {} ms)",
          what, why, options.rejoin_wait.count());
      waiting_for = why;
    }
    return false;
  }

  // One namespace's keys of this round; the blocks it moved on (copied or
  // gone).
  std::uint64_t copy_namespace(NamespaceId ns, const std::vector<Key128>& keys) {
    ClientPair* cp = pair_for(ns);
    if (cp == nullptr) {
      ++failed;
      return 0;
    }
    if (!cp->registered.contains(ns) && !register_namespace(*cp, ns)) return 0;
    auto bb = cp->src->block_bytes(ns);
    if (!bb) return 0;
    std::vector<std::byte> buf(kCopyBatch * *bb);
    std::uint64_t progress = 0;
    for (std::size_t at = 0; at < keys.size();) {
      const std::size_t n = std::min(kCopyBatch, keys.size() - at);
      auto moved_on = copy_batch(*cp, ns, std::span<const Key128>(keys.data() + at, n), buf, *bb, progress);
      if (!moved_on) break;
      at += *moved_on;
      if (*moved_on == 0) break;  // no way forward in this namespace now
    }
    return progress;
  }

  bool register_namespace(ClientPair& cp, NamespaceId ns) {
    std::optional<NamespaceDescriptor> desc;
    for (const auto& v : options.core->namespaces()) {
      if (v.id == ns && v.block_bytes != 0) desc = v.descriptor;
    }
    if (!desc) {
      logger()->warn(
          "{}: namespace {:#x} is known only from recovered blocks; waiting for a client to register "
          "it again",
          what, ns);
      return false;
    }
    auto a = cp.src->register_namespace(*desc);
    auto b = a ? cp.dst->register_namespace(*desc) : a;
    if (!b) {
      logger()->warn("{}: registering namespace {:#x}: {}", what, ns, b.error().to_string());
      return false;
    }
    cp.registered[ns] = true;
    return true;
  }

  // Reads, puts and removes here the blocks of `part` (buffers in `buf`);
  // how many keys it got past, nullopt when reading or writing failed.
  std::optional<std::size_t> copy_batch(ClientPair& cp, NamespaceId ns, std::span<const Key128> part,
                                        std::vector<std::byte>& buf, std::uint64_t bb, std::uint64_t& progress) {
    Client* src = cp.src.get();
    Client* dst = cp.dst.get();
    const std::size_t n = part.size();
    std::vector<std::span<std::byte>> bufs;
    std::vector<std::span<const std::byte>> blocks;
    for (std::size_t j = 0; j < n; ++j) {
      bufs.emplace_back(buf.data() + j * bb, bb);
      blocks.emplace_back(buf.data() + j * bb, bb);
    }
    auto got = src->get(ns, part, bufs);
    if (!got) {
      logger()->warn("{}: reading: {}", what, got.error().to_string());
      ++failed;
      return std::nullopt;
    }
    std::vector<Key128> done;
    if (got->loaded > 0) {
      auto put = dst->put(ns, part.subspan(0, got->loaded), std::span(blocks).subspan(0, got->loaded));
      if (!put) {
        logger()->warn("{}: writing into shard {}: {}", what, r.shard, put.error().to_string());
        ++failed;
        return std::nullopt;
      }
      for (std::size_t j = 0; j < got->loaded; ++j) {
        if (put->outcomes[j] == PutOutcome::kWritten || put->outcomes[j] == PutOutcome::kExists) {
          done.push_back(part[j]);
        } else {
          ++failed;
          logger()->warn("{}: writing a block into shard {}: {}", what, r.shard, put->errors[j].to_string());
        }
      }
    }
    std::size_t skip = 0;
    if (got->loaded < n) {
      // Gone meanwhile (evicted, removed): nothing to copy. A block that
      // fails verification cannot be copied either; it goes.
      if (got->stopped.code() == StatusCode::kNotFound || got->stopped.code() == StatusCode::kDataLoss) {
        if (got->stopped.code() == StatusCode::kDataLoss) done.push_back(part[got->loaded]);
        ++gone;
        skip = 1;
      } else {
        logger()->warn("{}: reading: {}", what, got->stopped.to_string());
        ++failed;
      }
    }
    if (!done.empty()) {
      auto rm = src->remove(ns, done);
      if (!rm) {
        logger()->warn("{}: removing copied blocks here: {}", what, rm.error().to_string());
      } else {
        copied += done.size();
        progress += done.size();
      }
    }
    progress += skip;
    return got->loaded + skip;
  }

  // Publishes the next map version with the range no longer moving (until
  // it is published, the map changed under it or stopping).
  void publish() {
    for (;;) {
      auto cur = ec->get(etcd::kShardMapKey);
      if (cur && !cur->kvs.empty()) {
        auto map = etcd::parse_shard_map(cur->kvs[0].value);
        if (!map) {
          logger()->error("{}: the shard map became malformed ({}); leaving it", what, map.error().message());
          return;
        }
        bool found = false;
        for (auto& range : map->ranges) {
          if (range.start == r.start && range.end == r.end && range.shard == r.shard && range.from == options.shard) {
            range.from.reset();
            found = true;
          }
        }
        if (!found) {
          logger()->warn("{}: the shard map no longer has this move; leaving it", what);
          return;
        }
        ++map->version;
        auto txn = ec->txn({etcd::Compare::modified(etcd::kShardMapKey, cur->kvs[0].mod_revision)},
                           {etcd::TxnOp::put(etcd::kShardMapKey, etcd::encode_shard_map(*map))});
        if (txn && txn->succeeded) {
          logger()->info("{}: done in {:.1f} s: {} blocks copied, {} gone meanwhile, {} retried; shard map version {}",
                         what, std::chrono::duration<double>(Clock::now() - t0).count(), copied, gone, failed,
                         map->version);
          return;
        }
      } else {
        logger()->warn("{}: reading the shard map: {}", what, cur ? "no map" : cur.error().to_string());
      }
      if (!mover.sleep_for(std::chrono::milliseconds(200))) return;
    }
  }

  RangeMover& mover;
  const RangeMoverOptions& options;
  const etcd::ShardRange& r;
  const std::string what;
  const Clock::time_point started;
  std::unique_ptr<etcd::Client> ec;
  // By credential: "" the cluster secret, else an isolated tenant's name.
  std::map<std::string, ClientPair> pairs;
  std::map<std::string, std::string> unusable;                         // tenant -> why, as last logged
  std::map<std::string, std::unique_ptr<CredentialFile>> credentials;  // written, its clients not connected yet
  std::uint64_t copied = 0, gone = 0, failed = 0;
  std::string waiting_for;  // what the end of the move waits for, as last logged
  Clock::time_point t0;
};

void RangeMover::run() {
  Move move(*this);
  logger()->info("{}: waiting {} ms for the writes granted before the map changed", move.what, options_.settle.count());
  if (!sleep_for(options_.settle)) return;
  if (!move.connect_cluster()) return;
  if (!move.copy_range()) return;
  // Nothing of the range is left here: the move is over.
  move.publish();
}

}  // namespace kvpool::coordinator

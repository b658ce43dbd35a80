#include "bench/kvbench/e2e.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <thread>

#include "bench/common/agent_process.h"
#include "kvpool/client.h"
#include "pool/slot_header.h"
#include "runtime/common/pattern.h"
#include "runtime/common/units.h"
#include "runtime/rpc/client.h"
#include "runtime/rpc/messages.h"

namespace kvpool::bench {
namespace {

std::uint64_t mix(std::uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Keys are XXH3 hashes in real use: well-spread 128-bit values here, fresh
// per session (`tag`) so no run dedupes against another's blocks.
Key128 key_of(std::uint64_t tag, std::uint64_t i) { return Key128{mix(tag ^ (2 * i)), mix(~tag ^ (2 * i + 1))}; }

// The pattern a block holds is derived from its key alone, so a block read
// back under the wrong key (or another block's bytes) shows as wrong bytes.
std::uint64_t seed_of(const Key128& k) { return k.lo ^ (k.hi * 0x9e3779b97f4a7c15ull); }

NamespaceDescriptor bench_namespace(std::uint64_t block_bytes) {
  NamespaceDescriptor d;
  d.model_id = "kvbench-e2e";
  d.dtype = "bf16";
  d.num_layers = 1;
  d.num_kv_heads = 1;
  d.head_dim = 1;
  d.tokens_per_block = 16;
  d.layout = "kvbench";
  d.block_bytes = block_bytes;  // explicit: the descriptor's shape is nominal
  return d;
}

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};

class E2eSession {
 public:
  E2eSession(std::string transport, const E2eOptions& o) : transport_(std::move(transport)), o_(o) {}
  std::vector<Row> run();

 private:
  Status start();
  // Writes and removes a pool's worth of blocks, untimed, so the measured
  // puts land on pages this process has mapped already (see E2eOptions::cold).
  Status touch_pool();
  Row new_row(const std::string& op) const;
  // Puts blocks [first, first + batch) in one Client::put.
  Status put_batch(std::uint64_t first, double* us);
  // Gets blocks [first, first + batch) in one Client::get; with verify,
  // adds the bytes checked and those that differ from the key's pattern.
  Status get_batch(std::uint64_t first, double* us, std::uint64_t* verified, std::uint64_t* wrong);
  Row timed(const std::string& op);

  std::string transport_;
  E2eOptions o_;
  std::string tls_;
  // Destruction order: the client (endpoints into the agent's region) before
  // the agent process, and before the buffer it registered.
  std::unique_ptr<std::byte, FreeDeleter> buffer_;
  std::unique_ptr<AgentProcess> agent_;
  std::unique_ptr<Client> client_;
  NamespaceId ns_ = 0;
  std::uint64_t tag_ = 0;
  std::uint64_t nblocks_ = 0;     // measured blocks: keys 0..nblocks_-1
  std::uint64_t warm_first_ = 0;  // warm-up keys: nblocks_..nblocks_+batch-1
  std::vector<Key128> keys_;      // one batch, reused
  std::vector<std::span<const std::byte>> in_;
  std::vector<std::span<std::byte>> out_;
  volatile std::uint64_t checksum_sink_ = 0;
};

Status E2eSession::start() {
  tls_ = e2e_client_tls(transport_);
  const auto usable = static_cast<std::uint64_t>(o_.pool_fill * static_cast<double>(o_.pool)) / o_.block;
  if (usable < 2 * o_.batch) {
    return Status(StatusCode::kInvalidArgument, "the pool (--region " + format_size(o_.pool) +
                                                    ") must hold two batches within " +
                                                    std::to_string(static_cast<int>(o_.pool_fill * 100)) + "% of it");
  }
  nblocks_ = std::min(o_.total / o_.block, usable - o_.batch) / o_.batch * o_.batch;
  nblocks_ = std::max(nblocks_, o_.batch);
  warm_first_ = nblocks_;
  tag_ =
      mix(static_cast<std::uint64_t>(::getpid()) ^ static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()));

  // The agent serves every transport (kvpool's default TLS); only this
  // worker side is narrowed to the transport under test.
  AgentProcessOptions ao;
  ao.pool_size = std::to_string(o_.pool);
  ao.tls = o_.agent_tls;
  auto agent = AgentProcess::start(ao);
  if (!agent) return agent.error();
  agent_ = std::move(*agent);

  ClientOptions co;
  co.coordinator = agent_->coordinator();
  co.client_id = "kvbench-e2e-" + std::to_string(::getpid());
  co.timeout = std::chrono::seconds(60);
  co.tls = tls_;
  auto client = Client::connect(co);
  if (!client) return client.error();
  client_ = std::move(*client);
  auto ns = client_->register_namespace(bench_namespace(o_.block));
  if (!ns) return ns.error();
  ns_ = *ns;

  const std::size_t bytes = o_.batch * o_.block;
  buffer_.reset(static_cast<std::byte*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096)));
  if (!buffer_) return Status(StatusCode::kResourceExhausted, "cannot allocate the batch buffer");
  std::memset(buffer_.get(), 0, bytes);  // fault in before timing
  if (Status s = client_->register_buffer(buffer_.get(), bytes); !s.ok()) return s;
  keys_.resize(o_.batch);
  for (std::uint64_t j = 0; j < o_.batch; ++j) {
    in_.emplace_back(buffer_.get() + j * o_.block, o_.block);
    out_.emplace_back(buffer_.get() + j * o_.block, o_.block);
  }

  // One untimed batch each way first: endpoint setup, rkey unpacking and
  // first-touch costs are not what a steady pool pays.
  double us = 0;
  std::uint64_t verified = 0, wrong = 0;
  if (Status s = put_batch(warm_first_, &us); !s.ok()) return s;
  if (Status s = get_batch(warm_first_, &us, &verified, &wrong); !s.ok()) return s;
  if (wrong != 0) return Status(StatusCode::kDataLoss, "the warm-up batch read back wrong bytes");
  // Only a mapped region (shared memory) has pages to fault in on this side;
  // over the network the agent's region is already faulted and locked.
  const std::string lanes = client_->stats().transports;
  bool mapped = false;
  for (const char* tl : {"posix", "sysv", "xpmem", "knem", "cma"}) mapped |= lanes.find(tl) != std::string::npos;
  return o_.cold || !mapped ? Status() : touch_pool();
}

Status E2eSession::touch_pool() {
  const std::uint64_t tag = tag_;
  tag_ = mix(tag ^ 0x70c4);  // keys of their own, never looked up
  double us = 0;
  Status s;
  for (std::uint64_t first = 0; s.ok() && first < nblocks_; first += o_.batch) s = put_batch(first, &us);
  for (std::uint64_t first = 0; s.ok() && first < nblocks_; first += o_.batch) {
    for (std::uint64_t j = 0; j < o_.batch; ++j) keys_[j] = key_of(tag_, first + j);
    auto r = client_->remove(ns_, keys_);
    if (!r) s = r.error();
    for (std::size_t j = 0; s.ok() && r && j < r->size(); ++j) s = (*r)[j];
  }
  tag_ = tag;
  if (!s.ok()) return Status(s.code(), "touching the pool: " + s.message());
  // The space comes back once the agent has invalidated the removed slots:
  // wait for that, so no measured put waits on reclamation.
  auto colon = agent_->coordinator().rfind(':');
  rpc::ClientOptions ro;
  ro.host = agent_->coordinator().substr(0, colon);
  ro.port = agent_->port();
  ro.role = rpc::Role::kTool;
  ro.client_id = "kvbench-e2e-stats";
  auto raw = rpc::Client::connect(ro, Deadline::after(std::chrono::seconds(10)));
  if (!raw) return raw.error();
  for (auto deadline = Deadline::after(std::chrono::seconds(60));;) {
    auto reply = (*raw)->call(rpc::kStats, std::string(), Deadline::after(std::chrono::seconds(10)));
    if (!reply) return reply.error();
    rpc::StatsReply st;
    if (Status d = rpc::decode(*reply, st); !d.ok()) return d;
    if (st.reclaiming_bytes == 0 && st.blocks <= o_.batch) return Status();
    if (deadline.expired()) {
      return Status(StatusCode::kDeadlineExceeded,
                    "removed blocks not reclaimed after 60 s (" + std::to_string(st.reclaiming_bytes) + " bytes)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Status E2eSession::put_batch(std::uint64_t first, double* us) {
  for (std::uint64_t j = 0; j < o_.batch; ++j) {
    keys_[j] = key_of(tag_, first + j);
    if (o_.verify) fill_pattern(buffer_.get() + j * o_.block, 0, o_.block, seed_of(keys_[j]));
  }
  auto t0 = Clock::now();
  auto r = client_->put(ns_, keys_, in_);
  *us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  if (!r) return r.error();
  if (r->written != o_.batch) {
    Status first_error;
    for (const Status& e : r->errors) {
      if (!e.ok()) {
        first_error = e;
        break;
      }
    }
    return Status(StatusCode::kInternal, "put wrote " + std::to_string(r->written) + " of " + std::to_string(o_.batch) +
                                             " (" + std::to_string(r->deduplicated) + " exist, " +
                                             std::to_string(r->pending) + " pending, " + std::to_string(r->failed) +
                                             " failed" +
                                             (first_error.ok() ? std::string() : ": " + first_error.to_string()) + ")");
  }
  return Status();
}

Status E2eSession::get_batch(std::uint64_t first, double* us, std::uint64_t* verified, std::uint64_t* wrong) {
  for (std::uint64_t j = 0; j < o_.batch; ++j) {
    keys_[j] = key_of(tag_, first + j);
    // Poison what the get must overwrite, so stale buffer contents never pass.
    if (o_.verify) std::memset(buffer_.get() + j * o_.block, 0xa5, o_.block);
  }
  auto t0 = Clock::now();
  auto r = client_->get(ns_, keys_, out_);
  *us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
  if (!r) return r.error();
  if (r->loaded != o_.batch) {
    return Status(StatusCode::kDataLoss, "get loaded " + std::to_string(r->loaded) + " of " + std::to_string(o_.batch) +
                                             ": " + r->stopped.to_string());
  }
  if (o_.verify) {
    for (std::uint64_t j = 0; j < o_.batch; ++j) {
      *wrong += pattern_mismatches(buffer_.get() + j * o_.block, 0, o_.block, seed_of(keys_[j]));
      *verified += o_.block;
    }
  }
  return Status();
}

Row E2eSession::new_row(const std::string& op) const {
  Row row;
  row.mode = "e2e";
  row.transport = tls_;
  row.op = op;
  row.block = o_.block;
  row.batch = o_.batch;
  return row;
}

Row E2eSession::timed(const std::string& op) {
  Row row = new_row(op);
  std::vector<double> lat_us;
  double busy = 0;
  for (std::uint64_t first = 0; first < nblocks_; first += o_.batch) {
    double us = 0;
    Status s;
    if (op == "e2e-put") {
      s = put_batch(first, &us);
    } else if (op == "e2e-get") {
      s = get_batch(first, &us, &row.verified, &row.wrong);
    } else if (op == "e2e-lookup") {
      for (std::uint64_t j = 0; j < o_.batch; ++j) keys_[j] = key_of(tag_, first + j);
      auto t0 = Clock::now();
      auto n = client_->lookup(ns_, keys_);
      us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
      if (!n)
        s = n.error();
      else if (*n != o_.batch)
        s = Status(StatusCode::kNotFound, "lookup found " + std::to_string(*n) + " keys");
    } else {  // checksum
      std::uint64_t sink = 0;
      auto t0 = Clock::now();
      for (std::uint64_t j = 0; j < o_.batch; ++j) sink ^= pool::payload_checksum(in_[j]);
      us = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
      checksum_sink_ = sink;  // keeps the hashes from being optimized away
    }
    if (!s.ok()) {
      row.ok = false;
      row.error = s.to_string();
      break;
    }
    busy += us / 1e6;
    lat_us.push_back(us);
    row.blocks += o_.batch;
  }
  row.seconds = busy;
  row.p50_us = percentile(lat_us, 0.50);
  row.p99_us = percentile(lat_us, 0.99);
  return row;
}

std::vector<Row> E2eSession::run() {
  std::vector<Row> rows;
  if (Status s = start(); !s.ok()) {
    Row row = new_row(o_.ops.empty() ? std::string("e2e") : o_.ops.front());
    row.lanes = client_ ? client_->stats().transports : "";
    row.ok = false;
    row.error = "start: " + s.to_string();
    rows.push_back(row);
    return rows;
  }
  auto wants = [&](const char* op) { return std::find(o_.ops.begin(), o_.ops.end(), op) != o_.ops.end(); };
  // Every op after the puts reads the blocks they wrote: write them (untimed,
  // and verified by reading back when --verify) if e2e-put is not asked for.
  bool have_blocks = false;
  for (const auto& op : o_.ops) {
    if (op == "checksum") {
      rows.push_back(timed(op));
      continue;
    }
    if (op != "e2e-put" && !have_blocks) {
      Row put = timed("e2e-put");
      have_blocks = true;
      if (!put.ok) {
        rows.push_back(put);
        break;
      }
    }
    if (op == "e2e-put" && have_blocks) continue;  // each key is written once
    Row row = timed(op);
    if (op == "e2e-put") {
      have_blocks = true;
      if (o_.verify && row.ok && !wants("e2e-get")) {
        Row check = timed("e2e-get");  // put is proven by reading back through get
        row.verified = check.verified;
        row.wrong = check.wrong;
        if (!check.ok) {
          row.ok = false;
          row.error = "reading back: " + check.error;
        }
      }
    }
    rows.push_back(row);
    if (!row.ok) break;
  }
  const std::string lanes = client_->stats().transports;
  for (Row& r : rows) r.lanes = r.op == "checksum" ? "in process" : lanes;
  // The client's endpoints go before the agent they point into.
  client_.reset();
  agent_->stop();
  return rows;
}

}  // namespace

std::string e2e_client_tls(const std::string& transport) {
  if (transport == "shm") return "posix,cma,self";
  if (transport == "tcp") return "tcp";
  std::string tls = transport;
  std::replace(tls.begin(), tls.end(), '+', ',');
  return tls;
}

std::vector<Row> run_e2e(const std::string& transport, const E2eOptions& options) {
  E2eSession session(transport, options);
  return session.run();
}

}  // namespace kvpool::bench
